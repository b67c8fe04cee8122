"""Where the annotation files and images of a COCO-format dataset folder are: one rule for every command.

Datasets (``detr train``/``eval``), ``detr data check``, ``detr data stats`` and ``detr data convert`` all
resolve folders here. Two layouts are recognised:

* **generic** (what ``detr data convert`` and ``detr data synth`` write)::

      DIR/images/...                          every split's images, ``file_name`` relative to it
                                              (or DIR/images/<split>/, when that folder exists)
      DIR/annotations/instances_train.json
      DIR/annotations/instances_val.json      (+ any other ``instances_<split>.json``)

* **COCO 2017** (what the original DETR reads)::

      DIR/train2017/  DIR/val2017/            (or DIR/images/train2017/, as Ultralytics lays COCO out)
      DIR/annotations/instances_train2017.json  DIR/annotations/instances_val2017.json

The image folder of ``annotations/instances_<stem>.json`` (split = stem without ``2017``) is the first
existing one of ``<stem>/`` (COCO 2017 names only), ``images/<stem>/``, ``images/<split>/``, ``images/``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, MissingFileError

ANNOTATIONS_DIR = "annotations"
IMAGES_DIR = "images"
ANN_PREFIX = "instances_"
COCO2017_SUFFIX = "2017"
SPLIT_ORDER = ("train", "val", "test")
MAX_LISTED_ENTRIES = 20  # folder entries shown when no split is found


@dataclass(frozen=True)
class SplitFiles:
    """One split of a dataset folder: its annotation file and the folder its ``file_name`` values are relative to."""

    name: str
    ann_file: Path
    images_dir: Path


def split_name(ann_file: Path) -> str:
    """``instances_val2017.json`` → ``val``; ``instances_train.json`` → ``train``."""
    stem = Path(ann_file).stem.removeprefix(ANN_PREFIX)
    return stem.removesuffix(COCO2017_SUFFIX) or stem


def _image_dir_candidates(root: Path, ann_file: Path) -> list[Path]:
    """The image folders an annotation file may use, most specific first (see the module docstring)."""
    stem = Path(ann_file).stem.removeprefix(ANN_PREFIX)
    split = split_name(ann_file)
    candidates = [root / stem] if stem != split else []
    candidates += [root / IMAGES_DIR / stem, root / IMAGES_DIR / split, root / IMAGES_DIR]
    return list(dict.fromkeys(candidates))


def _dataset_root(ann_file: Path) -> Path:
    ann_file = Path(ann_file)
    return ann_file.parent.parent if ann_file.parent.name == ANNOTATIONS_DIR else ann_file.parent


def images_dir_for(ann_file: Path) -> Path | None:
    """The image folder of an annotation file by the layout rule; ``None`` when no candidate exists."""
    return next((d for d in _image_dir_candidates(_dataset_root(ann_file), ann_file) if d.is_dir()), None)


def generic_split_files(root: Path, split: str) -> SplitFiles:
    """The paths of ``split`` in the generic layout under ``root`` (they need not exist yet)."""
    return SplitFiles(split, root / ANNOTATIONS_DIR / f"{ANN_PREFIX}{split}.json", root / IMAGES_DIR)


def resolve_split(root: str | Path, split: str) -> SplitFiles:
    """The annotation file and image folder of ``split`` ("train", "val", ...) in a dataset folder.

    ``annotations/instances_{split}2017.json`` (COCO 2017) is preferred to ``annotations/instances_{split}.json``
    (generic); the image folder follows the module's rule and must exist.

    Raises:
        MissingFileError: ``root`` does not exist, or neither layout is complete; the message lists what was
            looked for and what the folder holds.
    """
    root = Path(root)
    if not root.is_dir():
        raise MissingFileError(f"dataset folder not found: {root}")
    annotations = root / ANNOTATIONS_DIR
    for ann_file in (annotations / f"{ANN_PREFIX}{split}{COCO2017_SUFFIX}.json", annotations / f"{ANN_PREFIX}{split}.json"):
        images_dir = images_dir_for(ann_file)
        if ann_file.is_file() and images_dir is not None:
            return SplitFiles(split, ann_file, images_dir)
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:MAX_LISTED_ENTRIES]
    raise MissingFileError(
        f"no '{split}' split found in {root}; looked for the COCO 2017 layout: {split}{COCO2017_SUFFIX}/ and "
        f"{ANNOTATIONS_DIR}/{ANN_PREFIX}{split}{COCO2017_SUFFIX}.json; the generic layout: {IMAGES_DIR}/ (or "
        f"{IMAGES_DIR}/{split}/) and {ANNOTATIONS_DIR}/{ANN_PREFIX}{split}.json. The folder holds: "
        f"{', '.join(present) or 'nothing'}"
    )


def resolve_coco_layout(root: str | Path, image_set: str) -> tuple[Path, Path]:
    """``(image folder, annotation file)`` of ``image_set`` in a dataset folder (:func:`resolve_split`)."""
    files = resolve_split(root, image_set)
    return files.images_dir, files.ann_file


def find_splits(root: Path) -> dict[str, SplitFiles]:
    """Every split found in the dataset folder ``root``, train/val/test first, in either layout.

    The split name drops the ``2017`` of COCO 2017 file names (``instances_val2017.json`` → ``val``); when
    a split has both, the COCO 2017 file wins (as in :func:`resolve_split`). A split whose image folder
    does not exist gets ``images/`` (the check then reports it missing).

    Raises:
        MissingFileError: ``root`` does not exist.
        DataError: ``root`` is not a folder, or holds no ``annotations/instances_*.json`` (the message shows
            the two layouts).
    """
    root = Path(root)
    if not root.exists():
        raise MissingFileError(f"{root}: no such file or folder")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder (expected a COCO dataset folder or an annotation .json file)")
    found: dict[str, SplitFiles] = {}
    ann_files = sorted((root / ANNOTATIONS_DIR).glob(f"{ANN_PREFIX}*.json"),
                       key=lambda p: (split_name(p), not p.stem.endswith(COCO2017_SUFFIX), p.name))
    for ann_file in ann_files:
        images_dir = images_dir_for(ann_file) or root / IMAGES_DIR
        found.setdefault(split_name(ann_file), SplitFiles(split_name(ann_file), ann_file, images_dir))
    if not found:
        raise DataError(
            f"{root}: no COCO annotation files; expected {ANNOTATIONS_DIR}/{ANN_PREFIX}train.json + {IMAGES_DIR}/ "
            f"(generic layout) or {ANNOTATIONS_DIR}/{ANN_PREFIX}train2017.json + train2017/ (COCO 2017 layout)"
        )
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
