"""The output folder of a training run: one writer at a time, an earlier run never replaced by accident,
and the checkpoint ``--resume auto`` continues from.

- **Lock**: the main process holds ``train.lock`` (``fcntl.flock``, with its PID, host and start time)
  for the whole run; a second ``detr train`` into the folder is refused with the holder's PID. The
  kernel releases the lock when its process dies, so the lock of a killed run is simply taken over.
- **Earlier runs**: a folder holding a run's files (``checkpoint*.pth``, ``checkpoint_best.pth``, ``log.txt``,
  ``eval/``, ``tensorboard/``, ``report/``, ``detections_*.json``) is refused unless the run continues it (``--resume auto``,
  or ``--resume`` of its newest checkpoint) or ``--overwrite`` replaces it (its run files are removed,
  and the log says which; other files in the folder are never touched).
- **--resume auto**: the newest checkpoint of the folder that loads and holds finite values
  (``checkpoint.pth``, then ``checkpointNNNN.pth`` from the highest epoch down; unusable ones are
  skipped with a warning), or a fresh start when there is none.
- Partial files a killed writer left (``.NAME.PID-RANDOM.tmp``) are removed once the lock is held.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
import time
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..atomic_write import remove_partial_files
from ..config import RESUME_AUTO, DETRConfig
from ..errors import OutputError
from . import distributed as du
from .best import BEST_CHECKPOINT_NAME
from .checkpoint import CHECKPOINT_NAME, checkpoint_epoch, load_checkpoint, resume_problem
from .evaluate import EVAL_DIR
from .run_log import LOG_FILE, TENSORBOARD_DIR, prepare_output_dir

try:  # POSIX; elsewhere runs are not locked (a warning says so)
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

log = logging.getLogger("torchdetr.train")

LOCK_FILE = "train.lock"
REPORT_DIR = "report"  # the error report written at the end of training (evaluation.report)
EXTRA_CHECKPOINT = re.compile(r"^checkpoint(\d+)\.pth$")
DETECTIONS_FILE = re.compile(r"^detections_\w+\.json$")
RUN_FOLDERS = (EVAL_DIR, TENSORBOARD_DIR, REPORT_DIR)
LOCK_TRIES = 5  # a lock file removed by its holder between our open and flock is opened again


# ---------------------------------------------------------------- lock
class OutputLock:
    """An exclusive lock on an output folder: ``folder/train.lock`` held with ``fcntl.flock``.

    The file holds the holder's PID, host and start time (what a refused process reports). ``release``
    removes the file; a process that opened the file just before its removal notices that the path
    now names another file (or none) and opens it again, so two holders are impossible.
    """

    def __init__(self, folder: Path) -> None:
        self.path = Path(folder) / LOCK_FILE
        self._fd: int | None = None

    def acquire(self) -> None:
        """Take the lock or raise ``OutputError`` naming the process that holds it."""
        if fcntl is None:  # pragma: no cover
            log.warning("no file locking on this system: nothing stops a second run from writing into %s",
                        self.path.parent)
            return
        for _ in range(LOCK_TRIES):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                holder = _describe_holder(_read_fd(fd))
                os.close(fd)
                raise OutputError(f"{self.path.parent} is in use by another `detr train` ({holder}; lock file "
                                  f"{self.path}): wait for it to end, or choose another --output_dir") from None
            except OSError as err:  # e.g. a network file system without locks
                os.close(fd)
                log.warning("%s: cannot lock (%s): nothing stops a second run from writing into %s", self.path,
                            err.strerror or err, self.path.parent)
                return
            if _same_file(fd, self.path):
                previous = _read_fd(fd)
                if previous.strip():
                    log.info("took over %s from %s, which has ended", self.path, _describe_holder(previous))
                self._write_holder(fd)
                self._fd = fd
                return
            os.close(fd)  # the file was replaced while we waited: lock the new one
        raise OutputError(f"{self.path}: the lock file keeps being replaced; is another run starting there?")

    def _open(self) -> int:
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        except OSError as err:
            raise OutputError(f"--output_dir {self.path.parent}: cannot write there ({err.strerror or err})") from None

    def _write_holder(self, fd: int) -> None:
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        except OSError as err:
            os.close(fd)
            raise OutputError(f"{self.path}: cannot write the lock file ({err.strerror or err})") from None

    def release(self) -> None:
        """Remove the lock file and release the lock (a no-op when not held)."""
        if self._fd is None:
            return
        try:
            if _same_file(self._fd, self.path):
                self.path.unlink()
        except OSError:
            pass
        finally:
            os.close(self._fd)  # closing releases the flock
            self._fd = None

    def __enter__(self) -> OutputLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), os.stat(path))
    except FileNotFoundError:
        return False


def _read_fd(fd: int) -> str:
    try:
        return os.pread(fd, 4096, 0).decode(errors="replace")
    except OSError:
        return ""


def _describe_holder(text: str) -> str:
    """``pid 123 on host, since 2024-01-01 10:00:00`` from a lock file's content."""
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, since {holder['started']}"
    except (ValueError, KeyError, TypeError):
        return "a process that wrote no id"


# ---------------------------------------------------------------- the files of a run
def run_files(folder: Path) -> list[Path]:
    """The files and folders a training run writes that exist in ``folder`` (its lock and other files excluded)."""
    if not folder.is_dir():
        return []
    found = []
    for path in sorted(folder.iterdir()):
        name = path.name
        if (name in (CHECKPOINT_NAME, BEST_CHECKPOINT_NAME, LOG_FILE) or EXTRA_CHECKPOINT.match(name)
                or DETECTIONS_FILE.match(name) or (name in RUN_FOLDERS and path.is_dir())):
            found.append(path)
    return found


def describe_files(files: list[Path]) -> str:
    """``checkpoint.pth, log.txt (12 epochs), eval/`` for messages."""
    parts = []
    for path in files:
        if path.is_dir():
            parts.append(f"{path.name}/")
        elif path.name == LOG_FILE:
            lines = _count_lines(path)
            parts.append(f"{path.name} ({lines} epoch{'' if lines == 1 else 's'})")
        else:
            parts.append(path.name)
    return ", ".join(parts)


def _count_lines(path: Path) -> int:
    try:
        with path.open("rb") as f:
            return sum(1 for line in f if line.strip())
    except OSError:
        return 0


def _logged_epochs(folder: Path) -> list[int]:
    epochs = []
    try:
        lines = (folder / LOG_FILE).read_text(errors="replace").splitlines()
    except OSError:
        return []
    for line in lines:
        try:
            epochs.append(int(json.loads(line)["epoch"]))
        except (ValueError, KeyError, TypeError):
            continue
    return epochs


def _extra_checkpoints(folder: Path) -> list[Path]:
    """``checkpointNNNN.pth`` files of ``folder``, highest epoch first."""
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := EXTRA_CHECKPOINT.match(p.name)) and p.is_file()]
    return [p for _, p in sorted(found, reverse=True)]


def newest_valid_checkpoint(folder: Path) -> tuple[Path, dict[str, Any]] | None:
    """``(path, loaded checkpoint)`` of the newest checkpoint in ``folder`` that can continue its run, or None.

    Candidates: ``checkpoint.pth`` (rewritten every epoch), then ``checkpointNNNN.pth`` from the highest
    epoch down. A candidate must load (``weights_only``), hold a training state and only finite values;
    the others are skipped with a warning naming the file and why.
    """
    candidates = [folder / CHECKPOINT_NAME, *_extra_checkpoints(folder)]
    for path in candidates:
        if not path.is_file():
            continue
        try:
            checkpoint = load_checkpoint(path)
        except Exception as err:  # any file that does not load is not a candidate
            log.warning("--resume auto: skipping %s: %s", path, " ".join(str(err).split()) or type(err).__name__)
            continue
        problem = resume_problem(checkpoint)
        if problem:
            log.warning("--resume auto: skipping %s: %s", path, problem)
            continue
        return path, checkpoint
    return None


# ---------------------------------------------------------------- claiming the folder
@dataclass
class RunDirectory:
    """The output folder a run holds (None: the run writes nothing) and what it resumes from.

    ``resume`` is ``cfg.resume`` with ``auto`` resolved: a checkpoint path/URL, or ``""`` for a fresh
    start. ``checkpoint`` is that checkpoint when already loaded (by ``--resume auto``), else None.
    """

    path: Path | None
    resume: str
    checkpoint: dict[str, Any] | None = None


@contextmanager
def claim_output_dir(cfg: DETRConfig) -> Iterator[RunDirectory]:
    """Hold ``cfg.output_dir`` for a run (created, locked by the main process), decide what it resumes from.

    Refuses (``OutputError``) a folder another run holds, and a folder holding an earlier run that this
    one neither continues nor ``--overwrite``-s; with ``--overwrite`` removes the earlier run's files.
    An evaluation (``cfg.eval``) only takes the lock and resolves ``--resume auto``. Under ``torchrun``
    the main process decides and the others follow.
    """
    output_dir = prepare_output_dir(cfg.output_dir)
    lock = OutputLock(output_dir) if output_dir is not None and du.is_main_process() else None
    with lock or nullcontext():
        directory = RunDirectory(path=output_dir, resume=cfg.resume)
        if lock is not None:
            directory = _decide_start(cfg, output_dir)
        directory.resume = du.broadcast_object(directory.resume)
        yield directory


def _decide_start(cfg: DETRConfig, output_dir: Path) -> RunDirectory:
    """The main process's half of :func:`claim_output_dir` (the lock is held)."""
    partial = remove_partial_files(output_dir) + remove_partial_files(output_dir / EVAL_DIR)
    if partial:
        log.info("removed %d partial file(s) left by an interrupted save in %s: %s", len(partial), output_dir,
                 ", ".join(p.name for p in partial))
    if cfg.resume == RESUME_AUTO:
        return _resume_auto(output_dir)
    files = run_files(output_dir)
    if cfg.eval or not files:
        return RunDirectory(path=output_dir, resume=cfg.resume)
    source = _local_path(cfg.resume)
    continues = source is not None and source.parent.resolve() == output_dir.resolve()
    if continues and not cfg.overwrite:
        _refuse_rewind(source, output_dir)
        return RunDirectory(path=output_dir, resume=cfg.resume)
    if not cfg.overwrite:
        resumed = f" (--resume {cfg.resume} is not one of its checkpoints)" if cfg.resume else ""
        raise OutputError(f"--output_dir {output_dir} holds an earlier run{resumed}: {describe_files(files)}. Continue "
                          "it with --resume auto, choose another --output_dir, or replace it with --overwrite")
    _replace_earlier_run(cfg, output_dir, files)
    return RunDirectory(path=output_dir, resume=cfg.resume)


def _resume_auto(output_dir: Path) -> RunDirectory:
    found = newest_valid_checkpoint(output_dir)
    if found is None:
        unusable = [p.name for p in run_files(output_dir) if p.name == CHECKPOINT_NAME or EXTRA_CHECKPOINT.match(p.name)]
        if unusable:
            log.warning("--resume auto: no usable checkpoint in %s (%s): starting afresh", output_dir,
                        ", ".join(unusable))
        else:
            log.info("--resume auto: no checkpoint in %s yet: starting afresh", output_dir)
        return RunDirectory(path=output_dir, resume="")
    path, checkpoint = found
    log.info("--resume auto: continuing from %s (epoch %d)", path, int(checkpoint["epoch"]))
    return RunDirectory(path=output_dir, resume=str(path), checkpoint=checkpoint)


def _refuse_rewind(source: Path, output_dir: Path) -> None:
    """``--resume`` of an older checkpoint of the folder's run would replace later epochs: only with --overwrite."""
    epoch = checkpoint_epoch(source)
    if epoch is None:
        return  # not readable: resuming reports it
    newer = _logged_epochs(output_dir)
    main = output_dir / CHECKPOINT_NAME
    if main.is_file() and not main.samefile(source):
        newer.append(checkpoint_epoch(main) or -1)
    newest = max(newer, default=-1)
    if newest > epoch:
        raise OutputError(
            f"--resume {source} is epoch {epoch}, but {output_dir} holds its run up to epoch {newest}: resuming would "
            f"replace the later epochs. Continue from the newest with --resume auto, or go back to epoch {epoch} with "
            "--overwrite")


def _replace_earlier_run(cfg: DETRConfig, output_dir: Path, files: list[Path]) -> None:
    """``--overwrite``: remove the earlier run's files, except the files this run reads (its start weights)."""
    import shutil

    inputs = {p.resolve() for p in map(_local_path, (cfg.resume, cfg.pretrained, cfg.frozen_weights,
                                                     cfg.backbone_weights)) if p is not None and p.exists()}
    replaced = [p for p in files if p.resolve() not in inputs and not any(p.resolve() in i.parents for i in inputs)]
    if not replaced:
        return
    log.warning("--overwrite: replacing the earlier run in %s: removing %s", output_dir, describe_files(replaced))
    for path in replaced:
        try:
            if path.is_dir():
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError as err:
            raise OutputError(f"--overwrite: cannot remove {path}: {err.strerror or err}") from None


def _local_path(value: str | None) -> Path | None:
    """``value`` as a local path when it names one (not empty, not a URL, not a keyword like ``none``)."""
    if not value or value.startswith(("http://", "https://")) or value in ("none", "imagenet", RESUME_AUTO):
        return None
    return Path(value)


@contextmanager
def output_errors(folder: Path | None) -> Iterator[None]:
    """Turn an ``OSError`` about a file inside ``folder`` (disk full, read-only, permission denied while
    writing the run's outputs) into an ``OutputError`` naming the file; other errors pass unchanged."""
    try:
        yield
    except OSError as err:
        if isinstance(err, OutputError) or folder is None or not err.filename:
            raise
        path = Path(os.fsdecode(err.filename)).absolute()
        if folder.absolute() not in path.parents:
            raise
        raise OutputError(f"{path}: cannot write: {err.strerror or err}") from None
