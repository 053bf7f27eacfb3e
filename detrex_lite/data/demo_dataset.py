"""A small synthetic COCO-format detection dataset, generated deterministically on first use.

Six shape classes (circle, square, triangle, cross, ring, bar) in random colours, 8 to 80 px,
several per image with limited overlap, on textured backgrounds (colour gradients, stripes,
blobs, noise). Images are 128 to 192 px on a side, small enough for training
runs on a CPU. The colour of an object says nothing about its class: only the shape does.

Every image is drawn from its own random generator seeded by (seed, split, index), so the
bytes of every file are the same on every run. The dataset is written into a temporary folder
and renamed into place, under a file lock, so a killed generation never leaves half a dataset
and concurrent processes (distributed workers) generate it once.

Layout of ``<cache>/demo_v1/`` (``<cache>`` is ``$DETREX_LITE_CACHE`` or ``~/.cache/detrex_lite``)::

    train/000001.jpg ...       val/000001.jpg ...
    annotations/instances_train.json   annotations/instances_val.json
    manifest.json              (written last: its presence marks a complete dataset)

``python -m detrex_lite.data.demo [--out DIR]`` generates it explicitly (see demo.py).
"""
import contextlib
import functools
import glob
import json
import logging
import math
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
from detectron2.data import DatasetCatalog, MetadataCatalog

from .classes import ClassInfo
from .coco import load_coco_detection_json

logger = logging.getLogger(__name__)

__all__ = [
    "DEMO_CLASSES",
    "DEMO_DATASET_NAMES",
    "default_cache_root",
    "demo_dataset_dir",
    "ensure_demo_dataset",
    "ensure_demo_files",
    "generate_demo_dataset",
    "is_demo_dataset",
    "register_demo_datasets",
]

DEMO_CLASSES = ("circle", "square", "triangle", "cross", "ring", "bar")
# Category ids 1..6 in the json (see _generate_split), class indices 0..5.
DEMO_CLASS_INFO = ClassInfo.from_categories(enumerate(DEMO_CLASSES, start=1))
DEMO_VERSION = "demo_v1"
DEMO_DATASET_NAMES = {"detrex_demo_train": "train", "detrex_demo_val": "val"}
DEFAULT_NUM_IMAGES = {"train": 600, "val": 100}
DEFAULT_SEED = 2021
_SPLIT_INDEX = {"train": 0, "val": 1}

IMAGE_SIZE_RANGE = (128, 192)  # height and width, each drawn uniformly (inclusive)
OBJECT_SIZE_RANGE = (8.0, 80.0)  # longest side of an object's box, drawn log-uniformly
MAX_OBJECTS = 6
EMPTY_IMAGE_PROB = 0.03  # a few images without objects, as COCO has
MAX_OVERLAP = 0.25  # intersection over the smaller box, between any two objects
JPEG_QUALITY = 92


def default_cache_root():
    """``$DETREX_LITE_CACHE`` if set, else ``~/.cache/detrex_lite``."""
    return os.path.expanduser(os.environ.get("DETREX_LITE_CACHE", "~/.cache/detrex_lite"))


def demo_dataset_dir(root=None, num_train=None, num_val=None):
    """Folder of the demo dataset under the cache root ``root`` (default: see default_cache_root).

    The default sizes live in ``demo_v1/``; other sizes (e.g. a tiny one for tests) in
    ``demo_v1-<num_train>-<num_val>/`` so they never mix.
    """
    root = root if root is not None else default_cache_root()
    num_train = DEFAULT_NUM_IMAGES["train"] if num_train is None else int(num_train)
    num_val = DEFAULT_NUM_IMAGES["val"] if num_val is None else int(num_val)
    if (num_train, num_val) == (DEFAULT_NUM_IMAGES["train"], DEFAULT_NUM_IMAGES["val"]):
        return os.path.join(root, DEMO_VERSION)
    return os.path.join(root, f"{DEMO_VERSION}-{num_train}-{num_val}")


# ---------------------------------------------------------------------------- drawing


def _background(rng, height, width):
    """A (H, W, 3) float32 RGB background: gradient + optional stripes + blobs + noise."""
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0.0, 2.0 * math.pi)
    ramp = xx * math.cos(angle) + yy * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(np.ptp(ramp)), 1.0)
    start, end = rng.uniform(30.0, 225.0, size=(2, 3)).astype(np.float32)
    image = start + (end - start) * ramp[..., None]
    if rng.random() < 0.5:
        stripe_angle = rng.uniform(0.0, math.pi)
        period = rng.uniform(6.0, 24.0)
        phase = (xx * math.cos(stripe_angle) + yy * math.sin(stripe_angle)) * (2 * math.pi / period)
        image += (rng.uniform(8.0, 25.0) * np.sin(phase))[..., None] * rng.uniform(0.5, 1.0, 3)
    for _ in range(int(rng.integers(0, 5))):
        cy, cx = rng.uniform(0, height), rng.uniform(0, width)
        sigma = rng.uniform(6.0, 30.0)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma**2))
        image += blob[..., None] * rng.uniform(-50.0, 50.0, size=3)
    image += rng.normal(0.0, rng.uniform(3.0, 12.0), size=image.shape)
    return image.astype(np.float32)


def _shape_mask(rng, class_name, height, width, center, size):
    """Draw one filled shape of box side about ``size`` centred at ``center`` into a uint8 mask."""
    mask = np.zeros((height, width), np.uint8)
    cx, cy = center
    half = size / 2.0
    if class_name == "circle":
        cv2.circle(mask, (round(cx), round(cy)), max(round(half), 3), 255, -1)
    elif class_name == "square":
        side = max(round(size), 6)
        x0, y0 = round(cx - side / 2), round(cy - side / 2)
        cv2.rectangle(mask, (x0, y0), (x0 + side - 1, y0 + side - 1), 255, -1)
    elif class_name == "triangle":
        rotation = rng.uniform(0.0, 2.0 * math.pi)
        radius = max(half, 5.0)
        corners = [
            (cx + radius * math.cos(rotation + k * 2 * math.pi / 3),
             cy + radius * math.sin(rotation + k * 2 * math.pi / 3))
            for k in range(3)
        ]
        cv2.fillPoly(mask, [np.round(np.array(corners)).astype(np.int32)], 255)
    elif class_name == "cross":
        arm = max(round(half), 5)
        thickness = max(round(size / 4), 2)
        t0 = thickness // 2
        x, y = round(cx), round(cy)
        cv2.rectangle(mask, (x - arm, y - t0), (x + arm, y - t0 + thickness - 1), 255, -1)
        cv2.rectangle(mask, (x - t0, y - arm), (x - t0 + thickness - 1, y + arm), 255, -1)
    elif class_name == "ring":
        radius = max(round(half), 6)
        thickness = max(round(radius / 3), 2)
        cv2.circle(mask, (round(cx), round(cy)), radius - thickness // 2, 255, thickness)
    elif class_name == "bar":
        length = max(round(size), 9)
        thin = max(round(length * rng.uniform(0.18, 0.3)), 3)
        w, h = (length, thin) if rng.random() < 0.5 else (thin, length)
        x0, y0 = round(cx - w / 2), round(cy - h / 2)
        cv2.rectangle(mask, (x0, y0), (x0 + w - 1, y0 + h - 1), 255, -1)
    else:
        raise ValueError(f"Unknown demo class {class_name!r}; expected one of {DEMO_CLASSES}")
    return mask


def _overlap_too_large(box, boxes):
    """True if ``box`` (x0, y0, x1, y1) covers more than MAX_OVERLAP of a smaller one in ``boxes``."""
    for other in boxes:
        iw = min(box[2], other[2]) - max(box[0], other[0])
        ih = min(box[3], other[3]) - max(box[1], other[1])
        if iw <= 0 or ih <= 0:
            continue
        smaller = min((box[2] - box[0]) * (box[3] - box[1]), (other[2] - other[0]) * (other[3] - other[1]))
        if iw * ih > MAX_OVERLAP * smaller:
            return True
    return False


def _draw_image(rng):
    """One image and its objects: (uint8 (H, W, 3) RGB, list of (class index, xywh box, area))."""
    height, width = (int(v) for v in rng.integers(IMAGE_SIZE_RANGE[0], IMAGE_SIZE_RANGE[1] + 1, 2))
    image = _background(rng, height, width)
    num_objects = 0 if rng.random() < EMPTY_IMAGE_PROB else int(rng.integers(1, MAX_OBJECTS + 1))
    objects, boxes = [], []
    for _ in range(num_objects):
        class_index = int(rng.integers(len(DEMO_CLASSES)))
        max_size = min(OBJECT_SIZE_RANGE[1], 0.6 * min(height, width))
        size = math.exp(rng.uniform(math.log(OBJECT_SIZE_RANGE[0]), math.log(max_size)))
        for _attempt in range(30):  # rejection sampling of a position with little overlap
            margin = size / 2 + 2
            center = (rng.uniform(margin, width - margin), rng.uniform(margin, height - margin))
            mask = _shape_mask(rng, DEMO_CLASSES[class_index], height, width, center, size)
            ys, xs = np.nonzero(mask)
            if len(xs) == 0:
                continue
            box = (int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1)
            if not _overlap_too_large(box, boxes):
                break
        else:
            continue  # no free place for this object: leave it out
        # A colour that stands out from the background under the object (luminance difference).
        luminance = np.array([0.299, 0.587, 0.114], np.float32)
        local = float(image[mask > 0].mean(axis=0) @ luminance)
        for _attempt in range(20):
            color = rng.uniform(0.0, 255.0, 3).astype(np.float32)
            if abs(float(color @ luminance) - local) > 60.0:
                break
        shade = color + rng.normal(0.0, 4.0, size=(len(xs), 3)).astype(np.float32)
        image[ys, xs] = shade
        boxes.append(box)
        xywh = [box[0], box[1], box[2] - box[0], box[3] - box[1]]
        objects.append((class_index, xywh, int(len(xs))))
    return np.clip(np.round(image), 0, 255).astype(np.uint8), objects


def _generate_split(out_dir, split, num_images, seed):
    """Write ``<out_dir>/<split>/*.jpg`` and return the split's COCO dict."""
    os.makedirs(os.path.join(out_dir, split), exist_ok=True)
    images, annotations = [], []
    for index in range(num_images):
        rng = np.random.default_rng((seed, _SPLIT_INDEX[split], index))
        image, objects = _draw_image(rng)
        file_name = f"{index + 1:06d}.jpg"
        ok, encoded = cv2.imencode(
            ".jpg", image[:, :, ::-1], [cv2.IMWRITE_JPEG_QUALITY, JPEG_QUALITY]
        )
        if not ok:
            raise RuntimeError(f"OpenCV failed to encode demo image {split}/{file_name}")
        with open(os.path.join(out_dir, split, file_name), "wb") as f:
            f.write(encoded.tobytes())
        image_id = index + 1
        images.append(
            {"id": image_id, "file_name": file_name, "height": image.shape[0], "width": image.shape[1]}
        )
        for class_index, xywh, area in objects:
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": image_id,
                    "category_id": class_index + 1,
                    "bbox": xywh,
                    "area": area,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": f"detrex_lite synthetic shapes ({DEMO_VERSION}, {split})",
                 "version": DEMO_VERSION},
        "licenses": [],
        "images": images,
        "annotations": annotations,
        "categories": [
            {"id": i + 1, "name": name, "supercategory": "shape"} for i, name in enumerate(DEMO_CLASSES)
        ],
    }


def generate_demo_dataset(out_dir, num_train=None, num_val=None, seed=DEFAULT_SEED):
    """Write the demo dataset into ``out_dir`` (created; written in place, not atomically).

    Use :func:`ensure_demo_dataset` for the atomic, lock-protected version. Returns ``out_dir``.
    """
    num_images = {
        "train": DEFAULT_NUM_IMAGES["train"] if num_train is None else int(num_train),
        "val": DEFAULT_NUM_IMAGES["val"] if num_val is None else int(num_val),
    }
    os.makedirs(os.path.join(out_dir, "annotations"), exist_ok=True)
    for split, count in num_images.items():
        coco = _generate_split(out_dir, split, count, seed)
        with open(os.path.join(out_dir, "annotations", f"instances_{split}.json"), "w") as f:
            json.dump(coco, f, separators=(",", ":"))
    manifest = {"version": DEMO_VERSION, "seed": seed, "num_images": num_images,
                "classes": list(DEMO_CLASSES)}
    with open(os.path.join(out_dir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return out_dir


# ------------------------------------------------------------ atomic, concurrent-safe creation


@contextlib.contextmanager
def _file_lock(path):
    """Exclusive inter-process lock on ``path`` (fcntl; a no-op where fcntl does not exist)."""
    try:
        import fcntl
    except ImportError:  # Windows: the atomic rename below still prevents half datasets
        yield
        return
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _is_complete(dataset_dir):
    return os.path.isfile(os.path.join(dataset_dir, "manifest.json"))


def _atomic_generate(dataset_dir, **kwargs):
    """Generate into ``dataset_dir`` unless it is complete: temp folder + rename, under a lock."""
    if _is_complete(dataset_dir):
        return dataset_dir
    dataset_dir = os.path.abspath(dataset_dir)
    parent, name = os.path.split(dataset_dir)
    os.makedirs(parent, exist_ok=True)
    with _file_lock(dataset_dir + ".lock"):
        if _is_complete(dataset_dir):  # another process finished while we waited for the lock
            return dataset_dir
        if os.path.exists(dataset_dir) and os.listdir(dataset_dir):
            raise RuntimeError(
                f"{dataset_dir} exists but is not a complete demo dataset (no manifest.json). "
                "Delete it and run again to regenerate."
            )
        # Holding the lock, no one else is generating: leftovers of killed runs can go.
        for stale in glob.glob(os.path.join(parent, f".{name}.tmp-*")):
            shutil.rmtree(stale, ignore_errors=True)
        tmp_dir = tempfile.mkdtemp(prefix=f".{name}.tmp-", dir=parent)
        start = time.perf_counter()
        try:
            generate_demo_dataset(tmp_dir, **kwargs)
            if os.path.isdir(dataset_dir):
                os.rmdir(dataset_dir)  # empty (checked above)
            os.rename(tmp_dir, dataset_dir)
        except BaseException:
            shutil.rmtree(tmp_dir, ignore_errors=True)
            raise
        logger.info("Generated the demo dataset in %s (%.1f s)", dataset_dir, time.perf_counter() - start)
    return dataset_dir


def ensure_demo_dataset(root=None, num_train=None, num_val=None):
    """Return the demo dataset folder under cache root ``root``, generating it on first use."""
    return _atomic_generate(demo_dataset_dir(root, num_train, num_val), num_train=num_train,
                            num_val=num_val)


def is_demo_dataset(dataset_name):
    """Whether ``dataset_name`` is one of the demo datasets ("detrex_demo_train", "detrex_demo_val")."""
    return dataset_name in DEMO_DATASET_NAMES


def ensure_demo_files(dataset_name):
    """Generate the files of the registered demo dataset ``dataset_name`` (where its metadata's
    ``json_file`` and ``image_root`` point) if they are not there yet; returns its folder."""
    meta = MetadataCatalog.get(dataset_name)
    return ensure_demo_dataset(meta.demo_cache_root, *meta.demo_num_images)


# ---------------------------------------------------------------------------- registration


def _load_demo_split(dataset_name, root, num_train, num_val):
    dataset_dir = ensure_demo_dataset(root, num_train, num_val)
    split = DEMO_DATASET_NAMES[dataset_name]
    return load_coco_detection_json(
        os.path.join(dataset_dir, "annotations", f"instances_{split}.json"),
        os.path.join(dataset_dir, split),
        dataset_name,
    )


def register_demo_datasets(root=None, num_train=None, num_val=None):
    """Register "detrex_demo_train" and "detrex_demo_val" with data under cache root ``root``.

    Registration is cheap; the images are generated when a dataset is first loaded (or when
    ``ensure_demo_dataset`` is called, as :func:`detrex_lite.data.build_coco_evaluator` does).
    Calling it again re-registers, e.g. a tiny version for fast tests:
    ``register_demo_datasets(str(tmp_path), num_train=8, num_val=4)``; ``register_demo_datasets()``
    restores the default.
    """
    root = os.path.abspath(root if root is not None else default_cache_root())
    dataset_dir = demo_dataset_dir(root, num_train, num_val)
    for dataset_name, split in DEMO_DATASET_NAMES.items():
        if dataset_name in DatasetCatalog.list():
            DatasetCatalog.remove(dataset_name)
            MetadataCatalog.remove(dataset_name)
        DatasetCatalog.register(
            dataset_name, functools.partial(_load_demo_split, dataset_name, root, num_train, num_val)
        )
        MetadataCatalog.get(dataset_name).set(
            **DEMO_CLASS_INFO.metadata_fields(),
            json_file=os.path.join(dataset_dir, "annotations", f"instances_{split}.json"),
            image_root=os.path.join(dataset_dir, split),
            evaluator_type="coco",
            demo_cache_root=root,
            demo_num_images=[num_train, num_val],
        )
