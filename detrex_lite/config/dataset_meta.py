"""The number of classes of a model, read from the dataset it trains on."""
from typing import Sequence, Union

from detectron2.data import DatasetCatalog, MetadataCatalog


def _thing_classes(name: str):
    if name not in DatasetCatalog.list():
        registered = ", ".join(sorted(DatasetCatalog.list()))
        raise KeyError(
            f"num_classes_from_dataset: dataset '{name}' is not registered "
            f"(import the module that registers it; registered: {registered})"
        )
    meta = MetadataCatalog.get(name)
    classes = meta.get("thing_classes", None)
    if classes is None:
        # Some registrations (e.g. load_coco_json) only fill the metadata on the first load.
        DatasetCatalog.get(name)
        classes = MetadataCatalog.get(name).get("thing_classes", None)
    if classes is None:
        raise ValueError(
            f"num_classes_from_dataset: dataset '{name}' has no thing_classes in its metadata, "
            "even after loading it"
        )
    return list(classes)


def num_classes_from_dataset(names: Union[str, Sequence[str]]) -> int:
    """Number of thing classes of one or more registered detectron2 datasets.

    Args:
        names: a dataset name or a list of names; all must have the same thing_classes.

    Returns:
        len(thing_classes).
    """
    if isinstance(names, str):
        names = [names]
    names = list(names)
    if not names:
        raise ValueError("num_classes_from_dataset: no dataset names given")
    first = _thing_classes(names[0])
    for name in names[1:]:
        other = _thing_classes(name)
        if other != first:
            raise ValueError(
                f"num_classes_from_dataset: datasets '{names[0]}' ({len(first)} classes) and "
                f"'{name}' ({len(other)} classes) have different thing_classes"
            )
    return len(first)
