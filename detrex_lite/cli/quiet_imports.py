"""Importing detectron2 without the ``torch.jit.script`` deprecation warning it triggers."""
import warnings

__all__ = ["import_detectron2_quietly"]


def import_detectron2_quietly() -> None:
    """Import the two modules that call ``torch.jit.script`` at import time, with that one warning off.

    ``fvcore.nn`` (focal loss) and ``detectron2.modeling`` (box regression) script functions when
    they are imported, and torch >= 2.10 answers each with "FutureWarning: `torch.jit.script` is
    deprecated" on every run of every tool. A command-line tool calls this once, after parsing its
    arguments (so that ``--help`` does not pay for torch), before it imports the rest of
    detrex_lite; later imports find both modules in ``sys.modules``. The filter is limited to
    this block and to that message: every other warning, and this one raised by any other code
    later on, still shows. Costs torch, torchvision, fvcore and detectron2.modeling (seconds) the
    first time; nothing after.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"`torch\.jit\.script` is deprecated", category=FutureWarning)
        try:
            import fvcore.nn  # noqa: F401
            import detectron2.modeling  # noqa: F401
        except ImportError:  # detectron2 not installed yet (e.g. the op's self-test during set-up)
            pass
