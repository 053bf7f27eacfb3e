"""One way for every tool to name the ground truth it reads (stdlib only): ``--dataset NAME`` (a
registered dataset, or one a training run recorded in its datasets.json) or ``--gt-json FILE
--image-root DIR`` (a COCO json registered nowhere). The tool's work module turns them into a
registered name with :func:`detrex_lite.data.registration.tool_dataset`."""
import argparse

__all__ = ["add_dataset_arguments", "check_dataset_arguments"]


def add_dataset_arguments(parser: argparse.ArgumentParser, dataset_help: str, images_needed: bool = True) -> None:
    """Add ``--dataset``, ``--gt-json`` and ``--image-root`` to ``parser``.

    Args:
        dataset_help: what ``--dataset`` is for in this tool.
        images_needed: whether the tool reads the dataset's images (then ``--gt-json`` needs
            ``--image-root``).
    """
    parser.add_argument("--dataset", default=None, metavar="NAME", help=dataset_help)
    parser.add_argument(
        "--gt-json", default=None, metavar="FILE",
        help="instead of a registered dataset: a COCO instances json (registered here under --dataset NAME if "
        "given, else under its file name)",
    )
    parser.add_argument(
        "--image-root", default=None, metavar="DIR",
        help="with --gt-json: the folder its images' file_name are relative to"
        + ("" if images_needed else " (default: the json's folder; no image is read)"),
    )
    parser.set_defaults(_images_needed=images_needed)


def check_dataset_arguments(parser: argparse.ArgumentParser, args: argparse.Namespace, required: bool = True) -> None:
    """argparse's one-line error (exit 2) for a combination that names no dataset or half a one."""
    if args.image_root and not args.gt_json:
        parser.error("--image-root goes with --gt-json FILE")
    if args.gt_json and getattr(args, "_images_needed", True) and not args.image_root:
        parser.error(f"--gt-json {args.gt_json} needs --image-root DIR (the folder of its images)")
    if required and not (args.dataset or args.gt_json):
        parser.error("give --dataset NAME (a registered dataset) or --gt-json FILE --image-root DIR")
