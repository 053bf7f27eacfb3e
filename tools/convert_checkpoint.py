#!/usr/bin/env python
"""Convert released weights to detrex_lite names.

    python tools/convert_checkpoint.py [--from FORMAT] IN OUT [--check-config CONFIG [KEY=VALUE ...]]

FORMAT is one of official-deformable-detr, official-detr, hf, torchvision-resnet; without --from
it is detected from the parameter names. IN is a .pth/.bin/.safetensors file or a Hugging Face
model directory. OUT loads with ``train.init_checkpoint=OUT``. With --check-config the model of
that config is built on CPU and OUT is loaded into it strictly: any missing, unexpected or
wrongly-shaped parameter is listed and the command fails.

Examples:
    python tools/convert_checkpoint.py r50_deformable_detr-checkpoint.pth out/deformable_detr_r50.pth \
        --check-config projects/deformable_detr/configs/deformable_detr_r50_50ep.py
    python tools/convert_checkpoint.py --from torchvision-resnet resnet50-0676ba61.pth out/r50_backbone.pth
"""
import argparse
import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from detrex_lite.checkpoint import (  # noqa: E402
    SOURCES,
    convert_state_dict,
    load_checkpoint,
    load_state_dict,
    save_checkpoint,
)
from detrex_lite.checkpoint.io import read_hf_config  # noqa: E402

logger = logging.getLogger("convert_checkpoint")


def describe_variant(state_dict) -> str:
    """What a converted detector is, from its parameter names (for choosing the config)."""
    if "transformer.level_embed" not in state_dict:
        if "class_embed.weight" in state_dict:
            return f"DETR, {state_dict['class_embed.weight'].shape[0] - 1} classes + no-object"
        return "ResNet backbone"
    levels = state_dict["transformer.level_embed"].shape[0]
    two_stage = "transformer.enc_output.weight" in state_dict
    refine = "bbox_embed.1.layers.0.weight" in state_dict and not all(
        (state_dict[f"bbox_embed.1.{k}"] == state_dict[f"bbox_embed.0.{k}"]).all()
        for k in ("layers.0.weight", "layers.2.bias")
    )
    num_classes = state_dict["class_embed.0.weight"].shape[0]
    parts = ["Deformable DETR", "multi-scale" if levels > 1 else "single-scale"]
    parts += ["box refinement"] * refine + ["two-stage"] * two_stage
    return (
        f"{', '.join(parts)}, {num_classes} classes "
        f"(model.num_feature_levels={levels}, model.with_box_refine={refine}, model.as_two_stage={two_stage})"
    )


def check_with_config(path: str, config_file: str, overrides) -> None:
    from detectron2.config import LazyConfig, instantiate

    cfg = LazyConfig.apply_overrides(LazyConfig.load(config_file), overrides)
    model = instantiate(cfg.model).eval()
    report = load_checkpoint(model, path, strict=True)
    note = f", class heads skipped: {len(report.skipped_class_heads)}" if report.skipped_class_heads else ""
    logger.info(f"OK: {path} loads into the model of {config_file}{note}")


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint file or Hugging Face model directory")
    parser.add_argument("output", help="converted checkpoint (.pth)")
    parser.add_argument("--from", dest="source", choices=SOURCES, default=None,
                        help="source format (default: detect from the parameter names)")
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
    args, overrides = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    state_dict = load_state_dict(args.input)
    hf_config = read_hf_config(args.input) if os.path.isdir(args.input) or args.source == "hf" else None
    converted, meta = convert_state_dict(
        state_dict, args.source, class_map=args.class_map, backbone_prefix=args.backbone_prefix
    )
    if hf_config and hf_config.get("dilation"):
        logger.info("the Hugging Face config has dilation=True: evaluate with a DC5 config (res5_dilation=2)")
    save_checkpoint(args.output, converted, **meta)
    logger.info(f"wrote {args.output}: {len(converted)} tensors, {describe_variant(converted)}")
    if args.check_config:
        check_with_config(args.output, args.check_config, overrides)
    return 0


if __name__ == "__main__":
    sys.exit(main())
