"""COCO-format loading and one-call registration of a user dataset."""
import json
import logging
import os
import shutil

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog, get_detection_dataset_dicts
from detectron2.structures import BoxMode
from PIL import Image

from detrex_lite.config import num_classes_from_dataset
from detrex_lite.data import DatasetError, build_coco_evaluator, load_coco_detection_json, register_coco_dataset


def write_coco(folder, annotations=None, categories=None, images=None):
    """A tiny COCO dataset in ``folder``: two 40 x 50 PNG images, json at folder/ann.json."""
    os.makedirs(folder / "images", exist_ok=True)
    images = images or [
        {"id": 11, "file_name": "a.png", "height": 40, "width": 50},
        {"id": 12, "file_name": "b.png", "height": 40, "width": 50},
    ]
    for image in images:
        Image.fromarray(np.full((image["height"], image["width"], 3), 128, np.uint8)).save(
            folder / "images" / image["file_name"])
    # Category ids with gaps and out of order: they map to contiguous ids by sorted dataset id.
    categories = categories or [{"id": 9, "name": "zebra"}, {"id": 3, "name": "cat"},
                                {"id": 5, "name": "dog"}]
    annotations = annotations if annotations is not None else [
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0, "area": 200},
        {"id": 2, "image_id": 11, "category_id": 9, "bbox": [5, 5, 5, 5], "iscrowd": 1, "area": 25},
        {"id": 3, "image_id": 12, "category_id": 5, "bbox": [0, 0, 50, 40], "iscrowd": 0, "area": 2000},
    ]
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations, "categories": categories}))
    return str(path), str(folder / "images")


@pytest.fixture
def registered(tmp_path):
    names = []

    def register(name, json_file, image_root):
        names.append(name)
        register_coco_dataset(name, json_file, image_root)

    yield register
    for name in names:
        if name in DatasetCatalog.list():
            DatasetCatalog.remove(name)
        if name in MetadataCatalog.list():
            MetadataCatalog.remove(name)


def test_load_maps_categories_and_keeps_fields(tmp_path):
    json_file, image_root = write_coco(tmp_path)
    dicts = load_coco_detection_json(json_file, image_root)
    assert [d["image_id"] for d in dicts] == [11, 12]
    assert dicts[0]["file_name"] == os.path.join(image_root, "a.png")
    assert (dicts[0]["height"], dicts[0]["width"]) == (40, 50)
    assert dicts[0]["annotations"] == [
        {"bbox": [1.0, 2.0, 10.0, 20.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 0, "iscrowd": 0},
        {"bbox": [5.0, 5.0, 5.0, 5.0], "bbox_mode": BoxMode.XYWH_ABS, "category_id": 2, "iscrowd": 1},
    ]
    assert dicts[1]["annotations"][0]["category_id"] == 1


def test_register_user_dataset_in_one_call(tmp_path, registered):
    json_file, image_root = write_coco(tmp_path)
    registered("my_shapes_train", json_file, image_root)
    meta = MetadataCatalog.get("my_shapes_train")
    # Available at registration, before any load: the class count flows into the model config.
    assert meta.thing_classes == ["cat", "dog", "zebra"]
    assert meta.thing_dataset_id_to_contiguous_id == {3: 0, 5: 1, 9: 2}
    assert (meta.json_file, meta.image_root, meta.evaluator_type) == (json_file, image_root, "coco")
    assert num_classes_from_dataset("my_shapes_train") == 3
    dicts = get_detection_dataset_dicts("my_shapes_train", filter_empty=False)
    assert len(dicts) == 2 and sum(len(d["annotations"]) for d in dicts) == 3
    assert MetadataCatalog.get("my_shapes_train").thing_classes == ["cat", "dog", "zebra"]


def test_register_checks_paths_and_names(tmp_path, registered):
    json_file, image_root = write_coco(tmp_path)
    missing_json = str(tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match="nope.json"):
        registered("bad_json_path", missing_json, image_root)
    with pytest.raises(FileNotFoundError, match="no_images"):
        registered("bad_image_root", json_file, str(tmp_path / "no_images"))
    assert "bad_json_path" not in DatasetCatalog.list()
    registered("twice", json_file, image_root)
    # The same registration again (a config file that registers its dataset, loaded twice) is a no-op...
    register_coco_dataset("twice", json_file, image_root)
    assert MetadataCatalog.get("twice").json_file == json_file
    # ...another json under a taken name is an error naming both.
    other_json = str(tmp_path / "other.json")
    shutil.copy(json_file, other_json)
    with pytest.raises(ValueError, match=f"already registered \\(json_file={json_file}"):
        register_coco_dataset("twice", other_json, image_root)


def test_empty_images_survive_filter_empty_false(tmp_path, registered):
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
    ])
    registered("with_empty", json_file, image_root)
    assert [len(d["annotations"]) for d in get_detection_dataset_dicts("with_empty", filter_empty=False)] == [1, 0]
    assert len(get_detection_dataset_dicts("with_empty", filter_empty=True)) == 1


def test_degenerate_and_outside_boxes_are_clipped_or_dropped_with_a_count(tmp_path, caplog):
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20]},      # fine
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [4, 4, 0, 10]},       # zero width
        {"id": 3, "image_id": 11, "category_id": 3, "bbox": [4, 4, 10, -3]},      # negative height
        {"id": 4, "image_id": 11, "category_id": 3, "bbox": [60, 4, 10, 10]},     # right of the image
        {"id": 5, "image_id": 11, "category_id": 3, "bbox": [-5, 30, 20, 20]},    # sticks out: clipped
        {"id": 6, "image_id": 12, "category_id": 3, "bbox": [1, 1, float("nan"), 3]},  # not finite
    ])
    with caplog.at_level(logging.WARNING, logger="detrex_lite.data.coco"):
        dicts = load_coco_detection_json(json_file, image_root)
    assert [a["bbox"] for a in dicts[0]["annotations"]] == [[1.0, 2.0, 10.0, 20.0], [0.0, 30.0, 15.0, 10.0]]
    assert dicts[1]["annotations"] == []
    message = " ".join(r.getMessage() for r in caplog.records)
    assert "clipped 1 boxes" in message and "dropped 4 boxes" in message
    assert "[2, 3, 4, 6]" in message and json_file in message


def test_unknown_category_names_file_annotation_and_category(tmp_path):
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20]},
        {"id": 77, "image_id": 12, "category_id": 4, "bbox": [1, 2, 10, 20]},
    ])
    with pytest.raises(ValueError) as error:
        load_coco_detection_json(json_file, image_root)
    message = str(error.value)
    assert json_file in message and "annotation id 77" in message and "category_id 4" in message


def test_json_that_does_not_parse_names_file_and_position(tmp_path, registered):
    json_file, image_root = write_coco(tmp_path)
    with open(json_file, "w") as f:
        f.write('{"images": [],\n "annotations": [}')
    for load in (lambda: load_coco_detection_json(json_file, image_root),
                 lambda: registered("broken_json", json_file, image_root)):
        with pytest.raises(ValueError) as error:
            load()
        assert json_file in str(error.value)
        assert "line 2 column 18" in str(error.value)


@pytest.mark.parametrize("content, match", [
    ("[1, 2]", "JSON object"),
    ('{"images": [], "annotations": []}', "'categories'"),
    ('{"images": [], "annotations": [], "categories": []}', "is empty"),
])
def test_json_without_coco_structure(tmp_path, content, match):
    path = tmp_path / "x.json"
    path.write_text(content)
    with pytest.raises(ValueError, match=match):
        load_coco_detection_json(str(path), str(tmp_path))


def test_non_numeric_bbox_names_file_and_annotation(tmp_path):
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 7, "image_id": 12, "category_id": 3, "bbox": ["a", 2, 10, 20], "iscrowd": 0},
    ])
    with pytest.raises(DatasetError) as e:
        load_coco_detection_json(json_file, image_root)
    assert str(e.value) == (
        f"{json_file}: annotation id 7 (image id 12) has bbox ['a', 2, 10, 20]; expected four numbers [x, y, w, h]"
    )


def _evaluate_ground_truth_as_predictions(evaluator, dataset_name: str) -> dict:
    """Feeds every accepted annotation of ``dataset_name`` to ``evaluator`` as a prediction with
    score 1 (boxes XYXY_ABS, classes as loaded) and returns ``evaluator.evaluate()``."""
    from detectron2.structures import Boxes, Instances

    evaluator.reset()
    for record in get_detection_dataset_dicts(dataset_name, filter_empty=False):
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in record["annotations"]]
        instances = Instances((record["height"], record["width"]))
        instances.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        instances.scores = torch.ones(len(boxes))
        instances.pred_classes = torch.tensor([a["category_id"] for a in record["annotations"]], dtype=torch.int64)
        evaluator.process([{"image_id": record["image_id"]}], [{"instances": instances}])
    return evaluator.evaluate()


def test_evaluation_ground_truth_is_what_training_accepted(tmp_path, registered, caplog):
    """A box the loader drops (zero size) must not count as a miss in evaluation, and a clipped
    box is scored as clipped: ground truth fed as predictions scores AP = 100."""
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0, "area": 200},
        {"id": 2, "image_id": 11, "category_id": 3, "bbox": [20, 5, 0, 10], "iscrowd": 0, "area": 0},  # dropped
        {"id": 3, "image_id": 12, "category_id": 5, "bbox": [30, 10, 40, 20], "iscrowd": 0, "area": 800},  # clipped
    ])
    registered("accepted_gt", json_file, image_root)
    with caplog.at_level(logging.WARNING, logger="detrex_lite.data.evaluation"):
        evaluator = build_coco_evaluator("accepted_gt", output_dir=str(tmp_path / "eval"))
    assert any("Evaluating 'accepted_gt' against the 2 annotations the loader accepted: 1 dropped as invalid "
               "(annotation ids [2]), 1 clipped" in r.getMessage() for r in caplog.records)
    results = _evaluate_ground_truth_as_predictions(evaluator, "accepted_gt")
    assert results["bbox"]["AP"] == pytest.approx(100.0)


@pytest.mark.parametrize("what", ["image", "annotation", "category"])
def test_duplicate_ids_name_file_and_id(tmp_path, what):
    images = [{"id": 11, "file_name": "a.png", "height": 40, "width": 50}]
    annotations = [{"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0}]
    categories = [{"id": 3, "name": "cat"}]
    {"image": images, "annotation": annotations, "category": categories}[what].append(
        {"image": images, "annotation": annotations, "category": categories}[what][0])
    json_file, image_root = write_coco(tmp_path, images=images, annotations=annotations, categories=categories)
    with pytest.raises(DatasetError, match=f"^{json_file}: {what} id {{}} appears twice$".format(
            {"image": 11, "annotation": 1, "category": 3}[what])):
        load_coco_detection_json(json_file, image_root)


def test_annotations_of_unknown_images_are_counted_and_ignored(tmp_path, caplog):
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 99, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
    ])
    with caplog.at_level(logging.WARNING, logger="detrex_lite.data.coco"):
        dicts = load_coco_detection_json(json_file, image_root)
    assert sum(len(d["annotations"]) for d in dicts) == 1
    assert any("1 annotations refer to image ids not in 'images'" in r.getMessage() for r in caplog.records)


def test_missing_evaluation_json_names_the_path(tmp_path, registered):
    json_file, image_root = write_coco(tmp_path)
    registered("eval_json_gone", json_file, image_root)
    os.remove(json_file)
    with pytest.raises(FileNotFoundError, match=f"annotation file for evaluation not found: {json_file}"):
        build_coco_evaluator("eval_json_gone")


def test_annotations_without_area_are_evaluated_with_box_area(tmp_path, registered, caplog):
    """A bbox-only COCO file (no "area") trains and evaluates: it used to crash at the final
    evaluation with KeyError: 'area', after the whole training."""
    json_file, image_root = write_coco(tmp_path, annotations=[
        {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0},
        {"id": 2, "image_id": 12, "category_id": 5, "bbox": [0, 0, 50, 40], "iscrowd": 0},
    ])
    registered("no_area", json_file, image_root)
    with caplog.at_level(logging.WARNING, logger="detrex_lite.data.evaluation"):
        evaluator = build_coco_evaluator("no_area", output_dir=str(tmp_path / "eval"))
    assert any("2 of 2 annotations have no 'area'" in r.getMessage() for r in caplog.records)
    results = _evaluate_ground_truth_as_predictions(evaluator, "no_area")
    assert results["bbox"]["AP"] == pytest.approx(100.0)
    assert results["bbox"]["APs"] == pytest.approx(100.0)  # the 10 x 20 box is small (200 px)


_GOOD_ANNOTATION = {"id": 1, "image_id": 11, "category_id": 3, "bbox": [1, 2, 10, 20], "iscrowd": 0, "area": 200}


@pytest.mark.parametrize(
    "where, change, message",
    [
        ("categories", [{"id": 3, "name": "cat"}, {"id": "9", "name": "zebra"}], "category 'zebra' has id '9'; category ids are ints"),
        ("categories", [{"id": 3, "name": "cat"}, {"id": 5, "name": "cat"}], "category name 'cat' is used by ids 3 and 5"),
        ("images", [{"id": 11, "file_name": None, "height": 40, "width": 50}], "image id 11 has file_name None; expected a file name"),
        ("images", [{"id": [11], "file_name": "a.png", "height": 40, "width": 50}], "has id [11]; expected an int or a string"),
        ("images", [{"id": 11, "file_name": "a.png", "height": 40, "width": -50}], "image id 11 has height 40 and width -50; expected positive"),
        ("annotations", [dict(_GOOD_ANNOTATION, iscrowd="no")], "annotation id 1 has iscrowd 'no'; expected 0 or 1"),
        ("annotations", [dict(_GOOD_ANNOTATION, id=[1])], "annotations[0] has id [1]; expected an int or a string"),
        ("annotations", [[1, 11, 3]], "annotations[0] is [1, 11, 3]; expected an object"),
        ("annotations", [dict(_GOOD_ANNOTATION, category_id=[3])], "annotation id 1 has category_id [3], which is not "
         "among the json's categories (ids [3, 5, 9])"),
        ("annotations", [dict(_GOOD_ANNOTATION, category_id={"id": 3})], "annotation id 1 has category_id {'id': 3}, "
         "which is not among the json's categories"),
    ],
    ids=["mixed-category-ids", "duplicate-names", "file-name-null", "list-image-id", "negative-width",
         "iscrowd-str", "list-annotation-id", "annotation-not-object", "list-category-id", "dict-category-id"],
)
def test_malformed_records_are_one_line_naming_file_and_record(tmp_path, where, change, message):
    """Each of these used to end in a traceback (TypeError, AttributeError, ValueError) or, for
    duplicate class names, be accepted silently."""
    kwargs = {where: change}
    if where == "images":
        kwargs["annotations"] = []
    json_file, image_root = write_coco(tmp_path, **kwargs) if where != "images" else _write_raw(tmp_path, **kwargs)
    with pytest.raises(DatasetError) as e:
        load_coco_detection_json(json_file, image_root)
    assert str(e.value).startswith(f"{json_file}: ") and message in str(e.value)


def _write_raw(folder, images, annotations):
    """A COCO json whose image entries are written as given (no image files)."""
    os.makedirs(folder / "images", exist_ok=True)
    path = folder / "ann.json"
    path.write_text(json.dumps({"images": images, "annotations": annotations,
                                "categories": [{"id": 3, "name": "cat"}]}))
    return str(path), str(folder / "images")


# ------------------------------------------------------------------ evaluation files written whole
def _reference_coco_files(dataset_name, folder):
    """detectron2's own COCOEvaluator on the same predictions: the files the evaluator wrote
    before (the reference for their contents)."""
    from detectron2.evaluation import COCOEvaluator

    evaluator = COCOEvaluator(dataset_name, tasks=("bbox",), output_dir=str(folder))
    evaluator._coco_api = build_coco_evaluator(dataset_name)._coco_api  # the same ground truth
    return _evaluate_ground_truth_as_predictions(evaluator, dataset_name)


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("failing", ["instances_predictions.pth", "coco_instances_results.json"])
def test_evaluation_files_are_written_whole_and_a_full_disk_is_one_line(tmp_path, registered, failing):
    """The evaluator's two files hold what detectron2's COCOEvaluator writes, and each is
    written whole: on a full disk (the temporary file is a link to /dev/full, so every write
    fails with ENOSPC) one OutputWriteError line names the file and the free space, the previous
    file stays as it was and no temporary is left. detectron2 wrote in place: a full disk left a
    truncated 8 KB instances_predictions.pth and a traceback."""
    from detrex_lite.errors import OutputWriteError

    json_file, image_root = write_coco(tmp_path / "data")
    registered("whole_files", json_file, image_root)
    out, reference = tmp_path / "eval", tmp_path / "reference"
    evaluator = build_coco_evaluator("whole_files", output_dir=str(out))
    results = _evaluate_ground_truth_as_predictions(evaluator, "whole_files")
    assert json.dumps(results) == json.dumps(_reference_coco_files("whole_files", reference))  # NaN == NaN
    assert json.loads((out / "coco_instances_results.json").read_text()) == json.loads(
        (reference / "coco_instances_results.json").read_text())
    assert {r["category_id"] for r in json.loads((out / "coco_instances_results.json").read_text())} == {3, 5, 9}  # the dataset's ids
    torch.testing.assert_close(
        torch.load(out / "instances_predictions.pth", weights_only=False),
        torch.load(reference / "instances_predictions.pth", weights_only=False),
    )
    assert sorted(os.listdir(out)) == ["coco_instances_results.json", "instances_predictions.pth"]

    before = {name: (out / name).read_bytes() for name in os.listdir(out)}
    os.symlink("/dev/full", out / f".{failing}.tmp.{os.getpid()}")
    with pytest.raises(OutputWriteError) as e:
        _evaluate_ground_truth_as_predictions(build_coco_evaluator("whole_files", output_dir=str(out)), "whole_files")
    message = str(e.value)
    assert "\n" not in message
    assert message.startswith(f"cannot write {out / failing} (OSError: [Errno 28] No space left on device); "
                              f"free space in {out}: ")
    assert message.endswith("nothing was replaced (free some space and evaluate again)")
    assert {name: (out / name).read_bytes() for name in os.listdir(out)} == before  # no temporary, nothing cut
