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

Panoptic datasets (``annotations/panoptic_<stem>.json``, whose PNGs hold the segment ids) follow the same rule
for their images, and their PNG folder is the first existing one of ``annotations/panoptic_<stem>/`` (where
COCO's zip unpacks, and panopticapi's default), ``panoptic_<stem>/`` (the original DETR's layout),
``panoptic/<stem>/``, ``panoptic/<split>/`` and ``panoptic/`` (the generic layout, written by
``detr data synth --panoptic``)::

      DIR/images/...   DIR/panoptic/...   DIR/annotations/panoptic_train.json   DIR/annotations/panoptic_val.json

As in the original, the panoptic files may sit in another folder than the images
(``--coco_panoptic_path`` and ``--coco_path``): :func:`resolve_panoptic_split` takes both.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ..errors import DataError, MissingFileError

ANNOTATIONS_DIR = "annotations"
IMAGES_DIR = "images"
ANN_PREFIX = "instances_"
PANOPTIC_ANN_PREFIX = "panoptic_"
PANOPTIC_DIR = "panoptic"
COCO2017_SUFFIX = "2017"
SPLIT_ORDER = ("train", "val", "test")
MAX_LISTED_ENTRIES = 20  # folder entries shown when no split is found


@dataclass(frozen=True)
class SplitFiles:
    """One split of a dataset folder: its annotation file and the folder its ``file_name`` values are relative to."""

    name: str
    ann_file: Path
    images_dir: Path


def _stem(ann_file: Path) -> str:
    """``instances_val2017.json`` / ``panoptic_val2017.json`` → ``val2017``."""
    stem = Path(ann_file).stem
    for prefix in (ANN_PREFIX, PANOPTIC_ANN_PREFIX):
        if stem.startswith(prefix):
            return stem.removeprefix(prefix)
    return stem


def split_name(ann_file: Path) -> str:
    """``instances_val2017.json`` → ``val``; ``instances_train.json`` (or ``panoptic_train.json``) → ``train``."""
    stem = _stem(ann_file)
    return stem.removesuffix(COCO2017_SUFFIX) or stem


def _image_dir_candidates(root: Path, ann_file: Path) -> list[Path]:
    """The image folders an annotation file may use, most specific first (see the module docstring)."""
    stem = _stem(ann_file)
    split = split_name(ann_file)
    candidates = [root / stem] if stem != split else []
    candidates += [root / IMAGES_DIR / stem, root / IMAGES_DIR / split, root / IMAGES_DIR]
    return list(dict.fromkeys(candidates))


def _dataset_root(ann_file: Path) -> Path:
    ann_file = Path(ann_file)
    return ann_file.parent.parent if ann_file.parent.name == ANNOTATIONS_DIR else ann_file.parent


def images_dir_for(ann_file: Path, images_root: Path | None = None) -> Path | None:
    """The image folder of an annotation file by the layout rule; ``None`` when no candidate exists.

    ``images_root``: the folder that holds the images when it is not the annotation file's dataset folder.
    """
    root = _dataset_root(ann_file) if images_root is None else Path(images_root)
    return next((d for d in _image_dir_candidates(root, ann_file) if d.is_dir()), None)


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
    raise MissingFileError(
        f"no '{split}' split found in {root}; looked for the COCO 2017 layout: {split}{COCO2017_SUFFIX}/ and "
        f"{ANNOTATIONS_DIR}/{ANN_PREFIX}{split}{COCO2017_SUFFIX}.json; the generic layout: {IMAGES_DIR}/ (or "
        f"{IMAGES_DIR}/{split}/) and {ANNOTATIONS_DIR}/{ANN_PREFIX}{split}.json. {_folder_holds(root)}"
    )


def _folder_holds(root: Path) -> str:
    """``The folder holds: a/, b.json, ...`` (its first :data:`MAX_LISTED_ENTRIES` entries, sorted; folders end in /)."""
    present = sorted(p.name + ("/" if p.is_dir() else "") for p in root.iterdir())[:MAX_LISTED_ENTRIES]
    return f"The folder holds: {', '.join(present) or 'nothing'}"


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
            f"(generic layout) or {ANNOTATIONS_DIR}/{ANN_PREFIX}train2017.json + train2017/ (COCO 2017 layout), or "
            f"for panoptic data {ANNOTATIONS_DIR}/{PANOPTIC_ANN_PREFIX}train.json + {PANOPTIC_DIR}/ + {IMAGES_DIR}/"
        )
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))


# ----------------------------------------------------------------------------------------------
# Panoptic datasets
# ----------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PanopticSplitFiles:
    """One split of a panoptic dataset: its annotation file, the folder of its segment PNGs and its image folder."""

    name: str
    ann_file: Path
    png_dir: Path
    images_dir: Path


def panoptic_png_dir_for(ann_file: Path) -> Path | None:
    """The PNG folder of a panoptic annotation file by the layout rule; ``None`` when no candidate exists."""
    ann_file = Path(ann_file)
    stem, split, root = _stem(ann_file), split_name(ann_file), _dataset_root(ann_file)
    candidates = [ann_file.with_suffix(""), root / f"{PANOPTIC_ANN_PREFIX}{stem}", root / PANOPTIC_DIR / stem,
                  root / PANOPTIC_DIR / split, root / PANOPTIC_DIR]
    return next((d for d in dict.fromkeys(candidates) if d.is_dir()), None)


def generic_panoptic_split_files(root: Path, split: str) -> PanopticSplitFiles:
    """The paths of ``split`` in the generic panoptic layout under ``root`` (they need not exist yet)."""
    return PanopticSplitFiles(split, root / ANNOTATIONS_DIR / f"{PANOPTIC_ANN_PREFIX}{split}.json",
                              root / PANOPTIC_DIR, root / IMAGES_DIR)


def resolve_panoptic_split(root: str | Path, split: str, images_root: str | Path | None = None) -> PanopticSplitFiles:
    """The annotation file, PNG folder and image folder of ``split`` in a panoptic dataset folder.

    ``annotations/panoptic_{split}2017.json`` (COCO 2017) is preferred to ``annotations/panoptic_{split}.json``
    (generic). The images are looked for under ``images_root`` (default ``root``) by the detection rule.

    Raises:
        MissingFileError: a folder does not exist, or no complete split was found; the message lists what was
            looked for and what the folder holds.
    """
    root = Path(root)
    images_root = root if images_root is None else Path(images_root)
    for folder in dict.fromkeys((root, images_root)):
        if not folder.is_dir():
            raise MissingFileError(f"dataset folder not found: {folder}")
    annotations = root / ANNOTATIONS_DIR
    for ann_file in (annotations / f"{PANOPTIC_ANN_PREFIX}{split}{COCO2017_SUFFIX}.json",
                     annotations / f"{PANOPTIC_ANN_PREFIX}{split}.json"):
        if not ann_file.is_file():
            continue
        png_dir, images_dir = panoptic_png_dir_for(ann_file), images_dir_for(ann_file, images_root)
        if png_dir is None:
            raise MissingFileError(f"{ann_file}: no folder of segment PNGs; looked for {ann_file.with_suffix('')}/, "
                                   f"{root / (PANOPTIC_ANN_PREFIX + _stem(ann_file))}/ and {root / PANOPTIC_DIR}/")
        if images_dir is None:
            raise MissingFileError(f"{ann_file}: no image folder under {images_root}; looked for "
                                   f"{', '.join(str(d) + '/' for d in _image_dir_candidates(images_root, ann_file))}")
        return PanopticSplitFiles(split, ann_file, png_dir, images_dir)
    raise MissingFileError(
        f"no '{split}' panoptic split found in {root}; looked for {ANNOTATIONS_DIR}/{PANOPTIC_ANN_PREFIX}{split}"
        f"{COCO2017_SUFFIX}.json (COCO 2017 layout, PNGs in {PANOPTIC_ANN_PREFIX}{split}{COCO2017_SUFFIX}/) and "
        f"{ANNOTATIONS_DIR}/{PANOPTIC_ANN_PREFIX}{split}.json (generic layout, PNGs in {PANOPTIC_DIR}/). "
        f"{_folder_holds(root)}"
    )


def find_panoptic_splits(root: Path) -> dict[str, PanopticSplitFiles]:
    """Every panoptic split (``annotations/panoptic_*.json``) of the dataset folder ``root``, train/val/test first.

    A split whose PNG or image folder does not exist gets ``panoptic/`` or ``images/`` (the check reports them).
    Returns an empty dict when there is none.
    """
    root = Path(root)
    found: dict[str, PanopticSplitFiles] = {}
    ann_files = sorted((root / ANNOTATIONS_DIR).glob(f"{PANOPTIC_ANN_PREFIX}*.json"),
                       key=lambda p: (split_name(p), not p.stem.endswith(COCO2017_SUFFIX), p.name))
    for ann_file in ann_files:
        name = split_name(ann_file)
        found.setdefault(name, PanopticSplitFiles(name, ann_file, panoptic_png_dir_for(ann_file) or root / PANOPTIC_DIR,
                                                  images_dir_for(ann_file) or root / IMAGES_DIR))
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
