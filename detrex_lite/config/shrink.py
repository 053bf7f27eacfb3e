"""`shrink_model`: the one way to make a smaller variant of a shipped model config.

The demo configs, the test configs and the tools' tiny models all start from a shipped R50 model
config and change only its sizes. Everything derived from those sizes follows by interpolation
(the neck's input shapes from the backbone, the position embedding's width and the neck's
width from ``transformer.d_model``), so a smaller model is a handful of fields.
"""
from typing import Optional

from omegaconf import DictConfig

__all__ = ["shrink_model"]


def shrink_model(
    model: DictConfig,
    *,
    d_model: int,
    nhead: int,
    dim_feedforward: int,
    num_layers: int,
    num_queries: int,
    select_box_nums_for_evaluation: Optional[int] = None,
    depth: Optional[int] = None,
    stem_out_channels: Optional[int] = None,
    freeze_at: Optional[int] = None,
    num_points: Optional[int] = None,
    num_groups: Optional[int] = None,
    dropout: Optional[float] = None,
) -> DictConfig:
    """Sets the sizes of a DETR-family model config (``cfg.model``) in place and returns it.

    Args:
        model: a LazyConfig model node with ``backbone`` (:func:`build_resnet`), ``transformer``
            and, for Deformable DETR, ``neck``.
        d_model, nhead, dim_feedforward: transformer width, heads and FFN width.
        num_layers: encoder and decoder layers (each).
        num_queries: object queries; ``select_box_nums_for_evaluation`` defaults to it.
        depth, stem_out_channels, freeze_at: backbone depth, stem width (all stage widths scale
            with it) and frozen stages; None keeps the config's.
        num_points: deformable attention sampling points (encoder and decoder); Deformable DETR.
        num_groups: GroupNorm groups of the neck (must divide d_model); Deformable DETR.
        dropout: transformer dropout; None keeps the config's.

    Raises:
        KeyError: an option given for a config that has no such field (e.g. ``num_points`` for
            DETR), naming it.
    """
    changes = [
        ("backbone", "depth", depth), ("backbone", "stem_out_channels", stem_out_channels),
        ("backbone", "freeze_at", freeze_at),
        ("transformer", "d_model", d_model), ("transformer", "nhead", nhead),
        ("transformer", "dim_feedforward", dim_feedforward), ("transformer", "num_encoder_layers", num_layers),
        ("transformer", "num_decoder_layers", num_layers), ("transformer", "dropout", dropout),
        ("transformer", "enc_n_points", num_points), ("transformer", "dec_n_points", num_points),
        ("neck", "num_groups", num_groups),
    ]
    changes = [(part, key, value) for part, key, value in changes if value is not None]
    # Checked before anything changes, so a refused call leaves the config as it was.
    for part, key, _ in changes:
        if part not in model:
            raise KeyError(f"shrink_model: {key} is for a model with model.{part}; this one has none")
        if key not in model[part]:
            raise KeyError(f"shrink_model: model.{part} has no {key!r} (keys: {sorted(model[part].keys())})")
    for part, key, value in changes:
        model[part][key] = value
    model.num_queries = num_queries
    model.select_box_nums_for_evaluation = num_queries if select_box_nums_for_evaluation is None else select_box_nums_for_evaluation
    return model
