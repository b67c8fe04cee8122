"""Class-name files: ``classes.txt`` / ``obj.names`` (one name a line) and YOLO ``data.yaml`` (``names:``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import yaml

from ...errors import DataError, MissingFileError

YAML_SUFFIXES = (".yaml", ".yml")


def validate_class_names(names: Sequence[str], source: str) -> list[str]:
    """Return ``names`` as a list after checking there is at least one, none is empty and none repeats.

    Raises:
        DataError: naming ``source`` and the offending name or line.
    """
    names = [str(n).strip() for n in names]
    if not names:
        raise DataError(f"{source}: no class names")
    for i, name in enumerate(names):
        if not name:
            raise DataError(f"{source}: class {i} has an empty name")
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise DataError(f"{source}: class name {name!r} appears twice (classes {seen[name]} and {i})")
        seen[name] = i
    return names


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"{path}: cannot read the class-name file ({err})") from None


def _names_from_yaml(path: Path) -> list[str]:
    try:
        content = yaml.safe_load(_read_text(path))
    except yaml.YAMLError as err:
        raise DataError(f"{path}: not valid YAML ({err})") from err
    names = content.get("names") if isinstance(content, dict) else None
    if isinstance(names, dict):
        try:
            by_index = {int(k): v for k, v in names.items()}
        except (TypeError, ValueError) as err:
            raise DataError(f"{path}: 'names' keys must be class indices 0..N-1, got {list(names)}") from err
        if sorted(by_index) != list(range(len(by_index))):
            raise DataError(f"{path}: 'names' keys must be the class indices 0..{len(by_index) - 1}, got {sorted(by_index)}")
        names = [by_index[i] for i in range(len(by_index))]
    if not isinstance(names, list):
        raise DataError(f"{path}: no 'names' list (expected e.g. names: [cat, dog] or names: {{0: cat, 1: dog}})")
    declared = content.get("nc")
    if declared is not None and declared != len(names):
        raise DataError(f"{path}: nc is {declared} but 'names' has {len(names)} entries")
    return names


def read_class_names(path: Path) -> list[str]:
    """The ordered class names in ``path``: a YAML file with ``names``, or a text file with one name a line.

    Blank lines of a text file are skipped. The position in the file is the YOLO class index.

    Raises:
        MissingFileError, DataError: with the file name in the message.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingFileError(f"{path}: class-name file not found")
    if path.suffix.lower() in YAML_SUFFIXES:
        names = _names_from_yaml(path)
    else:
        names = [line for line in _read_text(path).splitlines() if line.strip()]
    return validate_class_names(names, str(path))
