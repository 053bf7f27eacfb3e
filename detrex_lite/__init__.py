"""detrex_lite: Deformable DETR and DETR on detectron2.

Importing the package imports nothing else (no torch): ``import detrex_lite.cli`` and the tools'
``--help`` answer at once. Command-line tools call
:func:`detrex_lite.cli.import_detectron2_quietly` after parsing their arguments, so that
detectron2's import-time ``torch.jit.script`` deprecation warning does not show on every run.
"""

__version__ = "0.1.0"
