"""Files written so that no crash and no failure leaves a partial or mixed file behind.

Every write goes to a new temporary file beside its target (``.NAME.PID-RANDOM.tmp``: a unique name,
so concurrent writers never share one), which is flushed to disk (``fsync``) and then renamed over the
target (``os.replace``, atomic on POSIX and Windows); the folder is synced last so that the rename
itself survives a power cut. A target therefore holds either its old or its new content. On any
failure the temporary file is removed and the target keeps its old content; an operating-system
failure (disk full, quota, file too large, read-only file system, permission denied) becomes an
``OutputError`` naming the target and the reason. A process killed while writing leaves only a
temporary file, which :func:`remove_partial_files` deletes later (by whoever owns the folder).
"""

from __future__ import annotations

import errno
import os
import re
import secrets
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

from .errors import OutputError, UserError

__all__ = ["TEMPORARY_FILE", "fsync_directory", "remove_partial_files", "replace_atomic", "write_atomic"]

TEMPORARY_FILE = re.compile(r"^\..+\.\d+-[0-9a-f]{8}\.tmp$")  # ``.NAME.PID-RANDOM.tmp``
NEW_FILE_MODE = 0o666  # before the umask, as open() creates files
TEMPORARY_NAME_TRIES = 100
# torch.save writing to a path reports a failed write as a RuntimeError of its C++ stream writer
TORCH_WRITE_FAILURE = ("PytorchStreamWriter", "inline_container")


def write_atomic(path: str | Path, write: Callable[[BinaryIO], Any], *, copies: Sequence[str | Path] = (),
                 what: str = "file") -> Path:
    """Write ``path`` through ``write(f)`` (``f``: a binary file), atomically and durably.

    ``copies`` (paths in the same folder) get the same content, renamed into place before ``path``,
    which is replaced last. ``what`` names the file in error messages ("checkpoint", "log").
    """
    path = Path(path)
    temporary: list[Path] = []
    recorder: _RecordingFile | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary_file(path)
        temporary.append(tmp)
        with tmp.open("wb") as raw:
            recorder = _RecordingFile(raw)
            write(recorder)
            raw.flush()
            os.fsync(raw.fileno())
        for copy in map(Path, copies):
            copy_tmp = _new_temporary_file(copy)
            temporary.append(copy_tmp)
            shutil.copyfile(tmp, copy_tmp)
            _fsync_file(copy_tmp)
            os.replace(copy_tmp, copy)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as err:
        _remove(temporary)
        cause = recorder.error if recorder is not None and recorder.error is not None else err
        _raise_output_error(cause, path, what)
        raise
    return path


def replace_atomic(path: str | Path, produce: Callable[[Path], Any], *, what: str = "file") -> Path:
    """Like :func:`write_atomic` for writers that need a file name: ``produce(tmp)`` writes the temporary
    file ``tmp`` (any way it likes), which is then synced and renamed over ``path``."""
    path = Path(path)
    temporary: list[Path] = []
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_temporary_file(path)
        temporary.append(tmp)
        produce(tmp)
        _fsync_file(tmp)
        os.replace(tmp, path)
        fsync_directory(path.parent)
    except BaseException as err:
        _remove(temporary)
        _raise_output_error(err, path, what)
        raise
    return path


def fsync_directory(folder: str | Path) -> None:
    """Flush a folder's entries (renames, new files) to disk; a no-op where folders cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # e.g. Windows
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on folders
        pass
    finally:
        os.close(fd)


def remove_partial_files(folder: str | Path) -> list[Path]:
    """Delete the temporary files killed writers left in ``folder`` (``.NAME.PID-RANDOM.tmp``); returns them.

    Only safe while no other process writes there (e.g. the caller holds the folder's lock).
    """
    folder = Path(folder)
    if not folder.is_dir():
        return []
    removed = [p for p in folder.iterdir() if TEMPORARY_FILE.match(p.name) and p.is_file()]
    for path in removed:
        path.unlink(missing_ok=True)
    return removed


class _RecordingFile:
    """A binary file that remembers the ``OSError`` a write raised: ``torch.save`` reports it as a
    RuntimeError of its own ("unexpected pos …") that no longer says the disk is full."""

    def __init__(self, raw: BinaryIO) -> None:
        self.raw = raw
        self.name = getattr(raw, "name", None)
        self.error: OSError | None = None

    def write(self, data: Any) -> int:
        try:
            return self.raw.write(data)
        except OSError as err:
            self.error = err
            raise

    def flush(self) -> None:
        self.raw.flush()


def _new_temporary_file(path: Path) -> Path:
    """A new, empty ``.NAME.PID-RANDOM.tmp`` beside ``path`` (created exclusively, with the usual permissions)."""
    for _ in range(TEMPORARY_NAME_TRIES):
        tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, NEW_FILE_MODE))
        except FileExistsError:
            continue
        return tmp
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _fsync_file(path: Path) -> None:
    with path.open("rb") as f:
        os.fsync(f.fileno())


def _remove(paths: list[Path]) -> None:
    for leftover in paths:
        try:
            leftover.unlink(missing_ok=True)
        except OSError:
            pass


def _raise_output_error(err: BaseException, path: Path, what: str) -> None:
    """Raise ``OutputError`` for a failed write (OS error, or torch's report of one); return for anything else."""
    if isinstance(err, UserError):
        return
    if isinstance(err, OSError):
        reason = err.strerror or str(err)
    elif isinstance(err, RuntimeError) and any(marker in str(err) for marker in TORCH_WRITE_FAILURE):
        reason = f"the write failed (disk full?): {str(err).splitlines()[0]}"
    else:
        return
    raise OutputError(f"{path}: could not write the {what}: {reason}; partial files were removed and the previous "
                      f"{what} (if any) is kept") from None
