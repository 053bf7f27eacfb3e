"""Random number streams that depend on where a run is, not on what ran before.

A resumed run can only repeat the uninterrupted one if every random draw is a function of a
position the checkpoint records (the iteration, the place in the data stream). These helpers
derive well-mixed seeds from such positions and seed the three global generators the code uses
(python ``random``, numpy's global ``np.random``, torch's default generators).
"""
import contextlib
import random
from typing import Iterator

import numpy as np
import torch

__all__ = ["derived_seed", "seed_global_rngs", "seeded_global_rngs"]


def derived_seed(*keys: int) -> int:
    """A 31-bit seed that is a well-mixed function of the integers ``keys`` (numpy's
    SeedSequence: nearby keys such as consecutive iterations give unrelated streams)."""
    if any(k < 0 for k in keys):
        raise ValueError(f"derived_seed: keys must be non-negative integers, got {keys}")
    return int(np.random.SeedSequence([int(k) for k in keys]).generate_state(1)[0] >> 1)


def seed_global_rngs(seed: int) -> None:
    """Seed python ``random``, numpy's global generator and torch's default generators (CPU and,
    through ``torch.manual_seed``, every CUDA device) with ``seed``."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_global_rngs(seed: int) -> Iterator[None]:
    """Within the block, python ``random``, numpy's global generator and torch's CPU generator
    start from ``seed``; on exit all three are back where they were (CUDA generators are not
    touched), so the block's draws neither depend on nor disturb the caller's stream."""
    py_state, np_state, torch_state = random.getstate(), np.random.get_state(), torch.get_rng_state()
    random.seed(seed)
    np.random.seed(seed)
    torch.default_generator.manual_seed(seed)
    try:
        yield
    finally:
        random.setstate(py_state)
        np.random.set_state(np_state)
        torch.set_rng_state(torch_state)
