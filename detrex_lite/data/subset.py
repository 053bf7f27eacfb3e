"""A registered dataset cut to its first images (a small-data regime, a short evaluation)."""
from typing import List, Sequence, Union

__all__ = ["first_dataset_dicts"]


def first_dataset_dicts(names: Union[str, Sequence[str]], num_images: int, filter_empty: bool = False) -> List[dict]:
    """The first ``num_images`` records of the registered datasets ``names``, in their order
    (``get_detection_dataset_dicts``); use it as ``dataloader.train.dataset`` or ``.test.dataset``.

    Raises:
        DatasetError (a ValueError): ``num_images`` is not a positive int or exceeds the
            dataset's size (train_net reports it in one line).
    """
    from detectron2.data import get_detection_dataset_dicts

    from detrex_lite.errors import DatasetError

    records = get_detection_dataset_dicts(names, filter_empty=filter_empty)
    if not isinstance(num_images, int) or isinstance(num_images, bool) or not 0 < num_images <= len(records):
        raise DatasetError(
            f"first_dataset_dicts({names!r}): num_images={num_images!r}, expected 1..{len(records)} "
            f"(the dataset has {len(records)} images)"
        )
    return records[:num_images]
