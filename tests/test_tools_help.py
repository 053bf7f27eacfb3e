"""Every tool's ``--help`` reads as whole sentences, and every flag says what it does.

Tools are discovered, not listed (as in tests/test_tools_start.py). For each ``tools/*.py`` the
parser the tool builds is asked for ``--help`` and its description and epilog are checked:

* the description's first paragraph (the summary, up to the first blank line) ends with a
  period: a description cut after its first source line ("... of one") fails here;
* every prose paragraph ends a sentence ("." or "!" or "?") or introduces what follows (":");
  indented blocks (examples, tables) are not prose;
* an example command keeps its line breaks: a ``\\`` continuation that a non-raw docstring
  swallowed shows as a run of spaces in the middle of the command;
* every argument but ``-h`` has a non-empty help string.
"""
import argparse
import glob
import os
import re
from typing import List

import pytest

from tools_tiny_models import load_tool

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PY_TOOLS = sorted(os.path.splitext(os.path.basename(p))[0] for p in glob.glob(os.path.join(REPO, "tools", "*.py")))
SENTENCE_END = (".", "!", "?")
LEAD_IN = ":"


def tool_parser(tool: str) -> argparse.ArgumentParser:
    module = load_tool(tool)
    factory = getattr(module, "get_parser", None) or getattr(module, "build_parser", None)
    assert factory is not None, f"tools/{tool}.py: no get_parser() / build_parser()"
    return factory()


def paragraphs(text: str) -> List[List[str]]:
    """The blank-line separated blocks of ``text``, each a list of its lines."""
    blocks, current = [], []
    for line in text.splitlines():
        if line.strip():
            current.append(line.rstrip())
        elif current:
            blocks.append(current)
            current = []
    if current:
        blocks.append(current)
    return blocks


def text_problems(where: str, text: str, summary_first: bool = True) -> List[str]:
    """What makes ``text`` (a description or an epilog) not read as whole sentences;
    ``summary_first``: its first paragraph is a summary, ending with a period (descriptions)."""
    problems = []
    blocks = paragraphs(text or "")
    for k, block in enumerate(blocks):
        prose = [i for i, line in enumerate(block) if not line[0].isspace()]
        if not prose:
            continue  # an example or a table
        for i in prose:
            # A prose line ends its paragraph or is followed by an indented block: it must close.
            last = i == len(block) - 1
            before_indented = not last and block[i + 1][0].isspace()
            if (last or before_indented) and not block[i].endswith(SENTENCE_END + (LEAD_IN,)):
                problems.append(f"{where}: paragraph {k + 1} ends mid-sentence: {block[i][-60:]!r}")
    if summary_first and blocks and not blocks[0][-1].endswith(SENTENCE_END):
        problems.append(f"{where}: the first paragraph does not end with a period: {blocks[0][-1][-60:]!r}")
    for line in (text or "").splitlines():
        command = line.strip()
        if re.match(r"(python3? )?tools/\w+\.py\b", command) and re.search(r"\S {3,}\S", command.split("  #")[0]):
            problems.append(f"{where}: a line continuation became spaces: {command[:100]!r}")
    return problems


@pytest.mark.parametrize("tool", PY_TOOLS)
def test_help_reads_as_whole_sentences(tool, capsys):
    parser = tool_parser(tool)
    with pytest.raises(SystemExit) as exit_info:
        parser.parse_args(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert parser.description, f"tools/{tool}.py --help has no description"
    assert parser.description.strip().splitlines()[0] in out
    problems = text_problems(f"{tool} description", parser.description)
    problems += text_problems(f"{tool} epilog", parser.epilog, summary_first=False)
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("tool", PY_TOOLS)
def test_every_flag_has_help(tool):
    parser = tool_parser(tool)
    missing = [
        action.option_strings[0] if action.option_strings else action.dest
        for action in parser._actions
        if not isinstance(action, argparse._HelpAction) and not (action.help or "").strip()
    ]
    assert not missing, f"tools/{tool}.py: no help for {missing}"


@pytest.mark.parametrize(
    "text",
    [
        "Plot training curves (losses, lr, gradient norm, speed and COCO AP against iteration) of one",
        "Draws images.\n\nWrites the PNGs into --out and",
        "Converts weights.\n\nExamples:\n  python tools/x.py --a 1       --b 2\n",
    ],
)
def test_the_checks_catch_cut_text(text):
    # The checks above can fail: a cut sentence and a swallowed continuation are found.
    assert text_problems("t", text)


def test_the_checks_accept_whole_text():
    text = (
        "Does a thing.\n\n    python tools/x.py --a 1 \\\n        --b 2\n\n"
        "Writes into --out:\n\n  a.png    the picture\n  b.json   the numbers\n\nand prints them."
    )
    assert text_problems("t", text) == []
