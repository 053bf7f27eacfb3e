"""DINO: configs, modeling, and what it knows about its weights (``checkpoint``)."""
from . import checkpoint  # noqa: F401  (registers DINOWeights for conversion and load hints)
