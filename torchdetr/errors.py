"""The user-error types of torchdetr: a mistake in what the user gave us, not a bug.

``detr`` prints any ``UserError`` as one line (``detr COMMAND: error: MESSAGE``) with exit code 2;
every other exception is a bug and keeps its traceback. Each type also derives from the built-in
exception a Python caller would expect (``ValueError``, ``FileNotFoundError``, ``ConnectionError``),
so library users can catch either.

Messages name the file, field, option or value at fault and, where it helps, what to do.
"""

from __future__ import annotations

__all__ = [
    "ConfigError", "DataError", "DownloadError", "InputFileError", "MissingExtraError", "MissingFileError",
    "OutputError", "UserError",
]


class UserError(Exception):
    """Base class: an error caused by the user's input, printed as one line."""


class ConfigError(UserError, ValueError):
    """An option, flag or config-file value that cannot work (names the option and the value)."""


class DataError(UserError, ValueError):
    """A dataset, annotation file or image that is malformed (names the file and the entry)."""


class InputFileError(UserError, ValueError):
    """A file the user passed (checkpoint, exported model, weights) that is not what was expected."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the user named does not exist."""


class DownloadError(UserError, ConnectionError):
    """Weights could not be downloaded (names the URL and says how to work offline)."""


class MissingExtraError(UserError, ModuleNotFoundError):
    """An optional feature whose extra is not installed (names the ``pip install 'torchdetr[EXTRA]'``)."""


class OutputError(UserError, OSError):
    """An output location that cannot be written or would overwrite an input or an earlier run."""
