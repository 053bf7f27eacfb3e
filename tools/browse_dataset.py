#!/usr/bin/env python
"""Draw a config's training (or test) images with their ground-truth boxes, as the model gets them
(after the config's augmentation) or as stored (--raw).

    python tools/browse_dataset.py --config-file projects/deformable_detr/configs/deformable_detr_r18_demo.py \\
        --num 16 --out output/browse
    python tools/browse_dataset.py --config-file CFG --raw --split test --out output/browse_raw \\
        dataloader.test.dataset.names=my_val

Samples --num images of the split's dataset (a fixed random choice, --seed), runs each through
the config's dataset mapper (training: flip, multi-scale resize, crop, as the training loader
does; --split test: the test resize) and draws the boxes and class names (detrex_lite.visualization:
ground truth white on black, a swatch of the class colour in each label). Writes into --out:
contact_sheet.png (all samples in a grid), one <k>_<image_id>.png per sample and stats.json;
prints the number of boxes per class and a histogram of box sizes (COCO's small < 32x32 <=
medium < 96x96 <= large, by box area w x h) for the whole dataset (as stored) and for the drawn
samples (as drawn). Config overrides (key=value) go after the options.
"""
import argparse
import logging
import sys


def get_parser() -> argparse.ArgumentParser:
    from detrex_lite.cli import add_override_arguments, add_trust_config_argument

    parser = argparse.ArgumentParser(prog="browse_dataset.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config-file", required=True, help="LazyConfig file (.py or saved config.yaml)")
    parser.add_argument("--split", choices=("train", "test"), default="train", help="dataloader.train or .test")
    parser.add_argument("--num", type=int, default=16, help="number of images to draw (16)")
    parser.add_argument("--raw", action="store_true", help="images and boxes as stored, no augmentation")
    parser.add_argument("--out", default="browse_dataset", help="output folder (./browse_dataset)")
    parser.add_argument("--seed", type=int, default=0, help="which images and which random augmentation (0)")
    parser.add_argument("--cell-size", type=int, default=300, help="contact sheet: pixels per image (300)")
    parser.add_argument("--columns", type=int, default=None, help="contact sheet: images per row (ceil(sqrt(num)))")
    parser.add_argument("--palette", action="store_true",
                        help="contact sheet with a 256-colour palette: about 3x smaller, for documentation")
    add_trust_config_argument(parser)
    add_override_arguments(
        parser, help="config overrides after the flags, e.g. dataloader.train.dataset.names=my_train")
    return parser


def main(argv=None) -> int:
    parser = get_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    if args.num < 1 or args.cell_size < 50:
        print("browse_dataset: error: --num must be >= 1 and --cell-size >= 50", file=sys.stderr)
        return 2
    from detrex_lite.cli import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    from detrex_lite.apps.browse_dataset import run_config_file
    from detrex_lite.cli import collect_overrides
    from detrex_lite.errors import AnalysisError, ConfigError

    try:
        run_config_file(args.config_file, collect_overrides(parser, args), trust_config=args.trust_config,
                        split=args.split, num=args.num,
                        raw=args.raw, out_dir=args.out, seed=args.seed, cell_size=args.cell_size,
                        columns=args.columns, palette=args.palette)
    except (ConfigError, AnalysisError, FileNotFoundError) as e:
        print(f"browse_dataset: error: {str(e).strip(chr(34) + chr(39))}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
