"""The library names no model family: what a family knows about its weights lives in
projects/<family>/ and reaches detrex_lite/ through the model class's ``weight_family`` hook and
the weight-family registry (docs/architecture.md, "Adding a model").

* no file under detrex_lite/ names a family's parameters or options (``class_embed``,
  ``bbox_embed``, ``level_embed``, ``with_box_refine``, ``two_stage``) outside docstrings and
  comments;
* the library never imports ``projects``;
* every family folder is found by importing the packages under projects/, and each model class
  declares a registered family;
* a family the library has never heard of plugs in through the hook alone.
"""
import ast
import glob
import io
import os
import tokenize
from typing import List, Set, Tuple

import pytest
import torch
from torch import nn

import projects
from detrex_lite.checkpoint import (
    CheckpointMismatchError,
    WeightFamily,
    apply_state_dict,
    import_weight_families,
    model_arch,
    registered_weight_families,
    source_formats,
    weight_family_of,
)

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LIBRARY_FILES = sorted(glob.glob(os.path.join(REPO, "detrex_lite", "**", "*.py"), recursive=True))
FAMILY_WORDS = ("class_embed", "bbox_embed", "level_embed", "with_box_refine", "two_stage")


def _docstring_starts(tree: ast.AST) -> Set[Tuple[int, int]]:
    """(line, column) where each docstring of a module / class / function begins."""
    starts = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                starts.add((first.lineno, first.col_offset))
    return starts


def family_words_in_code(source: str, words=FAMILY_WORDS) -> List[Tuple[int, str]]:
    """(line, word) for every word of ``words`` inside a token of ``source`` that is code:
    identifiers, string literals (regular expressions, messages), anything but comments and
    docstrings."""
    docstrings = _docstring_starts(ast.parse(source))
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type in (tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE):
            continue
        if token.type == tokenize.STRING and token.start in docstrings:
            continue
        found += [(token.start[0], word) for word in words if word in token.string]
    return found


def imported_modules(source: str) -> List[Tuple[int, str]]:
    """(line, module) of every absolute import of ``source``, including
    ``importlib.import_module("...")`` / ``__import__("...")`` with a literal name."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
        elif isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant):
            name = node.func.attr if isinstance(node.func, ast.Attribute) else getattr(node.func, "id", "")
            if name in ("import_module", "__import__") and isinstance(node.args[0].value, str):
                found.append((node.lineno, node.args[0].value))
    return found


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


# ------------------------------------------------------------------ the scanners can fail
def test_scanner_finds_a_family_name_in_code_only():
    source = '''"""Docstring: class_embed is fine here."""
import re

# a comment may say bbox_embed too
HEAD_RE = re.compile(r"(?:.*\\.)?class_embed\\.\\d+")


def f(model):
    """So may this: with_box_refine."""
    return model.level_embed, f"{model.with_box_refine}", model.as_two_stage
'''
    assert family_words_in_code(source) == [
        (5, "class_embed"), (10, "level_embed"), (10, "with_box_refine"), (10, "two_stage"),
    ]
    assert imported_modules("import projects.detr\nfrom projects import detr\nfrom . import x\n"
                            "importlib.import_module('projects.dino')\n") == [
        (1, "projects.detr"), (2, "projects"), (4, "projects.dino"),
    ]


# ------------------------------------------------------------------ the library
def test_library_names_no_family_parameter():
    assert len(LIBRARY_FILES) > 30, LIBRARY_FILES
    offenders = [
        f"{os.path.relpath(path, REPO)}:{line}: {word}"
        for path in LIBRARY_FILES for line, word in family_words_in_code(_read(path))
    ]
    assert not offenders, "a model family's names belong in projects/<family>/:\n" + "\n".join(offenders)


def test_library_never_imports_projects():
    offenders = [
        f"{os.path.relpath(path, REPO)}:{line}: {module}"
        for path in LIBRARY_FILES for line, module in imported_modules(_read(path))
        if module == "projects" or module.startswith("projects.")
    ]
    assert not offenders, "detrex_lite/ must not import projects/:\n" + "\n".join(offenders)


# ------------------------------------------------------------------ families plug in
def test_every_family_folder_registers_its_model_classes_family():
    imported = import_weight_families(projects)
    assert {"projects.deformable_detr", "projects.detr"} <= set(imported), imported
    from projects.deformable_detr.modeling import DeformableDETR
    from projects.detr.modeling import DETR

    registered = {type(f) for f in registered_weight_families()}
    for model_class in (DeformableDETR, DETR):
        assert type(model_class.weight_family) in registered, model_class
    names = [f.name for f in registered_weight_families()]
    assert len(names) == len(set(names)), names
    assert set(source_formats()) >= {"official-deformable-detr", "official-detr", "hf", "torchvision-resnet"}


class _ToyWeights(WeightFamily):
    """A family the library has never heard of (not registered: the model's hook is enough)."""

    name = "toy"
    arch_options = {"width": "model.width", "num_classes": "model.num_classes"}
    class_head_pattern = r"scores\.(?:weight|bias)"

    def model_arch(self, model):
        return {**super().model_arch(model), "width": model.width}

    def state_dict_arch(self, state_dict):
        return {"width": int(state_dict["trunk.weight"].shape[0])} if "trunk.weight" in state_dict else {}


class _Toy(nn.Module):
    weight_family = _ToyWeights()

    def __init__(self, width=4, num_classes=3):
        super().__init__()
        self.width, self.num_classes = width, num_classes
        self.trunk = nn.Linear(2, width)
        self.scores = nn.Linear(width, num_classes)


class _Plain(nn.Module):
    def __init__(self):
        super().__init__()
        self.trunk = nn.Linear(2, 4)


def test_a_new_family_plugs_in_through_the_model_hook():
    assert model_arch(_Toy()) == {"meta_architecture": "_Toy", "num_classes": 3, "width": 4}
    with pytest.raises(CheckpointMismatchError, match=r"the checkpoint has model\.width=8, the config has 4"):
        apply_state_dict(_Toy(width=4), _Toy(width=8).state_dict(), purpose="eval")
    # its class-head pattern: another class count is tolerated when fine-tuning only
    report = apply_state_dict(_Toy(num_classes=5), _Toy(num_classes=3).state_dict(), purpose="train")
    assert sorted(k for k, _, _ in report.skipped_class_heads) == ["scores.bias", "scores.weight"]
    with pytest.raises(CheckpointMismatchError, match=r"the checkpoint has 3 classes, the config 5"):
        apply_state_dict(_Toy(num_classes=5), _Toy(num_classes=3).state_dict(), purpose="eval")


def test_a_model_without_a_family_gets_the_neutral_one():
    assert type(weight_family_of(_Plain())) is WeightFamily
    assert model_arch(_Plain()) == {"meta_architecture": "_Plain"}
    state = _Plain().state_dict()
    state["trunk.weight"] = torch.zeros(5, 2)
    with pytest.raises(CheckpointMismatchError, match=r"trunk\.weight: \(5, 2\) in the checkpoint, \(4, 2\) in the model"):
        apply_state_dict(_Plain(), state, purpose="eval")


def test_another_familys_weights_are_named_from_the_stored_facts():
    """Weights of a family that was never imported: the stored arch facts name it."""
    state = {**_Plain().state_dict(), "decoder.weight": torch.zeros(2, 2)}
    with pytest.raises(CheckpointMismatchError) as err:
        apply_state_dict(_Plain(), state, purpose="eval", meta={"arch": {"meta_architecture": "OtherDETR"}})
    assert "these are detrex_lite OtherDETR weights and the config builds _Plain: use a OtherDETR config" in str(err.value)
