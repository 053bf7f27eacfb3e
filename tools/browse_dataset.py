#!/usr/bin/env python
"""Look at a config's training (or test) data: images with their ground-truth boxes, as the model
gets them (after the config's augmentation) or as stored (--raw).

    python tools/browse_dataset.py --config-file projects/deformable_detr/configs/deformable_detr_r18_demo.py \\
        --num 16 --out output/browse

Samples --num images of the split's dataset (a fixed random choice, --seed), runs each through
the config's dataset mapper (training: flip, multi-scale resize, crop, as the training loader
does; --split test: the test resize) and draws the boxes and class names with detectron2's
Visualizer. Writes into --out: contact_sheet.png (all samples in a grid), one <k>_<image_id>.png
per sample and stats.json; prints the number of boxes per class and a histogram of box sizes
(COCO's small < 32x32 <= medium < 96x96 <= large, by box area w x h) for the whole dataset (as
stored) and for the drawn samples (as drawn). Config overrides go after the options.
"""
import argparse
import logging
import os
import random
import sys
from typing import Optional

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from detrex_lite.analysis import AnalysisError  # noqa: E402
from detrex_lite.config import ConfigError, apply_overrides_checked, load_config_file  # noqa: E402
from detrex_lite.data import non_crowd_boxes  # noqa: E402
from detrex_lite.utils import json_io  # noqa: E402

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
            raise AnalysisError(f"unknown dataset '{name}' (dataloader.{split}.dataset.names): not registered")
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
    from detectron2.data.detection_utils import read_image

    from detrex_lite.analysis.drawing import class_color, draw_boxes, save_grid

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
            image = read_image(record["file_name"], format="RGB")
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
        colors = [class_color(c) for c in classes]
        image = np.ascontiguousarray(image)
        path = os.path.join(out_dir, f"{k:03d}_{record['image_id']}.png")
        _save_png(draw_boxes(image, boxes, labels, colors), path)
        # drawn again at the sheet's cell size, so that its labels are readable there too
        drawn.append(draw_boxes(image, boxes, labels, colors, min_side=cell_size, min_font=9.0))
        h, w = image.shape[:2]
        captions.append(f"image {record['image_id']}: {w}x{h}, {len(boxes)} box{'es' if len(boxes) != 1 else ''}")
        sample_boxes.append(np.asarray(boxes).reshape(-1, 4))
        sample_classes += list(classes)
        images.append({"image_id": record["image_id"], "file_name": record["file_name"], "path": path,
                       "width": int(w), "height": int(h), "boxes": int(len(boxes))})
    what = "as stored (--raw)" if raw else f"after the {split} augmentation"
    sheet = save_grid(drawn, captions, os.path.join(out_dir, "contact_sheet.png"), columns=columns,
                      cell_inches=cell_size / 100.0, palette=palette, title=f"{', '.join(sorted(set(_names(cfg, split))))}: {len(drawn)} images {what}")
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


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n")[0],
        epilog="example:\n  python tools/browse_dataset.py --config-file projects/deformable_detr/configs/"
               "deformable_detr_r18_demo.py --num 16 --out output/browse\n"
               "  python tools/browse_dataset.py --config-file CFG --raw --split test --out output/browse_raw "
               "dataloader.test.dataset.names=my_val",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config-file", required=True, help="LazyConfig file (.py or saved config.yaml)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="dataloader.train or .test")
    parser.add_argument("--num", type=int, default=16, help="number of images to draw (16)")
    parser.add_argument("--raw", action="store_true", help="images and boxes as stored, no augmentation")
    parser.add_argument("--out", default="browse_dataset", help="output folder (./browse_dataset)")
    parser.add_argument("--seed", type=int, default=0, help="which images and which random augmentation (0)")
    parser.add_argument("--cell-size", type=int, default=300, help="contact sheet: pixels per image (300)")
    parser.add_argument("--columns", type=int, default=None, help="contact sheet: images per row (ceil(sqrt(num)))")
    parser.add_argument("--palette", action="store_true",
                        help="contact sheet with a 256-colour palette: about 3x smaller, for documentation")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides key=value")
    return parser


def main(argv=None) -> int:
    args = get_parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.num < 1 or args.cell_size < 50:
        print("browse_dataset: error: --num must be >= 1 and --cell-size >= 50", file=sys.stderr)
        return 2
    try:
        cfg = load_config_file(args.config_file)
        apply_overrides_checked(cfg, [o for o in args.opts if o != "--"])
        run(cfg, args.split, args.num, args.raw, args.out, args.seed, args.cell_size, args.columns, args.palette)
    except (ConfigError, AnalysisError, FileNotFoundError) as e:
        print(f"browse_dataset: error: {str(e).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
