"""detrex_lite: Deformable DETR and DETR on detectron2."""

__version__ = "0.1.0"
