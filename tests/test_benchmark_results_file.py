"""benchmarks/results_file.py: a benchmark keeps an earlier result unless --overwrite, and says so before measuring."""

from __future__ import annotations

import argparse
import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "results_file.py"
spec = importlib.util.spec_from_file_location("benchmark_results_file", SCRIPT)
results_file = importlib.util.module_from_spec(spec)
spec.loader.exec_module(results_file)


def _parse(default: Path, *argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    results_file.add_output_arguments(parser, default)
    return parser.parse_args(list(argv))


def test_an_existing_result_is_kept_unless_overwrite(tmp_path, capsys):
    table = tmp_path / "results" / "table.md"
    args = _parse(table)
    path = results_file.output_path(args.output, args.overwrite)
    results_file.write_results(path, "| first |\n")
    assert table.read_text() == "| first |\n" and "| first |" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="--overwrite"):
        results_file.output_path(args.output, args.overwrite)
    assert table.read_text() == "| first |\n"
    args = _parse(table, "--overwrite")
    results_file.write_results(results_file.output_path(args.output, args.overwrite), "| second |\n")
    assert table.read_text() == "| second |\n"
    args = _parse(table, "--output", "")
    assert results_file.output_path(args.output, args.overwrite) is None  # '' = print only


def test_a_failed_write_keeps_the_earlier_table(tmp_path, monkeypatch):
    """A table that cannot be written (here: text UTF-8 cannot encode) leaves the earlier file whole, no partial file."""
    monkeypatch.setattr(results_file, "print", lambda *args, **kwargs: None, raising=False)  # the write itself fails
    table = tmp_path / "table.md"
    table.write_text("| earlier |\n")
    with pytest.raises(Exception):  # noqa: B017  (the encoding error, or the OutputError naming the file)
        results_file.write_results(table, "| new | \ud800 |\n")
    assert table.read_text() == "| earlier |\n"
    assert [p.name for p in tmp_path.iterdir()] == ["table.md"]
