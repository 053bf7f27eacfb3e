"""The tools and their documentation agree.

* every tools/*.py exposes ``get_parser()`` (or ``build_parser()``) and answers ``--help``;
* every file in tools/ is documented in docs/tools.md, with an example command in a bash block,
  and every Python tool is named in the README;
* every ``python tools/<tool>.py ...`` line of a bash block in README.md and docs/*.md parses
  with that tool's own parser (argparse only, nothing runs), and a config file it names exists;
* relative links in README.md and docs/*.md point at files of the repository (and at a heading
  of the page for ``page.md#anchor``).

Tools and commands are discovered, not listed, so a new tool or a new documented command is
covered as soon as it exists.
"""
import glob
import os
import re
import shlex
from typing import List, Tuple

import pytest

from tools_tiny_models import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_TOOLS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "tools", "*.py")))
ALL_TOOLS = sorted(
    os.path.basename(p) for p in glob.glob(os.path.join(REPO, "tools", "*"))
    if os.path.isfile(p) and not os.path.basename(p).startswith((".", "_"))
)
DOCUMENTED_PAGES = ["README.md"] + sorted(
    os.path.relpath(p, REPO) for p in glob.glob(os.path.join(REPO, "docs", "*.md"))
)


def _read(rel: str) -> str:
    with open(os.path.join(REPO, rel)) as f:
        return f.read()


def _without_code(text: str) -> str:
    return re.sub(r"^```.*?^```", "", text, flags=re.S | re.M)


def bash_blocks(text: str) -> List[Tuple[int, str]]:
    """(line number, body) of every ```bash block."""
    blocks = []
    for match in re.finditer(r"^```bash\n(.*?)^```", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start()) + 2, match.group(1)))
    return blocks


def tool_commands(rel: str) -> List[Tuple[str, str, List[str]]]:
    """(where, tool name, argv) of every `python tools/<tool>.py ...` command in the bash blocks."""
    found = []
    for first_line, body in bash_blocks(_read(rel)):
        logical, start = "", first_line
        for offset, line in enumerate(body.splitlines()):
            if not logical:
                start = first_line + offset
            if line.rstrip().endswith("\\"):
                logical += line.rstrip()[:-1] + " "
                continue
            logical += line
            words = shlex.split(logical, comments=True)
            logical = ""
            while words and re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*=.*", words[0]):
                words = words[1:]  # VAR=value prefixes
            if len(words) >= 2 and words[0] in ("python", "python3") and re.fullmatch(r"tools/\w+\.py", words[1]):
                found.append((f"{rel}:{start}", os.path.splitext(os.path.basename(words[1]))[0], words[2:]))
    return found


COMMANDS = [c for page in DOCUMENTED_PAGES for c in tool_commands(page)]


def _parser(module):
    factory = getattr(module, "get_parser", None) or getattr(module, "build_parser", None)
    assert factory is not None, f"tools/{module.__name__}: no get_parser() / build_parser()"
    return factory()


def parse(tool: str, argv: List[str]):
    """Parse ``argv`` as the tool does, without running it (SystemExit on an argparse error)."""
    module = load_tool(tool)
    if hasattr(module, "parse_args"):  # a tool with extra rules (e.g. trailing KEY=VALUE overrides)
        return module.parse_args(argv)
    parser = _parser(module)
    args = parser.parse_args(argv)
    if hasattr(module, "check_flags_before_overrides"):
        module.check_flags_before_overrides(parser, args.opts)
    return args


@pytest.mark.parametrize("tool", PY_TOOLS)
def test_tool_answers_help(tool, capsys):
    parser = _parser(load_tool(tool))
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: ") and len(out.splitlines()) > 3


def test_every_tool_is_documented_with_an_example():
    page = _read("docs/tools.md")
    examples = "\n".join(body for _, body in bash_blocks(page))
    headings = "\n".join(line for line in _without_code(page).splitlines() if line.startswith("#"))
    for name in ALL_TOOLS:
        assert f"tools/{name}" in examples, f"docs/tools.md has no bash example running tools/{name}"
        assert name in headings, f"docs/tools.md has no section heading naming {name}"


def test_readme_lists_every_python_tool():
    readme = _read("README.md")
    missing = [name for name in PY_TOOLS if f"tools/{name}.py" not in readme]
    assert not missing, f"README.md does not mention {missing}"


def test_documented_commands_were_found():
    tools = {tool for _, tool, _ in COMMANDS}
    assert {"train_net", "demo", "convert_checkpoint", "benchmark"} <= tools, tools


@pytest.mark.parametrize("where, tool, argv", COMMANDS, ids=[f"{w} {t}" for w, t, _ in COMMANDS])
def test_documented_command_parses(where, tool, argv):
    assert os.path.isfile(os.path.join(REPO, "tools", f"{tool}.py")), f"{where}: tools/{tool}.py does not exist"
    try:
        parse(tool, argv)
    except SystemExit as e:
        pytest.fail(f"{where}: `{tool} {' '.join(argv)}` does not parse (exit {e.code})")
    for i, word in enumerate(argv[:-1]):
        value = argv[i + 1]
        if word in ("--config-file", "--check-config") and value.endswith(".py") and "/" in value and "..." not in value:
            assert os.path.isfile(os.path.join(REPO, value)), f"{where}: config {value} does not exist"


def _headings(rel: str) -> set:
    """GitHub's anchors of a page's headings."""
    anchors = set()
    for line in _without_code(_read(rel)).splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip().lower()
            anchors.add(re.sub(r"[^\w\- ]", "", title).replace(" ", "-"))
    return anchors


def test_relative_links_resolve():
    broken = []
    for page in DOCUMENTED_PAGES:
        text = _without_code(_read(page))  # links in code are not links
        for target in re.findall(r"\]\(([^)\s]+)\)", text):
            if re.match(r"[a-z]+://|mailto:|#", target):
                continue
            path, _, anchor = target.partition("#")
            rel = os.path.normpath(os.path.join(os.path.dirname(page), path))
            if not os.path.exists(os.path.join(REPO, rel)):
                broken.append(f"{page}: {target}")
            elif anchor and rel.endswith(".md") and anchor not in _headings(rel):
                broken.append(f"{page}: {target} (no such heading)")
    assert not broken, broken


def _lr_per_iteration(config_file: str, overrides: List[str]) -> List[float]:
    """The lr multiplier at every iteration of a run of ``config_file`` with ``overrides``, as
    training applies it (detectron2's LRMultiplier over ``train.max_iter``, which the trainer's
    LRScheduler hook builds)."""
    import torch
    from detectron2.config import instantiate
    from detectron2.solver import LRMultiplier

    from detrex_lite.config import apply_overrides_checked, load_config_file

    cfg = apply_overrides_checked(load_config_file(os.path.join(REPO, config_file)), overrides)
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    scheduler = LRMultiplier(optimizer, instantiate(cfg.lr_multiplier), cfg.train.max_iter)
    lrs = []
    for _ in range(cfg.train.max_iter):
        lrs.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return lrs


def test_docs_say_where_the_lr_drop_of_a_shortened_run_lands():
    """docs/tools.md (print_config) and docs/training.md (schedules) state what the schedule code
    does with `train.max_iter=600` on the demo config: the drop moves with the run's length."""
    lrs = _lr_per_iteration("projects/deformable_detr/configs/deformable_detr_r18_demo.py", ["train.max_iter=600"])
    warmup = lrs.index(1.0)
    drop = next(i for i in range(warmup, len(lrs)) if lrs[i] < 1.0)
    assert (warmup, drop, len(lrs)) == (25, 480, 600)
    assert lrs[drop:] == [pytest.approx(0.1)] * (600 - drop)
    tools = " ".join(_read("docs/tools.md").split())
    assert f"iteration {drop} of 600, and the warm-up takes {warmup} iterations" in tools
    assert "does not shorten the schedule" not in tools
    training = " ".join(_read("docs/training.md").split())
    assert "keeps the drop at the same fraction of training" in training
