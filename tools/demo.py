#!/usr/bin/env python
r"""Runs a trained detector on images, folders, globs or videos and draws its detections.

    python tools/demo.py --config-file projects/deformable_detr/configs/deformable_detr_r50_50ep.py \
        --input "photos/*.jpg" clip.mp4 --output demo_out --threshold 0.5 \
        --json train.init_checkpoint=output/model_final.pth

    python tools/demo.py --run output/run --input photos/ --output demo_out   # a training output folder

Weights come from ``train.init_checkpoint`` (override it with key=value after the flags), or with
``--run DIR`` from DIR's model_best.pth, else its newest complete checkpoint (its config.yaml;
class names from the checkpoint, so no dataset needs to be registered). One drawn image is written per input image
(same file name) and one drawn .mp4 per input video; ``--json`` also writes ``detections.json``
in COCO results format (plus ``file_name`` and, for videos, ``frame``) holding the detections
drawn, i.e. those scoring at least ``--threshold`` (use 0 to keep all, e.g. for evaluation;
default: the threshold the checkpoint's last evaluation suggested, max F1 at IoU 0.5, else 0.3); with ``--dataset`` the images of that dataset keep its image ids. An input that
cannot be read is reported by name and skipped; the exit status is 1 when any input was skipped.
The drawing is ``detrex_lite.visualization`` (colour = class, labels never overlap).
"""
import argparse
import sys


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, and "(default: X)" after every option that has one."""

    def _get_help_string(self, action):
        if action.default in (None, False, [], argparse.SUPPRESS) or action.required:
            return action.help
        return super()._get_help_string(action)


def get_parser() -> argparse.ArgumentParser:
    from detrex_lite.cli import add_override_arguments, add_trust_config_argument
    from detrex_lite.cli.datasets import add_dataset_arguments

    parser = argparse.ArgumentParser(prog="demo.py", description=__doc__, formatter_class=_HelpFormatter)
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--config-file", metavar="FILE", help="LazyConfig .py file (or a run's config.yaml)")
    source.add_argument("--run", metavar="DIR",
                        help="a training output folder: its config.yaml and model_best.pth (else its newest "
                        "checkpoint)")
    parser.add_argument("--input", nargs="+", required=True, metavar="PATH",
                        help="image files, folders (their images, sorted), glob patterns (quote them) or videos")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the drawn images/videos")
    parser.add_argument("--threshold", "--confidence-threshold", dest="confidence_threshold", type=float,
                        default=None, metavar="SCORE",
                        help="minimum score drawn (and written) (default: the display threshold stored in the "
                        "checkpoint by its last evaluation, max F1 at IoU 0.5; 0.3 for checkpoints without one)")
    parser.add_argument("--json", action="store_true", help="also write OUTPUT/detections.json (COCO results format)")
    parser.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda if available)")
    parser.add_argument("--scale", type=float, default=1.0, metavar="FACTOR",
                        help="draw at this multiple of the input size (e.g. 4 for 64 px images: readable labels)")
    parser.add_argument("--line-width", type=int, default=None, metavar="PX",
                        help="box lines in output pixels (default: from the size)")
    parser.add_argument("--font-scale", type=float, default=None, metavar="SCALE",
                        help="label text size (default: from the size)")
    parser.add_argument("--dedupe", type=float, default=None, metavar="IOU",
                        help="display only: of boxes overlapping by IoU > IOU (any class) draw the best-scoring "
                        "one (default: draw all; --json is not affected)")
    add_dataset_arguments(
        parser, "also draw the ground truth of this registered dataset (white on black, labels below the boxes) on "
        "the inputs that are its images (matched by file name); --json then uses the dataset's image ids for "
        "them. A dataset the run registered in its config file is registered again as the run recorded it",
        images_needed=False)
    add_trust_config_argument(parser)
    parser.add_argument("--precision", default=None, choices=["fp32", "bf16"],
                        help="CPU inference mode (detrex_lite.inference): fp32 = folded BatchNorm + channels_last; "
                        "bf16 = bfloat16 weights and activations where the CPU has native bf16 (AMX / AVX-512 "
                        "BF16), else fp32 with a warning (default: the model as built)")
    parser.add_argument("--force-bf16", action="store_true",
                        help="with --precision bf16: run bf16 even without native support")
    add_override_arguments(parser, help="config overrides after the flags, e.g. train.init_checkpoint=model.pth")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    if args.scale <= 0:
        parser.error(f"--scale {args.scale}: expected > 0")
    if args.dedupe is not None and not 0 <= args.dedupe <= 1:
        parser.error(f"--dedupe {args.dedupe}: expected an IoU in [0, 1]")
    from detrex_lite.cli.datasets import check_dataset_arguments

    check_dataset_arguments(parser, args, required=False)
    from detrex_lite.cli import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    from detrex_lite.apps import demo
    from detrex_lite.cli import collect_overrides
    from detrex_lite.errors import ConfigError

    try:
        inputs, trailing = demo.split_overrides(args.input)
        return demo.run(
            config_file=args.config_file, run_dir=args.run, inputs=inputs, output=args.output,
            opts=trailing + collect_overrides(parser, args), confidence_threshold=args.confidence_threshold,
            write_json=args.json, device=args.device, scale=args.scale, line_width=args.line_width,
            font_scale=args.font_scale, dataset=args.dataset, precision=args.precision,
            force_bf16=args.force_bf16, dedupe_iou=args.dedupe, gt_json=args.gt_json, image_root=args.image_root,
            trust_config=args.trust_config,
        )
    except ConfigError as e:
        parser.error(str(e))


if __name__ == "__main__":
    sys.exit(main())
