"""COCO-format detection datasets: a validating loader and one-call registration (the evaluator
is built in :mod:`detrex_lite.data.evaluation`).

``load_coco_detection_json`` reads a COCO instances json into detectron2's dataset-dict format
(boxes ``XYWH_ABS``, category ids mapped to contiguous 0..K-1 by sorted dataset id), and turns
the usual ways a json goes wrong into errors that name the file and the record at fault:

* the json does not parse -> ``ValueError`` with the file, line, column and character offset;
* an annotation's ``category_id`` is not among ``categories`` -> ``ValueError`` naming the
  file, the annotation id and the category id;
* a box with zero / negative size, non-finite values or entirely outside its image is dropped,
  a box sticking out of its image is clipped; both are counted in one warning per file.

COCO 2017 itself keeps detectron2's builtin registration ("coco_2017_train", "coco_2017_val",
images and annotations under ``$DETECTRON2_DATASETS/coco``, default ``./datasets``).
"""
import json
import logging
import math
import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.structures import BoxMode
from detrex_lite.errors import DatasetError  # noqa: F401  (re-exported)

from .classes import ClassInfo

logger = logging.getLogger(__name__)

__all__ = ["DatasetError", "accepted_ground_truth", "read_coco_json", "load_coco_detection_json", "register_coco_dataset"]


def read_coco_json(json_file):
    """Parse ``json_file``; errors name the file (and for bad json, where parsing stopped)."""
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"COCO annotation file not found: {json_file}")
    with open(json_file, "rb") as f:
        try:
            data = json.load(f)
        except json.JSONDecodeError as e:
            raise DatasetError(
                f"COCO annotation file {json_file} is not valid JSON: {e.msg} at line {e.lineno} "
                f"column {e.colno} (char {e.pos})"
            ) from e
        except UnicodeDecodeError as e:
            raise DatasetError(f"COCO annotation file {json_file} is not UTF-8 text: {e}") from e
    if not isinstance(data, dict):
        raise DatasetError(f"{json_file}: expected a JSON object at top level, got {type(data).__name__}")
    for key in ("images", "annotations", "categories"):
        if not isinstance(data.get(key), list):
            raise DatasetError(f"{json_file}: expected a list under '{key}' (COCO instances format)")
    return data


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_id(value) -> bool:
    """An image or annotation id: an int or a string (COCO uses ints; lists, floats, null are refused)."""
    return _is_int(value) or isinstance(value, str)


def _image_fields(image, json_file):
    """(id, height, width) of an ``images`` entry, checked: an int or string id, positive int sizes."""
    if not isinstance(image, dict) or not all(k in image for k in ("id", "height", "width")):
        raise DatasetError(f"{json_file}: image entry {image!r} needs 'id', 'file_name', 'height' and 'width'")
    image_id = image["id"]
    if not _is_id(image_id):
        raise DatasetError(f"{json_file}: image entry {image!r} has id {image_id!r}; expected an int or a string")
    try:
        height, width = int(image["height"]), int(image["width"])
    except (TypeError, ValueError):
        height = width = 0
    if height <= 0 or width <= 0 or float(image["height"]) != height or float(image["width"]) != width:
        raise DatasetError(
            f"{json_file}: image id {image_id} has height {image['height']!r} and width {image['width']!r}; "
            "expected positive whole numbers of pixels"
        )
    return image_id, height, width


def _json_classes(data, json_file):
    """The json's categories as :class:`ClassInfo` (class index = rank of the sorted dataset id),
    checked for duplicates."""
    categories = {}
    for category in data["categories"]:
        if not isinstance(category, dict) or "id" not in category or "name" not in category:
            raise DatasetError(f"{json_file}: category {category!r} needs an 'id' and a 'name'")
        if not _is_int(category["id"]):
            raise DatasetError(
                f"{json_file}: category {category['name']!r} has id {category['id']!r}; category ids are ints"
            )
        if not isinstance(category["name"], str) or not category["name"]:
            raise DatasetError(f"{json_file}: category id {category['id']} has name {category['name']!r}; expected a non-empty string")
        if category["id"] in categories:
            raise DatasetError(f"{json_file}: category id {category['id']} appears twice")
        twin = next((i for i, n in categories.items() if n == category["name"]), None)
        if twin is not None:
            raise DatasetError(
                f"{json_file}: category name {category['name']!r} is used by ids {twin} and {category['id']}; "
                "class names must be unique (predictions are reported by name)"
            )
        categories[category["id"]] = category["name"]
    if not categories:
        raise DatasetError(f"{json_file}: 'categories' is empty; a detection dataset needs classes")
    return ClassInfo.from_categories(sorted(categories.items()))


def _set_class_metadata(dataset_name, classes):
    """Put thing_classes and the dataset-id -> contiguous-id map of ``classes`` (a
    :class:`ClassInfo`) into the dataset's metadata."""
    meta = MetadataCatalog.get(dataset_name)
    fields = classes.metadata_fields()
    thing_classes = fields["thing_classes"]
    if getattr(meta, "thing_classes", thing_classes) != thing_classes:
        raise DatasetError(
            f"Dataset '{dataset_name}' is registered with thing_classes={meta.thing_classes}, "
            f"but its json has {thing_classes}"
        )
    meta.set(**fields)


def _accepted_annotations(data, json_file, id_map, image_sizes):
    """The checks every annotation goes through, shared by training and evaluation.

    Args:
        image_sizes: {image id: anything with ["height"] and ["width"]}.

    Returns:
        (accepted, num_unmatched, num_clipped, dropped_ids): ``accepted`` lists
        ``(annotation, [x, y, w, h] clipped to its image)`` in json order.
    """
    annotation_ids = set()
    accepted, num_unmatched, num_clipped, dropped_ids = [], 0, 0, []
    for index, annotation in enumerate(data["annotations"]):
        if not isinstance(annotation, dict):
            raise DatasetError(f"{json_file}: annotations[{index}] is {annotation!r}; expected an object")
        annotation_id = annotation.get("id")
        for key in ("id", "image_id"):
            if key in annotation and not _is_id(annotation[key]):
                raise DatasetError(
                    f"{json_file}: annotations[{index}] has {key} {annotation[key]!r}; expected an int or a string"
                )
        if annotation.get("iscrowd", 0) not in (0, 1):  # True/False compare equal to 1/0
            raise DatasetError(
                f"{json_file}: annotation id {annotation_id} has iscrowd {annotation['iscrowd']!r}; expected 0 or 1"
            )
        if annotation_id in annotation_ids:
            raise DatasetError(f"{json_file}: annotation id {annotation_id} appears twice")
        annotation_ids.add(annotation_id)
        category_id = annotation.get("category_id")
        try:
            known = category_id in id_map
        except TypeError:  # a list or a dict: unhashable, and no category id either
            known = False
        if not known:
            raise DatasetError(
                f"{json_file}: annotation id {annotation_id} has category_id {category_id}, "
                f"which is not among the json's categories (ids {sorted(id_map)})"
            )
        record = image_sizes.get(annotation.get("image_id"))
        if record is None:
            num_unmatched += 1
            continue
        bbox = annotation.get("bbox")
        if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
            raise DatasetError(
                f"{json_file}: annotation id {annotation_id} has bbox {bbox!r}; expected [x, y, w, h]"
            )
        try:
            x, y, w, h = (float(v) for v in bbox)
        except (TypeError, ValueError):
            raise DatasetError(
                f"{json_file}: annotation id {annotation_id} (image id {annotation.get('image_id')}) has bbox "
                f"{bbox!r}; expected four numbers [x, y, w, h]"
            ) from None
        x0, y0 = max(x, 0.0), max(y, 0.0)
        x1, y1 = min(x + w, record["width"]), min(y + h, record["height"])
        if not all(math.isfinite(v) for v in (x, y, w, h)) or x1 <= x0 or y1 <= y0:
            dropped_ids.append(annotation_id)  # zero/negative size, or nothing inside the image
            continue
        if (x0, y0, x1, y1) != (x, y, x + w, y + h):
            num_clipped += 1
        accepted.append((annotation, [x0, y0, x1 - x0, y1 - y0]))
    return accepted, num_unmatched, num_clipped, dropped_ids


def load_coco_detection_json(json_file, image_root, dataset_name=None):
    """Load a COCO instances json as a list of detectron2 dataset dicts (detection fields only).

    Each record: ``file_name`` (joined to ``image_root``), ``height``, ``width``, ``image_id`` and
    ``annotations`` = ``[{"bbox": [x, y, w, h] absolute, "bbox_mode": XYWH_ABS,
    "category_id": contiguous 0..K-1, "iscrowd": 0 or 1}]``. Images without annotations are
    kept (filter them with ``get_detection_dataset_dicts(filter_empty=True)`` if wanted).
    With ``dataset_name``, sets its metadata ``thing_classes`` and
    ``thing_dataset_id_to_contiguous_id`` (which COCOEvaluator uses to map predictions back).
    """
    data = read_coco_json(json_file)
    classes = _json_classes(data, json_file)
    id_map = classes.dataset_ids
    if dataset_name is not None:
        _set_class_metadata(dataset_name, classes)

    records, by_image_id = [], {}
    for image in data["images"]:
        image_id, height, width = _image_fields(image, json_file)
        file_name = image.get("file_name")
        if not isinstance(file_name, str) or not file_name:
            raise DatasetError(f"{json_file}: image id {image_id} has file_name {file_name!r}; expected a file name")
        if image_id in by_image_id:
            raise DatasetError(f"{json_file}: image id {image_id} appears twice")
        record = {"file_name": os.path.join(image_root, file_name), "height": height,
                  "width": width, "image_id": image_id, "annotations": []}
        by_image_id[image_id] = record
        records.append(record)

    accepted, num_unmatched, num_clipped, dropped_ids = _accepted_annotations(data, json_file, id_map, by_image_id)
    for annotation, bbox in accepted:
        by_image_id[annotation["image_id"]]["annotations"].append({
            "bbox": bbox,
            "bbox_mode": BoxMode.XYWH_ABS,
            "category_id": id_map[annotation["category_id"]],
            "iscrowd": int(annotation.get("iscrowd", 0)),
        })

    if num_unmatched:
        logger.warning("%s: %d annotations refer to image ids not in 'images'; ignored them",
                       json_file, num_unmatched)
    if num_clipped or dropped_ids:
        logger.warning(
            "%s: clipped %d boxes that extend outside their image; dropped %d boxes with zero, "
            "negative or non-finite size or lying outside their image (annotation ids %s%s)",
            json_file, num_clipped, len(dropped_ids), dropped_ids[:10],
            " ..." if len(dropped_ids) > 10 else "",
        )
    logger.info("Loaded %d images, %d annotations from %s", len(records),
                sum(len(r["annotations"]) for r in records), json_file)
    return records


def register_coco_dataset(name, json_file, image_root):
    """Register a COCO-format detection dataset under ``name`` in one call.

    Checks that ``json_file`` and ``image_root`` exist and reads the json's categories now, so
    ``MetadataCatalog.get(name).thing_classes`` (and hence the model's class count through
    ``detrex_lite.config.num_classes_from_dataset``) is available right away. Images and
    annotations are read when the dataset is first loaded. Evaluation uses ``COCOEvaluator``
    (``evaluator_type="coco"``, ``json_file`` in the metadata).
    """
    json_file, image_root = os.fspath(json_file), os.fspath(image_root)
    if not os.path.isfile(json_file):
        raise FileNotFoundError(f"Dataset '{name}': annotation file not found: {json_file}")
    if not os.path.isdir(image_root):
        raise FileNotFoundError(f"Dataset '{name}': image folder not found: {image_root}")
    if name in DatasetCatalog.list():
        meta = MetadataCatalog.get(name)
        if (meta.get("json_file"), meta.get("image_root")) == (json_file, image_root):
            return  # the same registration again (e.g. a config file loaded twice): nothing to do
        raise DatasetError(
            f"Dataset '{name}' is already registered (json_file={meta.get('json_file')}, "
            f"image_root={meta.get('image_root')}); pick another name or remove it first with "
            "DatasetCatalog.remove(name) and MetadataCatalog.remove(name)"
        )
    classes = _json_classes(read_coco_json(json_file), json_file)
    DatasetCatalog.register(name, lambda: load_coco_detection_json(json_file, image_root, name))
    MetadataCatalog.get(name).set(json_file=json_file, image_root=image_root, evaluator_type="coco",
                                  annotations_validated=True)
    _set_class_metadata(name, classes)


def accepted_ground_truth(json_file):
    """The COCO json as training sees it: the annotations ``load_coco_detection_json`` accepts,
    with their boxes clipped to their images (``area`` kept, or w * h when absent).

    Returns:
        (coco_dict, num_dropped, num_clipped, dropped_ids): a COCO instances dict for pycocotools
        and what the checks removed or changed.
    """
    data = read_coco_json(json_file)
    id_map = _json_classes(data, json_file).dataset_ids
    sizes = {}
    for image in data["images"]:
        image_id, height, width = _image_fields(image, json_file)
        sizes[image_id] = {"height": height, "width": width}
    accepted, _, num_clipped, dropped_ids = _accepted_annotations(data, json_file, id_map, sizes)
    annotations = [dict(a, bbox=bbox, area=a.get("area", bbox[2] * bbox[3])) for a, bbox in accepted]
    return dict(data, annotations=annotations), len(dropped_ids), num_clipped, dropped_ids
