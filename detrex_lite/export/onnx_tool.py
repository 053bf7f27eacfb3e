"""``tools/export_onnx.py``: load a config and its weights strictly, export to ONNX
(:func:`detrex_lite.export.onnx_export.export_onnx`) and check the graph against PyTorch with
onnxruntime, on the given or random images and, for a dynamic-size graph, at a second size.
The file records what deployment needs to prepare its input (:func:`deployment_metadata`)."""
import json
import logging
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import torch
from detectron2.config import instantiate
from detectron2.data import transforms as T

from detrex_lite.checkpoint import CheckpointError, load_weights
from detrex_lite.checkpoint.run import find_run_checkpoint, run_config_path
from detrex_lite.data.dataset_mapper import read_image_file
from detrex_lite.errors import ConfigError, OutputDirError
from detrex_lite.predictor import load_config, preprocess_image, test_augmentations, test_metadata
from detrex_lite.utils import json_io
from detrex_lite.utils.files import check_writable
from detrex_lite.utils.logger import setup_logger

from .onnx_export import check_onnx_parity, encoder_tokens, export_onnx, prepare_export_inputs

__all__ = [
    "default_canvas", "deployment_metadata", "check_inputs", "check_other_size", "export_and_check", "export_onnx_cli",
]

logger = logging.getLogger("detrex_lite.export_onnx")


def default_canvas(augmentations: Sequence[T.Augmentation]) -> Tuple[int, int]:
    """A square canvas holding any test-resized image: (max_size, max_size) of the test
    ResizeShortestEdge (both orientations fit)."""
    for aug in augmentations:
        if isinstance(aug, T.ResizeShortestEdge):
            side = int(aug.max_size) if aug.max_size and aug.max_size < 1e6 else int(max(aug.short_edge_length))
            return side, side
    raise ValueError("Cannot infer the export canvas from the test augmentations; pass --canvas H W")


def deployment_metadata(augmentations: Sequence[T.Augmentation], class_names: Optional[Sequence[str]],
                        display_threshold: Optional[Dict[str, object]] = None) -> Dict[str, str]:
    """The ONNX ``metadata_props`` (key -> JSON string) that let code without torch reproduce the
    test loader (``tools/onnx_inference.py``): ``test_resize`` = {"short_edge_length",
    "max_size", "interp" (a PIL resampling name)} when the test augmentation is one
    ResizeShortestEdge of one size, ``class_names`` (index = the graph's label) when known, and
    ``display_threshold`` = {"score", "source"} (the checkpoint's suggested score threshold, see
    :mod:`detrex_lite.analysis.threshold`) when given. Anything else is logged as not recorded."""
    metadata: Dict[str, str] = {}
    augs = list(augmentations)
    resize = augs[0] if len(augs) == 1 and isinstance(augs[0], T.ResizeShortestEdge) else None
    if resize is not None and len(set(int(s) for s in resize.short_edge_length)) == 1:
        from PIL import Image

        metadata["test_resize"] = json.dumps({
            "short_edge_length": int(resize.short_edge_length[0]),
            "max_size": int(resize.max_size),
            "interp": Image.Resampling(resize.interp).name.lower(),
        })
    else:
        logger.warning(
            "The test augmentation %s is not one ResizeShortestEdge of one size: the ONNX file records no "
            "test_resize (tools/onnx_inference.py then needs --short-edge and --max-size).",
            [type(a).__name__ for a in augs],
        )
    if display_threshold is not None:
        metadata["display_threshold"] = json.dumps(
            {"score": float(display_threshold["score"]), "source": str(display_threshold["source"])}
        )
    if class_names:
        metadata["class_names"] = json.dumps([str(name) for name in class_names])
    else:
        logger.warning("No class names known (checkpoint metadata or test dataset): the ONNX file records none.")
    return metadata


def _display_threshold(meta: Dict, checkpoint: str) -> Optional[Dict[str, object]]:
    """{"score", "source"} of the display threshold the checkpoint's last evaluation stored, or None."""
    from detrex_lite.analysis.threshold import describe_stored, stored_threshold

    stored = stored_threshold(meta)
    if stored is None:
        return None
    return {"score": float(stored["score"]), "source": describe_stored(stored, checkpoint)}


def check_inputs(
    model, image_paths: Sequence[str], augmentations, canvas: Tuple[int, int], batch_size: int
) -> Tuple[torch.Tensor, torch.Tensor]:
    """The parity-check batch: the given images resized like the test loader, or random images
    of decreasing size (one at full canvas) when none are given."""
    images: List[torch.Tensor] = []
    if image_paths:
        augs = T.AugmentationList(list(augmentations))
        images = [preprocess_image(read_image_file(p, "RGB"), augs)["image"] for p in image_paths]
    else:
        generator = torch.Generator().manual_seed(0)
        for i in range(batch_size):
            h = max(canvas[0] * (batch_size - i) // batch_size, 1)
            w = max(canvas[1] * (batch_size + 1 - i) // (batch_size + 1), 1)
            images.append(torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=generator))
    return prepare_export_inputs(model, images, canvas)


def check_other_size(path: str, wrapper, model, canvas: Tuple[int, int], atol: float) -> Dict:
    """For a dynamic-size graph: parity on a batch of another size and aspect ratio (3/4 x 5/8
    of the canvas, or 5/4 x 9/8 when that is too small for a two-stage model's query count; two
    random images, the second smaller so it is padded). A shape that the trace recorded as a
    constant of the export size would make onnxruntime fail or disagree here, and this says so
    instead of shipping a broken graph."""
    other = (max(canvas[0] * 3 // 4, 32), max(canvas[1] * 5 // 8, 32))
    if encoder_tokens(model, *other) < model.min_encoder_tokens:
        other = (canvas[0] * 5 // 4, canvas[1] * 9 // 8)
    generator = torch.Generator().manual_seed(1)
    images = [
        torch.randint(0, 256, (3, *other), dtype=torch.uint8, generator=generator),
        torch.randint(0, 256, (3, other[0] * 2 // 3, other[1] * 4 // 5), dtype=torch.uint8, generator=generator),
    ]
    x, sizes = prepare_export_inputs(model, images, other)
    report = {"canvas": list(other), "check_batch": sizes.tolist()}
    try:
        result = check_onnx_parity(path, wrapper, x, sizes, atol=atol)
    except Exception as err:  # onnxruntime reports shape errors as generic failures
        return {**report, "ok": False, "error": str(err).splitlines()[0][:300]}
    return {**report, **result}


def _format_diffs(diffs: Dict) -> str:
    return ", ".join(
        f"{k} {v}" if isinstance(v, int) else f"{k} {v:.2e}"
        for k, v in diffs.items() if k not in ("ok", "canvas", "check_batch")
    )


def export_and_check(args) -> Dict:
    """Exports with the parsed arguments (:func:`detrex_lite.export.options.parse_export_onnx_args`),
    prints the parity lines, writes ``--json``; returns the report."""
    setup_logger()
    check_writable(args.output)
    if args.json:
        check_writable(args.json, "--json")
    cfg = load_config(run_config_path(args.run) if args.run else args.config_file, args.opts,
                      trust=getattr(args, "trust_config", False))
    model = instantiate(cfg.model).eval()
    checkpoint = args.checkpoint
    if args.run:
        checkpoint = find_run_checkpoint(args.run, checkpoint)
    elif checkpoint is None:
        checkpoint = cfg.train.get("init_checkpoint", "") if "train" in cfg else ""
    meta: Dict = {}
    if checkpoint:
        meta = load_weights(model, checkpoint, purpose="export", cfg=cfg).meta
    else:
        logger.warning("No checkpoint: exporting random weights.")
    augmentations = test_augmentations(cfg, meta)
    canvas = tuple(args.canvas) if args.canvas else default_canvas(augmentations)

    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    class_names = test_metadata(cfg, meta).get("thing_classes", None)
    wrapper = export_onnx(
        model, args.output, canvas, output=args.format, opset=args.opset, dynamic_size=not args.fixed_size,
        metadata=deployment_metadata(augmentations, class_names, _display_threshold(meta, checkpoint)),
    )
    report: Dict = {
        "onnx": args.output, "format": args.format, "canvas": list(canvas), "opset": args.opset,
        "dynamic_size": not args.fixed_size,
    }
    if not args.no_check:
        images, image_sizes = check_inputs(model, args.check_images, augmentations, canvas, args.check_batch_size)
        report["check_batch"] = [list(s) for s in image_sizes.tolist()]
        report["max_abs_diff"] = check_onnx_parity(args.output, wrapper, images, image_sizes, atol=args.atol)
        verdict = "OK" if report["max_abs_diff"]["ok"] else f"FAILED (atol {args.atol})"
        print(
            f"onnxruntime vs PyTorch on {len(image_sizes)} images at {canvas[0]}x{canvas[1]}: "
            f"max abs diff {_format_diffs(report['max_abs_diff'])}: {verdict}"
        )
        if not args.fixed_size:
            other = report["dynamic_size_check"] = check_other_size(args.output, wrapper, model, canvas, args.atol)
            if "error" in other:
                result = f"FAILED: {other['error']}"
            else:
                result = f"max abs diff {_format_diffs(other)}: {'OK' if other['ok'] else f'FAILED (atol {args.atol})'}"
            print(f"at another input size {other['canvas'][0]}x{other['canvas'][1]}: {result}")
            report["max_abs_diff"]["ok"] &= bool(other["ok"])
    if args.json:
        json_io.dump(report, args.json)
    return report


def export_onnx_cli(args) -> int:
    """:func:`export_and_check` with the exit status: 1 when the parity check fails; a checkpoint
    that cannot be used (unreadable, another architecture or class count) is one line on
    stderr, exit 1; a config that cannot be used (a run folder's config.yaml that is not valid
    YAML, names a callable outside the allow-list or one that does not exist) one line, exit 2."""
    try:
        result = export_and_check(args)
    except ConfigError as e:
        print(f"export_onnx: error: {e}", file=sys.stderr)
        return 2
    except (CheckpointError, FileNotFoundError, OutputDirError) as e:
        print(f"export_onnx: error: {e}", file=sys.stderr)
        return 1
    return 0 if result.get("max_abs_diff", {"ok": True})["ok"] else 1
