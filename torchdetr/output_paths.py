"""Where a command may write: never onto its inputs, never over earlier work unless asked, and an
operating-system failure as one line naming the path.

Every command that writes files (``detr predict``, ``export``, ``visualize``, ``plot``, ``data convert``,
``data synth``, ``data stats``, ``data check --json``, ``eval``, ``train``) goes through these checks
before it writes anything:

* :func:`refuse_inputs` — an output (a file, or a folder the command writes files into) must not be,
  contain, or lie inside one of the command's inputs. Paths are compared after resolving symbolic links
  (``Path.resolve``) and, for existing files, by identity (``os.path.samefile``: hard links too).
* :func:`refuse_earlier_work` — files a command would replace (an earlier prediction, a dataset) are
  refused unless ``--overwrite``.
* :func:`make_output_folder` — creates an output folder, or says in one line why it cannot (a file is in
  the way, permission denied, read-only file system, disk full).

The files themselves are written through :mod:`torchdetr.atomic_write` (a temporary file renamed into
place; removed on failure), whose errors name the file too; bulk files that need no rename (the images
of a dataset being written) go through :func:`writing`, which removes a partial file on failure. All
refusals are :class:`~torchdetr.errors.OutputError` (printed as one line by ``detr``).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from .errors import OutputError, UserError

__all__ = ["make_output_folder", "refuse_earlier_work", "refuse_inputs", "refuse_non_empty_folder", "resolved", "writing"]

StrPath = str | os.PathLike


def resolved(path: StrPath) -> Path:
    """``path`` absolute, with ``~`` expanded and symbolic links resolved (also for a path that does not exist yet)."""
    return Path(path).expanduser().resolve()


def _same_file(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.is_file() and b.is_file() and os.path.samefile(a, b)
    except OSError:
        return False


def _overlap(output: Path, folder: bool, source: Path) -> str | None:
    """How ``output`` (a file, or a ``folder`` the command writes into) collides with the input ``source``."""
    source_is_folder = source.is_dir()
    if _same_file(output, source):
        return f"is the input {'folder' if source_is_folder else 'file'} {source}"
    if source_is_folder and output.is_relative_to(source):
        return f"is inside the input folder {source}"
    if folder and source.is_relative_to(output):
        return f"contains the input {'folder' if source_is_folder else 'file'} {source}"
    return None


def refuse_inputs(output: StrPath, inputs: Iterable[StrPath | None], *, what: str, folder: bool = False) -> Path:
    """Refuse an ``output`` that would write onto one of ``inputs``; return it resolved.

    Args:
        output: the file the command writes, or (``folder=True``) a folder it writes files into.
        inputs: every file or folder the command reads (a folder stands for every file under it). ``None``
            and paths that do not exist (official model names, URLs) are skipped.
        what: how the message names the output, e.g. ``"--output runs/pred"``.
        folder: ``output`` is a folder: it must neither contain an input nor lie inside an input folder.
            A file output must not be an input file nor lie inside an input folder.

    Raises:
        OutputError: one line naming the output and the input it would overwrite.
    """
    target = resolved(output)
    for item in inputs:
        if item is None or str(item) == "":
            continue
        source = resolved(item)
        if not source.exists():
            continue
        relation = _overlap(target, folder, source)
        if relation is not None:
            raise OutputError(f"{what} {relation}: a command never writes onto its inputs; choose an output "
                              "location outside them")
    return target


def refuse_earlier_work(existing: Iterable[StrPath], *, what: str, overwrite: bool) -> None:
    """Refuse to replace files that exist already (``existing``: files, or folders that count when not
    empty) unless ``overwrite``; ``what`` names the output in the message (``"--out data/shapes"``)."""
    if overwrite:
        return
    found = []
    for item in existing:
        path = Path(item)
        if path.is_dir():
            if next(path.iterdir(), None) is not None:
                found.append(f"{path.name}/")
        elif path.exists() or path.is_symlink():
            found.append(path.name)
    if found:
        shown = ", ".join(found[:5]) + (" …" if len(found) > 5 else "")
        raise OutputError(f"{what} already holds {shown}: choose another location, or replace them with --overwrite")


def refuse_non_empty_folder(folder: StrPath, *, what: str, overwrite: bool) -> None:
    """Refuse a ``folder`` that exists and holds anything, unless ``overwrite`` (a file in its place is refused too)."""
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} is a file, not a folder: choose a folder")
    if path.is_dir() and not overwrite and next(path.iterdir(), None) is not None:
        raise OutputError(f"{what} is not empty: choose a new or empty folder, or replace its files with --overwrite")


def make_output_folder(folder: StrPath, *, what: str) -> Path:
    """Create ``folder`` (and its parents) for writing; return it.

    Raises:
        OutputError: a file is in the way, or the folder cannot be created or written (permission denied,
            read-only file system, disk full), naming ``what`` and the reason.
    """
    path = Path(folder)
    if path.exists() and not path.is_dir():
        raise OutputError(f"{what} is a file, not a folder: choose a folder")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        blocker = next((p for p in path.parents if p.exists() and not p.is_dir()), None)
        reason = f"{blocker} is a file" if blocker is not None else (err.strerror or str(err))
        raise OutputError(f"{what}: cannot create the folder ({reason})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise OutputError(f"{what}: cannot write there (permission denied)")
    return path


@contextmanager
def writing(path: StrPath, *, what: str = "file") -> Iterator[Path]:
    """Write ``path`` inside the block. Any failure or interruption removes the partial file; an
    operating-system failure (disk full, read-only, permission denied) becomes an ``OutputError`` naming it.

    For files not worth an atomic rename, such as the many images of a dataset being written (see
    :mod:`torchdetr.atomic_write` for the others).
    """
    path = Path(path)
    try:
        yield path
    except BaseException as err:
        try:
            path.unlink(missing_ok=True)
        except OSError:
            pass
        if isinstance(err, OSError) and not isinstance(err, UserError) and _about(err, path):
            raise OutputError(f"{path}: could not write the {what}: {err.strerror or err}; the partial file was "
                              "removed") from None
        raise


def _about(err: OSError, path: Path) -> bool:
    """Whether ``err`` is about writing ``path`` (its file or a folder above it), not about reading another file
    (``shutil`` names the source first and the target second: ``filename2``)."""
    named = [Path(os.fsdecode(name)).absolute() for name in (err.filename, err.filename2) if name]
    target = path.absolute()
    return not named or any(name == target or name in target.parents for name in named)
