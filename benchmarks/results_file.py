"""Where a benchmark writes its table: ``--output``, kept unless ``--overwrite`` (an earlier result is never replaced
silently). Checked before measuring, so a refused run costs nothing; the table is written atomically (a failed
write leaves the earlier file whole)."""

from __future__ import annotations

import argparse
from pathlib import Path

from torchdetr.atomic_write import write_atomic


def add_output_arguments(parser: argparse.ArgumentParser, default: Path) -> None:
    """``--output FILE`` ('' = print only) and ``--overwrite`` (replace an existing ``--output``)."""
    parser.add_argument("--output", default=str(default), help=f"markdown file for the table ('' = print only; "
                                                               f"default {default.name})")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing --output")


def output_path(output: str, overwrite: bool) -> Path | None:
    """The file to write (None: print only); exits naming it when it exists and ``overwrite`` is not set."""
    if not output:
        return None
    path = Path(output)
    if path.exists() and not overwrite:
        raise SystemExit(f"--output {path} exists: pass --overwrite to replace it")
    return path


def write_results(path: Path | None, text: str) -> None:
    """Print the table, then write it to ``path`` (when given), whole or not at all."""
    print(text)
    if path is not None:
        write_atomic(path, lambda f: f.write(text.encode()), what="results table")
        print(f"wrote {path}")
