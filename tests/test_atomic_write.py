"""Atomic, durable writes (``torchdetr/atomic_write.py``): unique temporary files, fsync, partial files removed
on failure (disk full simulated in Python, and a real kernel refusal through a file-size limit)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import pathlib
import resource
import signal
import threading

import pytest
import torch

from torchdetr.atomic_write import TEMPORARY_FILE, remove_partial_files, replace_atomic, write_atomic
from torchdetr.engine.checkpoint import load_checkpoint, save_atomic
from torchdetr.errors import OutputError

ENOSPC = os.strerror(errno.ENOSPC)


def small_state(value: float) -> dict:
    return {"model": {"w": torch.full((64, 64), value)}}


class DiskFullAfter:
    """A file whose writes fail with ENOSPC once ``room`` bytes are written (what a full disk does)."""

    def __init__(self, raw, room: int) -> None:
        self.raw, self.room = raw, room

    def write(self, data) -> int:
        if len(data) > self.room:
            self.raw.write(bytes(data[: self.room]))
            self.room = 0
            raise OSError(errno.ENOSPC, ENOSPC)
        self.room -= len(data)
        return self.raw.write(data)

    def __getattr__(self, name):
        return getattr(self.raw, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.raw.close()


@pytest.fixture
def disk_full(monkeypatch):
    """Temporary files opened for writing fill up after ``room`` bytes (default 4 KiB)."""
    real_open = pathlib.Path.open

    def open_(self, mode="r", *args, **kwargs):
        raw = real_open(self, mode, *args, **kwargs)
        return DiskFullAfter(raw, 4096) if TEMPORARY_FILE.match(self.name) and "w" in mode else raw

    monkeypatch.setattr(pathlib.Path, "open", open_)


@contextlib.contextmanager
def file_size_limit(nbytes: int):
    """The kernel refuses (EFBIG) writes past ``nbytes`` in any file of this process (RLIMIT_FSIZE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, handler)


def test_writes_go_through_a_synced_unique_temporary_file_then_a_rename(tmp_path, monkeypatch):
    target = tmp_path / "checkpoint.pth"
    save_atomic(small_state(1.0), target)
    events, names = [], []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        real_fsync(fd)

    def replace(src, dst):
        names.append(os.path.basename(src))
        events.append(("replace", str(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    save_atomic(small_state(2.0), target)
    save_atomic(small_state(3.0), target)
    assert load_checkpoint(target)["model"]["w"][0, 0] == 3.0
    assert len(set(names)) == 2 and all(TEMPORARY_FILE.match(n) for n in names)  # a new name each time
    # file synced, renamed, then the folder synced
    assert [kind for kind, _ in events] == ["fsync", "replace", "fsync"] * 2
    assert TEMPORARY_FILE.match(os.path.basename(events[0][1])) and events[2][1] == str(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]
    assert oct(target.stat().st_mode & 0o777) == oct(0o666 & ~_umask())  # usual permissions, not mkstemp's 0600


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_concurrent_writers_never_leave_an_unloadable_file(tmp_path):
    """With one fixed temporary name, writers write into each other's file or rename it away."""
    target, errors = tmp_path / "checkpoint.pth", []
    state = {"model": {"w": torch.randn(256, 256)}}

    def writer():
        try:
            for _ in range(10):
                save_atomic(state, target)
        except Exception as err:  # collected and asserted below
            errors.append(err)

    threads = [threading.Thread(target=writer) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    torch.testing.assert_close(load_checkpoint(target)["model"]["w"], state["model"]["w"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]


def test_a_full_disk_removes_the_partial_file_keeps_the_previous_one_and_says_so(tmp_path, disk_full):
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"the previous checkpoint")
    with pytest.raises(OutputError) as caught:
        save_atomic(small_state(2.0), target)  # torch.save reports the failed write as a RuntimeError of its own
    assert str(caught.value) == (f"{target}: could not write the checkpoint: {ENOSPC}; partial files were removed "
                                 "and the previous checkpoint (if any) is kept")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pth"]
    assert target.read_bytes() == b"the previous checkpoint"


def test_a_write_the_kernel_refuses_is_an_output_error_without_partial_files(tmp_path):
    """A real refusal (EFBIG from RLIMIT_FSIZE), through torch.save to a file object and to a path."""
    target = tmp_path / "checkpoint.pth"
    target.write_bytes(b"old")
    big = {"model": {"w": torch.zeros(512, 1024)}}  # 2 MiB
    with file_size_limit(1 << 20):
        with pytest.raises(OutputError, match=f"{target}: could not write the checkpoint: {os.strerror(errno.EFBIG)}"):
            save_atomic(big, target)
        with pytest.raises(OutputError, match=r"latest\.pth: could not write the evaluation arrays: the write failed"):
            replace_atomic(tmp_path / "eval" / "latest.pth", lambda tmp: torch.save(big, tmp), what="evaluation arrays")
        with pytest.raises(OutputError, match=f"detections_bbox.json: could not write the detections: "
                                              f"{os.strerror(errno.EFBIG)}"):
            replace_atomic(tmp_path / "detections_bbox.json",
                           lambda tmp: tmp.write_text(json.dumps(list(range(400_000)))), what="detections")
    assert target.read_bytes() == b"old"
    assert sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*")) == ["checkpoint.pth", "eval"]


def test_other_errors_pass_unchanged_and_leave_nothing(tmp_path):
    with pytest.raises(ZeroDivisionError):
        write_atomic(tmp_path / "x.bin", lambda f: 1 / 0)
    with pytest.raises(RuntimeError, match="a bug"):
        replace_atomic(tmp_path / "y.bin", lambda tmp: (_ for _ in ()).throw(RuntimeError("a bug")))
    assert list(tmp_path.iterdir()) == []


def test_remove_partial_files_removes_only_temporary_files_of_writers(tmp_path):
    for name in (".checkpoint.pth.123-0a1b2c3d.tmp", ".log.txt.9-ffffffff.tmp"):
        (tmp_path / name).write_bytes(b"partial")
    for name in ("checkpoint.pth", "notes.tmp", ".hidden.tmp", "data.123-0a1b2c3d.tmp"):
        (tmp_path / name).write_bytes(b"keep")
    removed = remove_partial_files(tmp_path)
    assert sorted(p.name for p in removed) == [".checkpoint.pth.123-0a1b2c3d.tmp", ".log.txt.9-ffffffff.tmp"]
    assert sorted(p.name for p in tmp_path.iterdir()) == [".hidden.tmp", "checkpoint.pth", "data.123-0a1b2c3d.tmp",
                                                          "notes.tmp"]
