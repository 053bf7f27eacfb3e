"""What ``tools/convert_checkpoint.py`` runs: read released weights, convert them with the model
families' formats (:func:`detrex_lite.checkpoint.convert_state_dict`), write them with run
metadata and, with ``--check-config``, load them strictly into a config's model."""
import logging
import os
import sys
from typing import Sequence

from detrex_lite.checkpoint.convert import converted_arch, convert_state_dict, describe_converted, source_formats
from detrex_lite.checkpoint.io import CheckpointError, load_state_dict, read_checkpoint, read_hf_config, save_checkpoint
from detrex_lite.checkpoint.loader import load_weights
from detrex_lite.checkpoint.rename import ConversionError
from detrex_lite.checkpoint.run import coco_run_metadata
from detrex_lite.errors import ConfigError

__all__ = ["check_with_config", "convert", "convert_checkpoint_cli"]

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


def convert_checkpoint_cli(args, overrides: Sequence[str]) -> int:
    """The tool's work after parsing, once the entry point has imported the model families
    (:func:`~detrex_lite.checkpoint.family.import_weight_families`): :func:`convert`; errors are
    one line on stderr, exit 1."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.source is not None and args.source not in source_formats():
            raise ValueError(f"--from {args.source}: expected one of {', '.join(source_formats())}")
        logger.info(convert(args, overrides))
    except (CheckpointError, ConversionError, ConfigError, OSError, ValueError) as e:
        print(f"convert_checkpoint: error: {e}", file=sys.stderr)
        return 1
    return 0
