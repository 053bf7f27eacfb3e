"""A training data loader whose position can be saved in a checkpoint and restored exactly.

detectron2's ``build_detection_train_loader`` keeps its state where a checkpoint cannot reach
it: the sampler's generator, numpy's global generator in each worker process (the random
augmentation), the order in which workers deliver, and the images waiting in the aspect-ratio
groups. A resumed run therefore sees other images with other augmentation than the run it
continues. Here every random choice is a function of a position in one infinite stream:

* the stream: global position ``g`` is image ``perm_e[g % N]`` of epoch ``e = g // N``, where
  ``perm_e`` is a permutation seeded by ``(seed, e)`` (shuffle) or the identity; it can start at
  any position without replaying the ones before;
* process ``rank`` of ``world_size`` takes the positions ``g = k * world_size + rank``
  (k = 0, 1, ...: its local positions), as detectron2's TrainingSampler shards;
* the mapper's random draws (python ``random``, numpy's and torch's global generators) are
  seeded by ``(seed, g)`` for each image, so an image's augmentation does not depend on the
  worker that maps it or on what that worker mapped before;
* the worker processes return the images in stream order (a map-style DataLoader over the
  positions), and the batches are formed in this process: consecutive images, or with
  ``aspect_ratio_grouping`` one group for landscape (w > h) and one for the others, as
  detectron2's AspectRatioGroupedDataset.

The state (:meth:`ResumableTrainLoader.state_dict`) is the seed, the next local position and the
positions still waiting in the groups; :meth:`ResumableTrainLoader.load_state_dict` restores it
(the waiting images are mapped again, with the same randomness) so that the batches after a
resume are those the uninterrupted run would have produced.
"""
import itertools
import logging
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from detectron2.data.common import DatasetFromList
from detectron2.utils import comm

from detrex_lite.errors import ImageReadError
from detrex_lite.utils.rng import derived_seed, seeded_global_rngs

__all__ = ["ALL_SKIPPED_MESSAGE", "ResumableTrainLoader"]

logger = logging.getLogger(__name__)

ALL_SKIPPED_MESSAGE = (
    "no training image could be read: the mapper skipped every image of the training set "
    "as unreadable (dataloader.train.mapper.skip_unreadable=True; the warnings above name the "
    "files); check the dataset's image folder"
)
# Tags that keep the seeds of the permutations and of the augmentation apart.
_PERMUTATION, _AUGMENTATION = 0, 1


def _as_is(item):
    return item


class _CountFrom(Sampler):
    """start, start + 1, ... (without end)."""

    def __init__(self, start: int):
        self.start = start

    def __iter__(self) -> Iterator[int]:
        return itertools.count(self.start)


class _MappedStream(Dataset):
    """Local position k -> (k, mapper(dataset[image at global position k * world_size + rank]))
    with the mapper's randomness seeded by (seed, global position); runs in the workers."""

    def __init__(self, dataset, mapper: Callable, seed: int, shuffle: bool, rank: int, world_size: int):
        self.dataset = dataset
        self.mapper = mapper
        self.size = len(dataset)
        self.seed = seed
        self.shuffle = shuffle
        self.rank = rank
        self.world_size = world_size
        self._epoch, self._permutation = -1, None  # cache of the current epoch's permutation

    def image_index(self, position: int) -> int:
        """The dataset index at global stream position ``position``."""
        epoch, offset = divmod(position, self.size)
        if not self.shuffle:
            return offset
        if epoch != self._epoch:
            generator = torch.Generator().manual_seed(derived_seed(self.seed, _PERMUTATION, epoch))
            self._epoch, self._permutation = epoch, torch.randperm(self.size, generator=generator).tolist()
        return self._permutation[offset]

    def __getitem__(self, k: int) -> Tuple[int, Any]:
        position = k * self.world_size + self.rank
        record = self.dataset[self.image_index(position)]
        with seeded_global_rngs(derived_seed(self.seed, _AUGMENTATION, position)):
            return k, self.mapper(record)


class ResumableTrainLoader:
    """An infinite training loader (a drop-in for detectron2's ``build_detection_train_loader``,
    same arguments) whose position is saved with :meth:`state_dict` and restored exactly.

    Each iteration yields one batch of this process: ``total_batch_size // world_size`` mapped
    dataset dicts (a list, or ``collate_fn(list)``). See the module docstring for how the stream,
    the augmentation and the batches are made reproducible; the batches do not depend on
    ``num_workers``.

    An image the mapper returns None for (``skip_unreadable``) is skipped: the next image of the
    stream takes its place. When a whole epoch's worth of consecutive images is skipped,
    ImageReadError says that no training image can be read.

    Args:
        dataset: a list of detectron2 dataset dicts or a map-style dataset of them.
        mapper: dataset dict -> model input dict (e.g. DetrDatasetMapper), or None to skip.
        sampler: must be None (a custom sampler's position cannot be saved; use detectron2's
            build_detection_train_loader for one).
        total_batch_size: images per iteration over all processes (divisible by their number).
        aspect_ratio_grouping: batch landscape (w > h) and other images separately.
        num_workers: DataLoader worker processes that map the images (0: this process).
        collate_fn: applied to each batch (a list); None keeps the list.
        seed: the stream's seed (the same on every process); None: one drawn from numpy's global
            generator of rank 0 (seeded by ``train.seed``). A resumed run continues with the
            checkpoint's seed.
        shuffle: a new permutation each epoch (False: dataset order).
        **kwargs: passed to torch's DataLoader (e.g. pin_memory, prefetch_factor).
    """

    def __init__(
        self,
        dataset: Union[Sequence[dict], Dataset],
        *,
        mapper: Optional[Callable],
        sampler=None,
        total_batch_size: int,
        aspect_ratio_grouping: bool = True,
        num_workers: int = 0,
        collate_fn: Optional[Callable] = None,
        seed: Optional[int] = None,
        shuffle: bool = True,
        **kwargs,
    ):
        if sampler is not None:
            raise ValueError(
                "dataloader.train.sampler: ResumableTrainLoader makes its own resumable stream and takes no "
                "sampler; use detectron2's build_detection_train_loader for a custom sampler"
            )
        if isinstance(dataset, IterableDataset):
            raise ValueError("dataloader.train.dataset: ResumableTrainLoader needs a list or a map-style dataset, "
                             f"got the iterable {type(dataset).__name__}")
        if isinstance(dataset, list):
            dataset = DatasetFromList(dataset, copy=False)
        if len(dataset) == 0:
            raise ValueError("dataloader.train.dataset: the training set is empty")
        world_size, rank = comm.get_world_size(), comm.get_rank()
        if total_batch_size <= 0 or total_batch_size % world_size:
            raise ValueError(f"dataloader.train.total_batch_size={total_batch_size} must be a positive multiple "
                             f"of the number of processes ({world_size})")
        self.batch_size = total_batch_size // world_size
        self.aspect_ratio_grouping = aspect_ratio_grouping
        self.num_workers = num_workers
        self.collate_fn = collate_fn
        self.loader_kwargs = kwargs
        self.seed = int(comm.shared_random_seed() if seed is None else seed)
        self._stream = _MappedStream(dataset, mapper if mapper is not None else _as_is, self.seed, shuffle,
                                     rank, world_size)
        self._position = 0  # the next local position to read
        self._pending: List[List[int]] = [[], []]  # local positions waiting in the two groups
        logger.info(
            f"Resumable training loader: {len(dataset)} images, batch {self.batch_size} per process, "
            f"{'shuffled' if shuffle else 'in order'}, aspect-ratio grouping {'on' if aspect_ratio_grouping else 'off'}, "
            f"{num_workers} workers, seed {self.seed}"
        )

    # ----------------------------------------------------------------------------------- state
    def state_dict(self) -> Dict[str, Any]:
        """This process's position: ``{"seed", "dataset_size", "rank", "world_size", "position"
        (next local position), "pending" (local positions waiting in the two aspect-ratio groups)}``.
        Between two batches it is the position after the last batch yielded."""
        return {
            "seed": self.seed,
            "dataset_size": self._stream.size,
            "rank": self._stream.rank,
            "world_size": self._stream.world_size,
            "position": self._position,
            "pending": [list(group) for group in self._pending],
        }

    def load_state_dict(self, states: Union[Dict[str, Any], List[Dict[str, Any]]]) -> None:
        """Continue from a saved position: one state, or the states of every process of the
        saved run (in rank order). With the saved number of processes each takes its own; with
        another number the stream continues after the furthest saved position (the images waiting
        in the groups are dropped, a warning says so). Must be called before iterating."""
        states = [states] if isinstance(states, dict) else list(states)
        stream = self._stream
        if states[0]["seed"] != self.seed:
            logger.info(f"Training loader: continuing the checkpoint's data stream (seed {states[0]['seed']} "
                        f"instead of {self.seed})")
            self.seed = stream.seed = int(states[0]["seed"])
            stream._epoch = -1
        if states[0]["dataset_size"] != stream.size:
            logger.warning(f"Training loader: the training set has {stream.size} images, the checkpoint's had "
                           f"{states[0]['dataset_size']}: the data order after the resume differs from the saved run's")
        if len(states) == stream.world_size and all(s["world_size"] == stream.world_size for s in states):
            own = states[stream.rank]
            self._position = int(own["position"])
            self._pending = [list(group) for group in own["pending"]]
            return
        furthest = max(s["position"] * s["world_size"] + s["rank"] for s in states)  # next global position
        self._position = -(-furthest // stream.world_size)  # ceil: no position is read twice
        self._pending = [[], []]
        logger.warning(
            f"Training loader: the checkpoint was written by {states[0]['world_size']} processes, this run has "
            f"{stream.world_size}: the data stream continues after the furthest saved position, the images "
            "waiting in the aspect-ratio groups are dropped"
        )

    # ----------------------------------------------------------------------------- iteration
    def _group_of(self, data: dict) -> int:
        if not self.aspect_ratio_grouping:
            return 0
        return 0 if data["width"] > data["height"] else 1

    def _mapped(self, start: int) -> Iterator[Tuple[int, Any]]:
        """(local position, mapped dict or None) from ``start`` on, in order."""
        if self.num_workers == 0:
            for k in itertools.count(start):
                yield self._stream[k]
            return
        generator = torch.Generator().manual_seed(self.seed)  # DataLoader's worker seeds; unused
        yield from DataLoader(
            self._stream, sampler=_CountFrom(start), batch_size=None, num_workers=self.num_workers,
            collate_fn=_as_is, generator=generator, **self.loader_kwargs,
        )

    def __iter__(self) -> Iterator[Any]:
        groups: List[List[Tuple[int, dict]]] = [[], []]
        for group, positions in zip(groups, self._pending):  # waiting at the saved position
            for k in positions:
                _, data = self._stream[k]
                if data is not None:
                    group.append((k, data))
        skipped = 0
        for k, data in self._mapped(self._position):
            self._position = k + 1
            if data is None:
                skipped += 1
                if skipped >= self._stream.size:
                    raise ImageReadError(ALL_SKIPPED_MESSAGE)
                continue
            skipped = 0
            group = groups[self._group_of(data)]
            group.append((k, data))
            if len(group) == self.batch_size:
                batch = [d for _, d in group]
                del group[:]
                self._pending = [[k for k, _ in g] for g in groups]
                yield batch if self.collate_fn is None else self.collate_fn(batch)
