"""``tools/browse_dataset.py``: a config's training (or test) images with their ground-truth
boxes, as the model gets them (after the config's augmentation) or as stored, and box statistics."""
import logging
import os
import random
from typing import Optional

import numpy as np

from detrex_lite.data import non_crowd_boxes
from detrex_lite.errors import AnalysisError, ConfigError
from detrex_lite.utils import json_io
from detrex_lite.visualization import draw_detections, save_grid

logger = logging.getLogger("detrex_lite.browse_dataset")
SIZE_NAMES = ("small", "medium", "large")


def size_bin(area: float) -> str:
    """COCO's object size by area (px^2): small < 32^2 <= medium < 96^2 <= large."""
    return "small" if area < 32 ** 2 else "medium" if area < 96 ** 2 else "large"


def box_stats(classes, boxes_xyxy, class_names) -> dict:
    """{"boxes", "per_class": {name: count}, "sizes": {small, medium, large}} of boxes (N, 4)."""
    boxes = np.asarray(boxes_xyxy, dtype=np.float64).reshape(-1, 4)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    per_class = {name: 0 for name in class_names}
    for c in classes:
        per_class[class_names[int(c)]] += 1
    sizes = {name: 0 for name in SIZE_NAMES}
    for a in areas:
        sizes[size_bin(a)] += 1
    return {"boxes": int(len(boxes)), "per_class": per_class, "sizes": sizes}


def load_split(cfg, split: str):
    """(dataset dicts, class names, mapper config) of cfg.dataloader.<split>."""
    from detectron2.config import instantiate
    from detectron2.data import DatasetCatalog, MetadataCatalog

    import detrex_lite.data  # noqa: F401  (registers the demo datasets)

    loader = cfg.dataloader.get(split)
    if loader is None or "dataset" not in loader or "mapper" not in loader:
        raise ConfigError(f"the config has no dataloader.{split} with a dataset and a mapper")
    names = loader.dataset.get("names")
    names = [names] if isinstance(names, str) else list(names or [])
    for name in names:
        if name not in DatasetCatalog.list():
            from detrex_lite.data.registration import config_dataset_names, unknown_dataset_message

            raise AnalysisError(unknown_dataset_message(
                name, config_dataset_names(cfg), hint="register it in the config file (register_coco_dataset)",
                lead=f"unknown dataset '{name}' (dataloader.{split}.dataset.names): not registered"))
    dicts = instantiate(loader.dataset)
    classes = MetadataCatalog.get(names[0]).get("thing_classes", None)
    if classes is None:
        classes = [str(i) for i in range(1 + max((a["category_id"] for d in dicts for a in d.get("annotations", [])), default=0))]
    return dicts, list(classes), loader.mapper


def run(cfg, split: str = "train", num: int = 16, raw: bool = False, out_dir: str = "browse", seed: int = 0,
        cell_size: int = 300, columns: Optional[int] = None, palette: bool = False) -> dict:
    """Draws the samples and writes contact_sheet.png, one PNG per sample and stats.json;
    returns the stats ({"dataset": ..., "samples": ..., "images": [...]})."""
    from detectron2.config import instantiate
    from detrex_lite.data.dataset_mapper import read_image_file

    dicts, class_names, mapper_cfg = load_split(cfg, split)
    if not dicts:
        raise AnalysisError(f"dataloader.{split}.dataset is empty")
    all_boxes, all_classes = [], []
    for record in dicts:
        boxes, classes = non_crowd_boxes(record.get("annotations", []))
        all_boxes.append(boxes)
        all_classes += classes
    dataset_stats = box_stats(all_classes, np.concatenate(all_boxes), class_names)
    dataset_stats["images"] = len(dicts)

    mapper = None
    if not raw:
        mapper_cfg = mapper_cfg.copy()
        if "is_train" in mapper_cfg:
            mapper_cfg.is_train = True  # the test mapper drops annotations otherwise; same resize
        mapper = instantiate(mapper_cfg)
    rng = np.random.default_rng(seed)
    chosen = sorted(rng.choice(len(dicts), size=min(num, len(dicts)), replace=False).tolist())
    os.makedirs(out_dir, exist_ok=True)
    drawn, captions, sample_boxes, sample_classes, images = [], [], [], [], []
    for k, index in enumerate(chosen):
        record = dicts[index]
        if raw:
            image = read_image_file(record["file_name"], "RGB", f"image_id={record.get('image_id')}")
            boxes, classes = non_crowd_boxes(record.get("annotations", []))
        else:
            np.random.seed(seed * 100003 + index)  # detectron2's augmentations draw from np.random
            random.seed(seed * 100003 + index)
            mapped = mapper(record)
            image = mapped["image"].permute(1, 2, 0).numpy()
            if getattr(mapper, "img_format", "RGB") == "BGR":
                image = image[:, :, ::-1]
            boxes = mapped["instances"].gt_boxes.tensor.numpy()
            classes = mapped["instances"].gt_classes.tolist()
        labels = [class_names[c] for c in classes]
        image = np.ascontiguousarray(image)
        path = os.path.join(out_dir, f"{k:03d}_{record['image_id']}.png")
        _save_png(_draw(image, boxes, labels, classes, min_side=480), path)
        # drawn again at the sheet's cell size, so that its labels are readable there too
        drawn.append(_draw(image, boxes, labels, classes, min_side=cell_size))
        h, w = image.shape[:2]
        captions.append(f"image {record['image_id']}: {w}x{h}, {len(boxes)} box{'es' if len(boxes) != 1 else ''}")
        sample_boxes.append(np.asarray(boxes).reshape(-1, 4))
        sample_classes += list(classes)
        images.append({"image_id": record["image_id"], "file_name": record["file_name"], "path": path,
                       "width": int(w), "height": int(h), "boxes": int(len(boxes))})
    what = "as stored (--raw)" if raw else f"after the {split} augmentation"
    title = f"{', '.join(sorted(set(_names(cfg, split))))}: {len(drawn)} images {what}"
    sheet = save_grid(drawn, captions, os.path.join(out_dir, "contact_sheet.png"), columns=columns,
                      cell_inches=cell_size / 100.0, palette=palette, title=title)
    sample_stats = box_stats(sample_classes, np.concatenate(sample_boxes), class_names)
    sample_stats["images"] = len(drawn)
    stats = {"split": split, "raw": raw, "dataset": dataset_stats, "samples": sample_stats, "images": images,
             "contact_sheet": sheet}
    json_io.dump(stats, os.path.join(out_dir, "stats.json"), indent=1)
    print_stats(dataset_stats, sample_stats, what)
    print(f"\nWrote {sheet}, {len(drawn)} images and stats.json to {out_dir}")
    return stats


def _names(cfg, split):
    names = cfg.dataloader[split].dataset.get("names")
    return [names] if isinstance(names, str) else list(names)


def _draw(image: np.ndarray, boxes, labels, classes, min_side: int) -> np.ndarray:
    """The ground truth drawn on ``image`` (detrex_lite.visualization), enlarged so that the
    longer side is at least ``min_side`` pixels."""
    scale = max(1.0, min_side / max(image.shape[:2]))
    return draw_detections(image, np.zeros((0, 4)), [], [], scale=scale, gt_boxes=boxes, gt_labels=labels,
                           gt_class_ids=classes)


def _save_png(image_rgb: np.ndarray, path: str) -> None:
    from PIL import Image

    Image.fromarray(image_rgb).save(path)


def print_stats(dataset: dict, samples: dict, what: str) -> None:
    print(f"Boxes per class: whole dataset ({dataset['images']} images, as stored) and the "
          f"{samples['images']} drawn samples ({what}):")
    print("| class | dataset | samples |")
    print("|---|---:|---:|")
    for name in dataset["per_class"]:
        print(f"| {name} | {dataset['per_class'][name]} | {samples['per_class'][name]} |")
    print(f"| **all** | {dataset['boxes']} | {samples['boxes']} |")
    print("\nBox sizes (COCO areas: small < 32x32 <= medium < 96x96 <= large; box w x h):")
    for label, stats in (("dataset", dataset), ("samples", samples)):
        total = max(1, stats["boxes"])
        for size in SIZE_NAMES:
            count = stats["sizes"][size]
            bar = "#" * int(round(40 * count / total))
            print(f"  {label:8s} {size:7s} {count:7d} {100 * count / total:5.1f}%  {bar}")


def run_config_file(config_file: str, opts=(), trust_config: bool = False, **kwargs) -> dict:
    """:func:`run` on a LazyConfig file (.py or saved config.yaml) with ``key=value`` overrides
    (ConfigError for a key that does not exist). A run folder's config.yaml: the datasets its
    datasets.json records are registered as the run registered them; its ``_target_`` must be
    in the allow-list unless ``trust_config`` (:mod:`detrex_lite.config.trust`)."""
    from detrex_lite.config import apply_overrides_checked, load_config_file
    from detrex_lite.data.registration import read_dataset_records, register_recorded_datasets
    from detrex_lite.errors import DatasetError

    cfg = load_config_file(config_file, trust=trust_config)
    apply_overrides_checked(cfg, list(opts))
    if config_file.endswith((".yaml", ".yml")):
        folder = os.path.dirname(config_file) or "."
        try:
            register_recorded_datasets(read_dataset_records(folder), os.path.join(folder, "datasets.json"))
        except DatasetError as e:
            raise ConfigError(str(e)) from None
    return run(cfg, **kwargs)
