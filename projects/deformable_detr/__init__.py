"""Deformable DETR: configs, modeling, and what it knows about its weights (``checkpoint``)."""
from . import checkpoint  # noqa: F401  (registers DeformableDETRWeights for conversion and load hints)
