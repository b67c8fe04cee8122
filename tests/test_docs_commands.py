"""Every ``detr`` command shown in the README and docs parses with the real command line.

A renamed or removed flag, or a command that no longer exists, fails here: the documentation and the
tool cannot drift apart. Commands are parsed, not run (most need data or weights users have and CI has
not); the runnable ones (quick start, synthetic data, predict, plot) are run by their own tests.
Synopsis lines (``[--flag X]``, ``…``, ``...``) are skipped: they describe, they are not commands.
"""

from __future__ import annotations

import argparse
import re
import shlex
from pathlib import Path

import pytest

from torchdetr.cli import build_parser

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SYNOPSIS = re.compile(r"\[|…|\.\.\.|\bNAME_OR_CKPT\b|IMAGES_OR_DIRS")


def _code_lines(text: str) -> list[str]:
    """Lines inside fenced ```bash/```sh/``` blocks, with backslash continuations joined."""
    lines, inside, pending = [], False, ""
    for line in text.splitlines():
        if line.strip().startswith("```"):
            inside = not inside and line.strip() in ("```", "```bash", "```sh", "```console", "```shell")
            pending = ""
            continue
        if not inside:
            continue
        line = pending + line.strip()
        if line.endswith("\\"):
            pending = line[:-1] + " "
            continue
        pending = ""
        lines.append(line)
    return lines


def documented_commands() -> list[tuple[str, list[str]]]:
    """``(where, argv)`` of every documented ``detr …`` / ``python -m torchdetr …`` / torchrun command."""
    found = []
    for doc in DOCS:
        for line in _code_lines(doc.read_text()):
            line = line.split(" #")[0].strip()
            if SYNOPSIS.search(line):
                continue
            try:
                words = shlex.split(line) if line else []
            except ValueError:  # not shell (an error message quoted in a code block)
                continue
            for start, word in enumerate(words):
                if word == "detr" and start == 0:
                    if len(words) > 1 and words[1].endswith(":"):  # printed output (`detr train: error: …`)
                        break
                    found.append((f"{doc.name}: {line}", words[1:]))
                    break
                if word in ("torchdetr", "torchdetr.cli") and start > 0 and words[start - 1] == "-m":
                    found.append((f"{doc.name}: {line}", words[start + 1:]))
                    break
    return found


COMMANDS = documented_commands()


def test_the_docs_show_commands():
    assert len(COMMANDS) >= 20, [where for where, _ in COMMANDS]


@pytest.mark.parametrize(("where", "argv"), COMMANDS, ids=[w[:80] for w, _ in COMMANDS])
def test_documented_command_parses(where, argv, capsys):
    parser = build_parser(only=argv[0] if argv else None)
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_:
        pytest.fail(f"{where}\n  does not parse ({exit_.code}): {capsys.readouterr().err.strip()}")
    assert isinstance(args, argparse.Namespace) and getattr(args, "func", None), where


def test_the_extraction_catches_a_wrong_flag():
    """The mechanism can fail: a documented command with a flag that does not exist is found and refused."""
    text = "```bash\ndetr train --coco_path d \\\n    --no_such_flag 1   # comment\n```\n"
    [line] = _code_lines(text)
    argv = shlex.split(line.split(" #")[0])[1:]
    with pytest.raises(SystemExit):
        build_parser(only="train").parse_args(argv)
