"""What a detector's class indices mean: the one owner of class names, dataset ids and the class
count.

A model predicts contiguous class indices 0..K-1. :class:`ClassInfo` says which name each index
has and, for COCO-format data, which dataset category id it came from (detectron2's
``thing_dataset_id_to_contiguous_id``, which ``COCOEvaluator`` uses to map predictions back). It is
read from one of the places class facts live:

* a registered detectron2 dataset's ``MetadataCatalog`` entry (:meth:`ClassInfo.from_datasets`
  strictly, for the class count of a config; :meth:`ClassInfo.of_registered` leniently);
* ``checkpoint["meta"]`` of a training run (:meth:`ClassInfo.from_meta`, written with
  :meth:`ClassInfo.to_meta`), so a fresh process needs no dataset registration;
* the categories of a COCO json (:meth:`ClassInfo.from_categories`);
* detectron2's builtin COCO 2017 metadata (:meth:`ClassInfo.coco`), for released weights.

and written back as detectron2 metadata (:meth:`ClassInfo.metadata_fields`,
:meth:`ClassInfo.to_metadata`).
"""
from dataclasses import dataclass
from typing import Any, Dict, Iterable, Optional, Sequence, Tuple, Union

__all__ = ["ClassInfo", "num_classes_from_dataset"]


@dataclass(frozen=True)
class ClassInfo:
    """Class names in index order, and where they came from.

    Attributes:
        names: the name of class index i at position i (detectron2's ``thing_classes``).
        dataset_ids: {dataset category id: class index} (``thing_dataset_id_to_contiguous_id``),
            or None when the source has none.
        dataset: the registered dataset name the classes belong to, if any.
    """

    names: Tuple[str, ...]
    dataset_ids: Optional[Dict[int, int]] = None
    dataset: Optional[str] = None

    @property
    def num_classes(self) -> int:
        """K, the number of classes (the model's ``num_classes``)."""
        return len(self.names)

    # ---- reading -------------------------------------------------------------------------
    @classmethod
    def from_categories(cls, categories: Iterable[Tuple[int, str]], dataset: Optional[str] = None) -> "ClassInfo":
        """From ``[(dataset category id, name)]`` sorted by id (a COCO json's categories): class
        index i is the i-th category."""
        categories = list(categories)
        return cls(
            names=tuple(name for _, name in categories),
            dataset_ids={dataset_id: i for i, (dataset_id, _) in enumerate(categories)},
            dataset=dataset,
        )

    @classmethod
    def of_registered(cls, name: str) -> Optional["ClassInfo"]:
        """The classes the ``MetadataCatalog`` holds for dataset ``name`` now (nothing is loaded);
        None when ``name`` is not registered or has no ``thing_classes``."""
        from detectron2.data import DatasetCatalog, MetadataCatalog

        if name not in DatasetCatalog.list():
            return None
        meta = MetadataCatalog.get(name)
        names = meta.get("thing_classes", None)
        if names is None:
            return None
        id_map = meta.get("thing_dataset_id_to_contiguous_id", None)
        return cls(
            names=tuple(names),
            dataset_ids=None if id_map is None else {int(k): int(v) for k, v in id_map.items()},
            dataset=name,
        )

    @classmethod
    def from_datasets(cls, names: Union[str, Sequence[str]], context: str = "ClassInfo.from_datasets") -> "ClassInfo":
        """The classes of one or more registered datasets, which must all have the same names
        (the first dataset's ids and name are kept). A dataset whose metadata has no
        ``thing_classes`` yet is loaded once (``load_coco_json``-style registrations fill their
        metadata on the first load).

        Args:
            names: a dataset name or a list of names.
            context: what the error messages start with (the caller the user wrote).

        Raises:
            KeyError: a dataset is not registered.
            ValueError: no names, a dataset without ``thing_classes``, or datasets that disagree.
        """
        from detectron2.data import DatasetCatalog

        names = [names] if isinstance(names, str) else list(names)
        if not names:
            raise ValueError(f"{context}: no dataset names given")
        infos = []
        for name in names:
            if name not in DatasetCatalog.list():
                from .registration import unknown_dataset_message

                raise KeyError(f"{context}: " + unknown_dataset_message(
                    name, names, hint="register it in the config file (register_coco_dataset) or import the module "
                    "that registers it"))
            info = cls.of_registered(name)
            if info is None:
                DatasetCatalog.get(name)
                info = cls.of_registered(name)
            if info is None:
                raise ValueError(
                    f"{context}: dataset '{name}' has no thing_classes in its metadata, even after loading it"
                )
            if infos and info.names != infos[0].names:
                raise ValueError(
                    f"{context}: datasets '{names[0]}' ({infos[0].num_classes} classes) and "
                    f"'{name}' ({info.num_classes} classes) have different thing_classes"
                )
            infos.append(info)
        return infos[0]

    @classmethod
    def from_meta(cls, meta: Dict[str, Any]) -> Optional["ClassInfo"]:
        """From a checkpoint's run metadata (``checkpoint["meta"]``, see :meth:`to_meta`); None
        when it has no class names."""
        if not meta.get("thing_classes"):
            return None
        id_map = meta.get("thing_dataset_id_to_contiguous_id") or None
        return cls(
            names=tuple(meta["thing_classes"]),
            dataset_ids=None if id_map is None else dict(id_map),
            dataset=meta.get("dataset"),
        )

    @classmethod
    def coco(cls) -> "ClassInfo":
        """detectron2's builtin COCO 2017 classes (80 names, the category ids 1..90 with gaps)."""
        import detectron2.data.datasets  # noqa: F401  (registers the builtin COCO metadata)

        return cls.of_registered("coco_2017_val")

    # ---- writing -------------------------------------------------------------------------
    def metadata_fields(self) -> Dict[str, Any]:
        """``thing_classes`` (and ``thing_dataset_id_to_contiguous_id`` when known), for
        ``MetadataCatalog.get(name).set(**fields)``."""
        fields: Dict[str, Any] = {"thing_classes": list(self.names)}
        if self.dataset_ids is not None:
            fields["thing_dataset_id_to_contiguous_id"] = dict(self.dataset_ids)
        return fields

    def to_meta(self) -> Dict[str, Any]:
        """Plain values for ``checkpoint["meta"]`` (read back with :meth:`from_meta`): ``dataset``
        when known, and :meth:`metadata_fields`."""
        meta: Dict[str, Any] = {} if self.dataset is None else {"dataset": self.dataset}
        meta.update(self.metadata_fields())
        return meta

    def to_metadata(self, name: str = "checkpoint"):
        """A detectron2 ``Metadata`` with :meth:`metadata_fields`, named after the dataset (else
        ``name``), outside the global ``MetadataCatalog``."""
        from detectron2.data.catalog import Metadata

        return Metadata(name=self.dataset or name, **self.metadata_fields())


def num_classes_from_dataset(names: Union[str, Sequence[str]]) -> int:
    """Number of thing classes of one or more registered detectron2 datasets (for configs:
    ``model.num_classes = L(num_classes_from_dataset)(names="${dataloader.train.dataset.names}")``).

    Args:
        names: a dataset name or a list of names; all must have the same thing_classes.

    Returns:
        len(thing_classes).
    """
    return ClassInfo.from_datasets(names, context="num_classes_from_dataset").num_classes
