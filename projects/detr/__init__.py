"""DETR: configs, modeling, and what it knows about its weights (``checkpoint``)."""
from . import checkpoint  # noqa: F401  (registers DETRWeights for conversion and load hints)
