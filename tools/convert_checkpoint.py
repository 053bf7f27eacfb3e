#!/usr/bin/env python
r"""Convert released weights to detrex_lite names.

    python tools/convert_checkpoint.py [--from FORMAT] IN OUT [--check-config CONFIG [KEY=VALUE ...]]

FORMAT is one of the formats the model families under projects/ declare (official-deformable-detr,
official-detr, official-dino, detrex-dino, hf: docs/checkpoints.md) or torchvision-resnet; without
--from it is detected from the parameter names. IN is a .pth/.bin/.safetensors file or a Hugging Face
model directory. OUT loads with ``train.init_checkpoint=OUT`` and carries the same metadata as a
checkpoint written by training (architecture from the official ``args`` / the HF ``config.json``
and the tensors; COCO class names for 80-class heads), so Predictor, demo.py and export_onnx.py
treat it like a run's checkpoint. With --check-config the model of that config is built on CPU
and OUT is loaded into it strictly, as evaluation loads it (the shared loader): a mismatch names
the config option behind it (box refinement, two-stage, levels, layers, queries, hidden size,
classes). A failed conversion or check leaves no OUT behind and ends in one line (exit 1).

Examples:
    python tools/convert_checkpoint.py r50_deformable_detr-checkpoint.pth out/deformable_detr_r50.pth \
        --check-config projects/deformable_detr/configs/deformable_detr_r50_50ep.py
    python tools/convert_checkpoint.py --from torchvision-resnet resnet50-0676ba61.pth out/r50_backbone.pth
"""
import argparse
import re
import sys


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint file or Hugging Face model directory")
    parser.add_argument("output", help="converted checkpoint (.pth)")
    parser.add_argument("--from", dest="source", default=None, metavar="FORMAT",
                        help="source format, one of those the model families under projects/ declare "
                             "(docs/checkpoints.md); default: detect from the parameter names")
    parser.add_argument("--class-map", choices=["auto", "coco", "none"], default="auto",
                        help="coco: 91 COCO-id logits (92 for DETR) -> 80 contiguous classes; "
                             "auto: do that exactly when the head has the COCO-id size")
    parser.add_argument("--backbone-prefix", default="backbone.",
                        help="where a bare ResNet goes in the detector (torchvision-resnet only)")
    parser.add_argument("--check-config", default=None,
                        help="LazyConfig whose model must load OUT with no missing/unexpected keys")
    return parser


def parse_args(argv=None):
    """(args, config overrides): anything after the flags must be a KEY=VALUE override for --check-config."""
    parser = get_parser()
    # anything else must be a config override for --check-config: model.with_box_refine=True
    args, overrides = parser.parse_known_args(argv)
    bad = [o for o in overrides if not re.fullmatch(r"[\w.]+=.*", o)]
    if bad or (overrides and not args.check_config):
        parser.error(f"unrecognised arguments {bad or overrides} (KEY=VALUE overrides need --check-config)")
    return args, overrides


def main(argv=None) -> int:
    args, overrides = parse_args(argv)  # before any heavy import: --help answers at once
    from detrex_lite.cli import import_detectron2_quietly

    import_detectron2_quietly()  # detectron2 without its torch.jit.script FutureWarning
    import projects
    from detrex_lite.checkpoint import import_weight_families
    from detrex_lite.checkpoint.convert_tool import convert_checkpoint_cli

    # Every model family under projects/ registers its weight formats when imported: a new
    # family folder is found without editing this file.
    import_weight_families(projects)

    return convert_checkpoint_cli(args, overrides)


if __name__ == "__main__":
    sys.exit(main())
