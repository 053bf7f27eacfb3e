#!/usr/bin/env python
"""Convert released weights to detrex_lite names.

    python tools/convert_checkpoint.py [--from FORMAT] IN OUT [--check-config CONFIG [KEY=VALUE ...]]

FORMAT is one of official-deformable-detr, official-detr, hf, torchvision-resnet (the formats the
model families under projects/ declare, and torchvision ResNets); without --from it is detected
from the parameter names. IN is a .pth/.bin/.safetensors file or a Hugging Face
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
import logging
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import projects  # noqa: E402
from detrex_lite.checkpoint import (  # noqa: E402
    CheckpointError,
    ConversionError,
    converted_arch,
    convert_state_dict,
    describe_converted,
    import_weight_families,
    load_weights,
    read_checkpoint,
    save_checkpoint,
    source_formats,
)
from detrex_lite.checkpoint.io import load_state_dict, read_hf_config  # noqa: E402
from detrex_lite.checkpoint.run import coco_run_metadata  # noqa: E402
from detrex_lite.config import ConfigError  # noqa: E402

# Every model family under projects/ registers its weight formats when imported: a new family
# folder is found without editing this file.
import_weight_families(projects)

logger = logging.getLogger("convert_checkpoint")


def check_with_config(path: str, config_file: str, overrides, *, partial: bool = False) -> str:
    """Load ``path`` strictly into the model of ``config_file`` (+ overrides), as evaluation does
    (as training's init_checkpoint for a bare backbone). Returns the OK line."""
    from detectron2.config import instantiate

    from detrex_lite.config import apply_overrides_checked, load_config_file

    cfg = apply_overrides_checked(load_config_file(config_file), list(overrides))
    model = instantiate(cfg.model).eval()
    load_weights(model, path, purpose="train" if partial else "eval", cfg=cfg)
    return f"OK: {path} loads into the model of {config_file}"


def convert(args, overrides) -> str:
    """Read, convert, write and check; returns the summary line."""
    hf_config = read_hf_config(args.input) if os.path.isdir(args.input) or args.source == "hf" else None
    official_args = None
    if os.path.isdir(args.input) or args.input.endswith(".safetensors"):
        state_dict = load_state_dict(args.input)
    else:
        raw = read_checkpoint(args.input)
        state_dict, official_args = raw["model"], raw.get("args")
    converted, meta = convert_state_dict(
        state_dict, args.source, class_map=args.class_map, backbone_prefix=args.backbone_prefix
    )
    if hf_config and hf_config.get("dilation"):
        logger.info("the Hugging Face config has dilation=True: evaluate with a DC5 config (res5_dilation=2)")
    if "partial" not in meta:
        # what the source states about itself: the official args and/or the HF config.json
        stated = {**(vars(official_args) if official_args is not None else {}), **(hf_config or {})}
        arch = converted_arch(converted, meta, stated)
        meta["meta"] = coco_run_metadata(arch.get("num_classes"), arch)
    save_checkpoint(args.output, converted, **meta)
    summary = f"wrote {args.output}: {len(converted)} tensors, {describe_converted(converted, meta)}"
    if args.check_config:
        try:
            logger.info(summary)
            summary = check_with_config(args.output, args.check_config, overrides, partial="partial" in meta)
        except BaseException:
            os.remove(args.output)  # a file that does not fit is not left for someone to use
            raise
    return summary


def get_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="checkpoint file or Hugging Face model directory")
    parser.add_argument("output", help="converted checkpoint (.pth)")
    parser.add_argument("--from", dest="source", choices=source_formats(), default=None,
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
    try:
        logger.info(convert(args, overrides))
    except (CheckpointError, ConversionError, ConfigError, OSError, ValueError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
