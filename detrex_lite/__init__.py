"""detrex_lite: Deformable DETR and DETR on detectron2."""
import warnings

__version__ = "0.1.0"


def _import_detectron2_quietly() -> None:
    """Import the two modules that call ``torch.jit.script`` at import time, with that one warning off.

    ``fvcore.nn`` (focal loss) and ``detectron2.modeling`` (box regression) script functions when
    they are imported, and torch >= 2.10 answers each with "FutureWarning: `torch.jit.script` is
    deprecated" on every run of every tool. Nearly every part of detrex_lite imports them, so
    they are imported here once, under a filter limited to this block and to that message; later
    imports find them in ``sys.modules``. Every other warning, and this one raised by any other
    code later on, still shows.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        try:
            import fvcore.nn  # noqa: F401
            import detectron2.modeling  # noqa: F401
        except ImportError:  # detectron2 not installed yet (e.g. the op's self-test during set-up)
            pass


_import_detectron2_quietly()
