"""Renaming state dicts with explicit tables.

Every converter in this package is a list of :class:`Rule` s applied by :func:`rename_keys`.
A key that no rule matches is an error (never silently dropped), and two keys that land on the
same new name are an error unless they hold identical tensors (tied copies, which the official
repositories save once per alias).
"""
import re
from dataclasses import dataclass, field
from typing import Callable, Dict, Iterable, List, Mapping, Optional, Sequence, Union

import torch
from detrex_lite.errors import ConversionError  # noqa: F401  (re-exported)

__all__ = [
    "Rule",
    "ConversionError",
    "rename_keys",
    "fuse_qkv",
    "split_qkv",
    "add_prefix",
    "split_by_prefix",
    "strip_prefix",
    "format_key_list",
]

Replacement = Union[str, Callable[["re.Match"], str], None]


@dataclass(frozen=True)
class Rule:
    """``pattern`` (a regular expression matched against the WHOLE key) -> ``replacement``.

    ``replacement`` is a template for ``re.Match.expand`` (``r"res\\1.conv"``), a function of the
    match (for index arithmetic such as ``layer1 -> res2``), or ``None`` to drop the key
    deliberately (e.g. BatchNorm's ``num_batches_tracked``).
    """

    pattern: str
    replacement: Replacement
    _compiled: "re.Pattern" = field(init=False, repr=False, compare=False)

    def __post_init__(self):
        object.__setattr__(self, "_compiled", re.compile(self.pattern))

    def apply(self, key: str) -> Optional[Union[str, bool]]:
        """The new name, ``False`` when the rule drops the key, ``None`` when it does not match."""
        match = self._compiled.fullmatch(key)
        if match is None:
            return None
        if self.replacement is None:
            return False
        if callable(self.replacement):
            return self.replacement(match)
        return match.expand(self.replacement)


def _same_tensor(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)


def format_key_list(keys: Sequence[str], limit: int = 20) -> str:
    """One indented line per key, at most ``limit`` of them (error messages)."""
    keys = list(keys)
    lines = [f"  {k}" for k in keys[:limit]]
    if len(keys) > limit:
        lines.append(f"  ... and {len(keys) - limit} more")
    return "\n".join(lines)


def rename_keys(
    state_dict: Mapping[str, torch.Tensor], rules: Iterable[Rule], *, what: str = "checkpoint"
) -> Dict[str, torch.Tensor]:
    """Rename every key with the first rule that matches it.

    Args:
        state_dict: name -> tensor.
        rules: tried in order; the first match decides.
        what: names the source in error messages (e.g. "Hugging Face Deformable DETR").

    Returns:
        A new dict (same tensor objects, new names, original order).

    Raises:
        ConversionError: if a key matches no rule, or two keys with different values map to the
            same new name.
    """
    rules = list(rules)
    out: Dict[str, torch.Tensor] = {}
    origin: Dict[str, str] = {}
    unmatched: List[str] = []
    for key, value in state_dict.items():
        for rule in rules:
            new_key = rule.apply(key)
            if new_key is not None:
                break
        else:
            unmatched.append(key)
            continue
        if new_key is False:
            continue
        if new_key in out:
            if _same_tensor(out[new_key], value):
                continue  # a tied alias saved twice
            raise ConversionError(
                f"{what}: '{origin[new_key]}' and '{key}' both map to '{new_key}' but hold "
                f"different values (shapes {tuple(out[new_key].shape)} and {tuple(value.shape)})"
            )
        out[new_key] = value
        origin[new_key] = key
    if unmatched:
        raise ConversionError(
            f"{what}: {len(unmatched)} key(s) match no conversion rule (is this the right "
            f"--from format?):\n{format_key_list(unmatched)}"
        )
    return out


def _renamed_projection(key: str, module_re: "re.Pattern", old: str, new: str) -> Optional[str]:
    """``{module}.{new}.{weight|bias}`` when ``key`` is ``{module}.{old}.{weight|bias}`` of a
    module whose name fully matches ``module_re``; otherwise None."""
    match = re.fullmatch(rf"(.+)\.{old}\.(weight|bias)", key)
    if match and module_re.fullmatch(match[1]):
        return f"{match[1]}.{new}.{match[2]}"
    return None


_QKV_RE = re.compile(r"(?P<module>.+)\.(?P<which>q|k|v)_proj\.(?P<kind>weight|bias)")


def fuse_qkv(
    state_dict: Mapping[str, torch.Tensor], module_pattern: str
) -> Dict[str, torch.Tensor]:
    """Fuse separate ``q_proj``/``k_proj``/``v_proj`` of attention modules into the
    ``in_proj_weight``/``in_proj_bias`` of ``nn.MultiheadAttention`` (rows in q, k, v order).

    Only modules whose name fully matches ``module_pattern`` are fused; the output projection
    (``o_proj`` or ``out_proj``) is renamed to ``out_proj``.
    """
    module_re = re.compile(module_pattern)
    out: Dict[str, torch.Tensor] = {}
    groups: Dict[tuple, Dict[str, torch.Tensor]] = {}
    for key, value in state_dict.items():
        match = _QKV_RE.fullmatch(key)
        if match and module_re.fullmatch(match["module"]):
            groups.setdefault((match["module"], match["kind"]), {})[match["which"]] = value
            continue
        out[_renamed_projection(key, module_re, "o_proj", "out_proj") or key] = value
    for (module, kind), parts in groups.items():
        if set(parts) != {"q", "k", "v"}:
            raise ConversionError(
                f"{module}: found {sorted(parts)}_proj.{kind} but q, k and v are all needed"
            )
        out[f"{module}.in_proj_{kind}"] = torch.cat([parts["q"], parts["k"], parts["v"]], dim=0)
    return out


def split_qkv(
    state_dict: Mapping[str, torch.Tensor], module_pattern: str, out_proj_name: str = "out_proj"
) -> Dict[str, torch.Tensor]:
    """The inverse of :func:`fuse_qkv`: ``in_proj_weight`` (3C, C) -> ``q/k/v_proj.weight``."""
    module_re = re.compile(module_pattern)
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = re.fullmatch(r"(.+)\.in_proj_(weight|bias)", key)
        if match and module_re.fullmatch(match[1]):
            if value.shape[0] % 3:
                raise ConversionError(f"{key}: first dim {value.shape[0]} is not divisible by 3")
            for which, part in zip("qkv", value.chunk(3, dim=0)):
                out[f"{match[1]}.{which}_proj.{match[2]}"] = part
            continue
        out[_renamed_projection(key, module_re, "out_proj", out_proj_name) or key] = value
    return out


def add_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    return {prefix + k: v for k, v in state_dict.items()}


def split_by_prefix(state_dict: Mapping[str, torch.Tensor], prefix_pattern: str):
    """Split into (inner, rest): keys whose start fully matches ``prefix_pattern`` go to
    ``inner`` with the prefix removed; ``rest`` keeps the others unchanged."""
    prefix_re = re.compile(prefix_pattern)
    inner: Dict[str, torch.Tensor] = {}
    rest: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        match = prefix_re.match(key)
        if match:
            inner[key[match.end():]] = value
        else:
            rest[key] = value
    return inner, rest


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> Dict[str, torch.Tensor]:
    """Remove ``prefix`` when EVERY key has it (e.g. "module." from DistributedDataParallel)."""
    if state_dict and all(k.startswith(prefix) for k in state_dict):
        return {k[len(prefix):]: v for k, v in state_dict.items()}
    return dict(state_dict)
