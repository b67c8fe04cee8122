"""``log.txt`` of a run (``engine/run_log.py``): synced appends, and the repair that makes it hold each
epoch exactly once as the checkpoint a resumed run continues from knows them."""

from __future__ import annotations

import errno
import json
import os

import pytest

from torchdetr.engine.run_log import LOG_FILE, RunLog, logged_row, read_log
from torchdetr.errors import OutputError


def row(epoch: int, loss: float = 1.0) -> dict:
    return {"train_loss": loss, "epoch": epoch}


def write_log(folder, lines: list[str]) -> None:
    (folder / LOG_FILE).write_text("".join(lines))


def epochs(folder) -> list[int]:
    return [json.loads(line)["epoch"] for line in (folder / LOG_FILE).read_text().splitlines()]


@pytest.fixture
def run_log(tmp_path):
    log = RunLog(tmp_path)
    yield log
    log.close()


def test_rows_are_appended_synced_and_kept_for_the_checkpoint(tmp_path, run_log, monkeypatch):
    synced = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))
    run_log.write(row(0))
    run_log.write(row(1))
    assert epochs(tmp_path) == [0, 1] and [r["epoch"] for r in run_log.rows] == [0, 1] and len(synced) == 2


def test_a_kill_before_the_log_row_gets_the_row_back_from_the_checkpoint(tmp_path, run_log):
    """Checkpoint of epoch 2 written, then killed before row 2 (and row 1 lost too, e.g. a deleted line)."""
    write_log(tmp_path, [json.dumps(row(0)) + "\n"])
    saved = [row(0), row(1, loss=0.5)]
    assert run_log.resume(saved, epoch=2) is None  # row 2 is the caller's to finish
    assert epochs(tmp_path) == [0, 1] and run_log.rows == saved
    run_log.write(row(2))
    assert epochs(tmp_path) == [0, 1, 2]


def test_a_row_logged_after_the_checkpoint_is_kept_and_returned(tmp_path, run_log):
    write_log(tmp_path, [json.dumps(row(e)) + "\n" for e in range(3)])
    finished = run_log.resume([row(0), row(1)], epoch=2)
    assert finished == row(2) and epochs(tmp_path) == [0, 1, 2]


def test_half_written_lines_and_rows_after_the_checkpoint_are_dropped(tmp_path, run_log, caplog):
    """A kill while appending leaves half a line; rows after the resumed checkpoint are trained again."""
    write_log(tmp_path, [json.dumps(row(e)) + "\n" for e in range(4)] + ['{"train_loss": 1.0, "ep'])
    with caplog.at_level("WARNING", logger="torchdetr.train"):
        finished = run_log.resume([row(0)], epoch=1)
    assert finished == row(1) and epochs(tmp_path) == [0, 1]
    assert "1 unreadable (half-written) line(s) dropped" in caplog.text
    assert "rows of epochs 2, 3 dropped" in caplog.text
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]


def test_a_last_line_without_its_newline_is_completed_before_appending(tmp_path, run_log):
    write_log(tmp_path, [json.dumps(row(0)) + "\n", json.dumps(row(1))])
    assert run_log.resume([row(0)], epoch=1) == row(1)
    run_log.write(row(2))
    assert epochs(tmp_path) == [0, 1, 2]


def test_checkpoints_without_rows_keep_the_logged_epochs_once(tmp_path, run_log):
    """An older checkpoint (no ``run_log``): rows up to its epoch are kept, repeated ones once."""
    write_log(tmp_path, [json.dumps(row(e)) + "\n" for e in (0, 1, 0, 1, 2, 3)])
    assert run_log.resume(None, epoch=2) == row(2)
    assert epochs(tmp_path) == [0, 1, 2]


def test_a_fresh_start_empties_the_log(tmp_path, run_log):
    write_log(tmp_path, [json.dumps(row(0)) + "\n"])
    assert run_log.resume(None, epoch=None) is None
    assert (tmp_path / LOG_FILE).read_text() == ""


def test_an_unchanged_log_is_not_rewritten(tmp_path, run_log):
    write_log(tmp_path, [json.dumps(row(0)) + "\n"])
    before = os.stat(tmp_path / LOG_FILE).st_ino
    run_log.resume([row(0)], epoch=1)
    assert os.stat(tmp_path / LOG_FILE).st_ino == before


def test_a_failed_append_leaves_the_log_as_it_was(tmp_path, run_log, monkeypatch):
    run_log.write(row(0))
    before = (tmp_path / LOG_FILE).read_bytes()

    def disk_full(fd):
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(os, "fsync", disk_full)
    with pytest.raises(OutputError) as caught:
        run_log.write(row(1))
    assert str(caught.value) == (f"{tmp_path / LOG_FILE}: could not write the epoch's log row: "
                                 f"{os.strerror(errno.ENOSPC)}")
    assert (tmp_path / LOG_FILE).read_bytes() == before


def test_read_log_and_logged_row(tmp_path):
    write_log(tmp_path, [json.dumps(row(0)) + "\n", "[1, 2]\n", json.dumps(row(1))])
    assert read_log(tmp_path / LOG_FILE) == ([row(0), row(1)], 1, True)
    assert logged_row(tmp_path / LOG_FILE, 1) == row(1) and logged_row(tmp_path / "missing.txt", 0) is None
