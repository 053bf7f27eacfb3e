"""detrex_lite.data.classes.ClassInfo: one owner of class names, dataset ids and the class count,
read from a registered dataset, a checkpoint's metadata, COCO categories or detectron2's COCO."""
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog

from detrex_lite.data import DEMO_CLASSES
from detrex_lite.data.classes import ClassInfo, num_classes_from_dataset


def test_from_categories_indexes_by_sorted_position():
    info = ClassInfo.from_categories([(3, "cat"), (7, "dog"), (12, "bird")], dataset="pets")
    assert info.names == ("cat", "dog", "bird") and info.num_classes == 3
    assert info.dataset_ids == {3: 0, 7: 1, 12: 2}
    assert info.to_meta() == {
        "dataset": "pets", "thing_classes": ["cat", "dog", "bird"],
        "thing_dataset_id_to_contiguous_id": {3: 0, 7: 1, 12: 2},
    }


def test_meta_round_trip_and_metadata():
    info = ClassInfo.from_categories(enumerate(["a", "b"], start=1), dataset="ab_train")
    assert ClassInfo.from_meta(info.to_meta()) == info
    metadata = info.to_metadata()
    assert metadata.name == "ab_train" and metadata.thing_classes == ["a", "b"]
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1}
    # Without a dataset name or ids (e.g. an older checkpoint): only the names.
    bare = ClassInfo.from_meta({"thing_classes": ["x"]})
    assert bare.to_metadata("ckpt").name == "ckpt" and bare.metadata_fields() == {"thing_classes": ["x"]}
    assert ClassInfo.from_meta({}) is None and ClassInfo.from_meta({"thing_classes": []}) is None


def test_registered_demo_dataset():
    info = ClassInfo.of_registered("detrex_demo_train")
    assert info.names == DEMO_CLASSES and info.dataset == "detrex_demo_train"
    assert info.dataset_ids == {i + 1: i for i in range(6)}
    assert ClassInfo.from_datasets(["detrex_demo_train", "detrex_demo_val"]).num_classes == 6
    assert ClassInfo.of_registered("no_such_dataset") is None


def test_from_datasets_errors_name_the_caller():
    with pytest.raises(KeyError, match="num_classes_from_dataset: dataset 'no_such_dataset' is not registered"):
        num_classes_from_dataset("no_such_dataset")
    with pytest.raises(ValueError, match="ClassInfo.from_datasets: no dataset names given"):
        ClassInfo.from_datasets([])
    name = "classes_test_no_thing_classes"
    DatasetCatalog.register(name, lambda: [])
    try:
        with pytest.raises(ValueError, match=f"dataset '{name}' has no thing_classes in its metadata, even after"):
            ClassInfo.from_datasets(name)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_coco_classes():
    coco = ClassInfo.coco()
    assert coco.num_classes == 80 and coco.dataset == "coco_2017_val"
    assert coco.names[0] == "person" and coco.names[-1] == "toothbrush"
    assert coco.dataset_ids[1] == 0 and coco.dataset_ids[90] == 79 and 12 not in coco.dataset_ids
