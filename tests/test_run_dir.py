"""The output folder of a training run (``engine/run_dir.py``): one writer (lock), earlier runs refused
unless continued or ``--overwrite``-n, ``--resume auto`` picks the newest valid checkpoint."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from torchdetr import DETRConfig
from torchdetr.cli import main as cli_main
from torchdetr.engine import run_dir
from torchdetr.engine.run_dir import LOCK_FILE, OutputLock, claim_output_dir, newest_valid_checkpoint
from torchdetr.errors import ConfigError, OutputError


def save_checkpoint(path, epoch: int, value: float = 1.0) -> None:
    torch.save({"model": {"w": torch.full((3,), value)}, "optimizer": {"state": {}, "param_groups": []},
                "lr_scheduler": {}, "epoch": epoch}, path)


def a_run(folder, epochs: int = 3) -> None:
    """The files of a finished run of ``epochs`` epochs."""
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(folder / "checkpoint.pth", epochs - 1)
    (folder / "log.txt").write_text("".join(json.dumps({"epoch": e, "train_loss": 1.0}) + "\n" for e in range(epochs)))
    (folder / "eval").mkdir()
    (folder / "eval" / "latest.pth").write_bytes(b"eval")
    (folder / "detections_bbox.json").write_text("[]")


def claim(folder, **options):
    cfg = DETRConfig(output_dir=str(folder), **options)
    with claim_output_dir(cfg) as directory:
        return directory


def tree(folder) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------- lock
def test_a_second_writer_is_refused_with_the_holders_pid_and_the_lock_is_released(tmp_path):
    with OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
        with pytest.raises(OutputError, match=f"in use by another `detr train` \\(pid {os.getpid()} on "):
            OutputLock(tmp_path).acquire()
    assert not (tmp_path / LOCK_FILE).exists()
    with OutputLock(tmp_path):  # free again
        pass


def test_a_run_held_by_another_live_process_is_refused_with_its_pid(tmp_path, capsys):
    holder = subprocess.Popen([sys.executable, "-c", textwrap.dedent(f"""
        import fcntl, json, os, sys, time
        fd = os.open({str(tmp_path / LOCK_FILE)!r}, os.O_RDWR | os.O_CREAT)
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, json.dumps({{"pid": os.getpid(), "host": "elsewhere", "started": "today"}}).encode())
        print("locked", flush=True)
        sys.stdin.read()
    """)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputError) as caught:
            claim(tmp_path)
        assert f"pid {holder.pid} on elsewhere" in str(caught.value) and "\n" not in str(caught.value)
        # the command: one line, exit 2, nothing written
        code = cli_main(["train", "--dataset_file", "synthetic", "--backbone_weights", "none", "--device", "cpu",
                         "--output_dir", str(tmp_path)])
        err = capsys.readouterr().err
        assert code == 2 and err.count("\n") == 1 and f"pid {holder.pid}" in err and "Traceback" not in err
        assert [p.name for p in tmp_path.iterdir()] == [LOCK_FILE]
    finally:
        holder.stdin.close()
        holder.wait(timeout=30)
    assert claim(tmp_path).resume == ""  # the holder ended: the lock is free


def test_the_stale_lock_of_a_dead_process_is_taken_over(tmp_path, caplog):
    (tmp_path / LOCK_FILE).write_text(json.dumps({"pid": 999999, "host": "gone", "started": "yesterday"}))
    with caplog.at_level("INFO", logger="torchdetr.train"), OutputLock(tmp_path):
        assert json.loads((tmp_path / LOCK_FILE).read_text())["pid"] == os.getpid()
    assert "pid 999999 on gone" in caplog.text and "has ended" in caplog.text


def test_a_lock_file_replaced_while_waiting_is_locked_again(tmp_path, monkeypatch):
    """The holder removes the file just after our open(): locking the removed file would give two holders."""
    opened = []
    real_open = OutputLock._open

    def open_then_lose_the_race(self):
        fd = real_open(self)
        if not opened:
            os.unlink(self.path)  # the previous holder releases (removes) it now
        opened.append(fd)
        return fd

    monkeypatch.setattr(OutputLock, "_open", open_then_lose_the_race)
    lock = OutputLock(tmp_path)
    lock.acquire()
    assert len(opened) == 2 and os.path.samestat(os.fstat(lock._fd), os.stat(tmp_path / LOCK_FILE))
    lock.release()


# ---------------------------------------------------------------- earlier runs
def test_an_earlier_run_is_refused_in_one_line_and_left_unchanged(tmp_path):
    a_run(tmp_path / "run")
    before = tree(tmp_path / "run")
    with pytest.raises(OutputError) as caught:
        claim(tmp_path / "run")
    message = str(caught.value)
    assert "\n" not in message and "holds an earlier run" in message and "log.txt (3 epochs)" in message
    assert "--resume auto" in message and "--overwrite" in message
    assert tree(tmp_path / "run") == before
    # resuming another run's checkpoint into it is refused too
    save_checkpoint(tmp_path / "other.pth", 7)
    with pytest.raises(OutputError, match="is not one of its checkpoints"):
        claim(tmp_path / "run", resume=str(tmp_path / "other.pth"))


def test_empty_missing_and_unrelated_folders_are_fine(tmp_path):
    assert claim(tmp_path / "new" / "run").path == tmp_path / "new" / "run"
    (tmp_path / "empty").mkdir()
    assert claim(tmp_path / "empty").resume == ""
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "config.yaml").write_text("lr: 1e-4\n")
    assert claim(tmp_path / "mine").resume == ""
    assert (tmp_path / "mine" / "config.yaml").read_text() == "lr: 1e-4\n"
    assert not (tmp_path / "mine" / LOCK_FILE).exists()  # released after the run


def test_overwrite_removes_the_earlier_runs_files_but_no_other_file_and_no_input(tmp_path, caplog):
    folder = tmp_path / "run"
    a_run(folder)
    save_checkpoint(folder / "checkpoint0001.pth", 1)
    (folder / "config.yaml").write_text("epochs: 3\n")
    with caplog.at_level("WARNING", logger="torchdetr.train"):
        claim(folder, overwrite=True, pretrained=str(folder / "checkpoint0001.pth"))
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint0001.pth", "config.yaml"]
    assert "--overwrite: replacing the earlier run" in caplog.text and "log.txt (3 epochs)" in caplog.text


def test_resuming_the_runs_newest_checkpoint_continues_it(tmp_path):
    a_run(tmp_path / "run")
    assert claim(tmp_path / "run", resume=str(tmp_path / "run" / "checkpoint.pth")).resume.endswith("checkpoint.pth")


def test_resuming_an_older_checkpoint_of_the_run_needs_overwrite(tmp_path):
    folder = tmp_path / "run"
    a_run(folder, epochs=5)
    save_checkpoint(folder / "checkpoint0001.pth", 1)
    with pytest.raises(OutputError, match=r"is epoch 1, but .* holds its run up to epoch 4: .* --overwrite"):
        claim(folder, resume=str(folder / "checkpoint0001.pth"))
    claim(folder, resume=str(folder / "checkpoint0001.pth"), overwrite=True)
    assert sorted(p.name for p in folder.iterdir()) == ["checkpoint0001.pth"]


def test_partial_files_of_killed_writers_are_removed_once_the_lock_is_held(tmp_path):
    (tmp_path / ".checkpoint.pth.4242-deadbeef.tmp").write_bytes(b"half")
    claim(tmp_path, resume="auto")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------- --resume auto
def test_resume_auto_takes_the_newest_valid_checkpoint_and_skips_broken_ones(tmp_path, caplog):
    save_checkpoint(tmp_path / "checkpoint0003.pth", 3, value=float("nan"))  # diverged: skipped
    save_checkpoint(tmp_path / "checkpoint0001.pth", 1)
    save_checkpoint(tmp_path / "checkpoint.pth", 4)
    data = (tmp_path / "checkpoint.pth").read_bytes()
    (tmp_path / "checkpoint.pth").write_bytes(data[: len(data) // 2])  # truncated: skipped
    with caplog.at_level("WARNING", logger="torchdetr.train"):
        path, checkpoint = newest_valid_checkpoint(tmp_path)
    assert path.name == "checkpoint0001.pth" and checkpoint["epoch"] == 1
    assert f"skipping {tmp_path / 'checkpoint.pth'}" in caplog.text
    assert f"skipping {tmp_path / 'checkpoint0003.pth'}: it holds non-finite values (model/w)" in caplog.text
    directory = claim(tmp_path, resume="auto")
    assert directory.resume == str(tmp_path / "checkpoint0001.pth") and directory.checkpoint["epoch"] == 1


def test_resume_auto_prefers_checkpoint_pth_and_starts_afresh_without_one(tmp_path):
    save_checkpoint(tmp_path / "checkpoint0009.pth", 9)
    save_checkpoint(tmp_path / "checkpoint.pth", 12)
    assert newest_valid_checkpoint(tmp_path)[0].name == "checkpoint.pth"
    assert claim(tmp_path / "fresh", resume="auto").resume == ""


def test_resume_auto_and_overwrite_need_an_output_dir_and_exclude_each_other():
    with pytest.raises(ConfigError, match=r"--resume auto .* give --output_dir"):
        DETRConfig(resume="auto")
    with pytest.raises(ConfigError, match="choose one"):
        DETRConfig(resume="auto", overwrite=True, output_dir="run")


# ---------------------------------------------------------------- operating-system failures
def test_an_output_dir_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "file").write_text("not a folder")
    with pytest.raises(OutputError, match=r"--output_dir .*file is a file, not a folder"):
        claim(tmp_path / "file")
    with pytest.raises(OutputError, match=r"--output_dir .*file/run: cannot create the folder"):
        claim(tmp_path / "file" / "run")


@pytest.mark.parametrize("code", [errno.EACCES, errno.EROFS], ids=["permission-denied", "read-only"])
def test_an_output_dir_that_cannot_be_written_is_refused_naming_it(tmp_path, monkeypatch, code):
    """(Simulated: tests may run as root, which ignores permissions.)"""
    real_open = os.open

    def refusing_open(path, *args, **kwargs):
        if str(path).startswith(str(tmp_path)):
            raise OSError(code, os.strerror(code), str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(run_dir.os, "open", refusing_open)
    with pytest.raises(OutputError) as caught:
        claim(tmp_path)
    assert str(caught.value) == f"--output_dir {tmp_path}: cannot write there ({os.strerror(code)})"
