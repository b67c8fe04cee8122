"""Where the annotation files and images of a COCO-format dataset folder are.

Two layouts are recognised:

* **generic** (what ``detr data convert`` writes)::

      DIR/images/...                          every split's images, ``file_name`` relative to it
                                              (or DIR/images/<split>/, when that folder exists)
      DIR/annotations/instances_train.json
      DIR/annotations/instances_val.json      (+ any other ``instances_<split>.json``)

* **COCO 2017** (what the original DETR reads)::

      DIR/train2017/  DIR/val2017/
      DIR/annotations/instances_train2017.json  DIR/annotations/instances_val2017.json
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

ANNOTATIONS_DIR = "annotations"
IMAGES_DIR = "images"
ANN_PREFIX = "instances_"
COCO2017_SUFFIX = "2017"
SPLIT_ORDER = ("train", "val", "test")


@dataclass(frozen=True)
class SplitFiles:
    """One split of a dataset folder: its annotation file and the folder its ``file_name`` values are relative to."""

    name: str
    ann_file: Path
    images_dir: Path


def generic_split_files(root: Path, split: str) -> SplitFiles:
    """The paths of ``split`` in the generic layout under ``root`` (they need not exist yet)."""
    return SplitFiles(split, root / ANNOTATIONS_DIR / f"{ANN_PREFIX}{split}.json", root / IMAGES_DIR)


def images_dir_for(ann_file: Path) -> Path | None:
    """Guess the image folder of an annotation file from the two layouts; ``None`` when neither applies.

    ``DIR/annotations/instances_val2017.json`` → ``DIR/val2017``, else ``DIR/images/val2017``, else ``DIR/images``
    (the first that exists).
    """
    ann_file = Path(ann_file)
    root = ann_file.parent.parent if ann_file.parent.name == ANNOTATIONS_DIR else ann_file.parent
    split = ann_file.stem.removeprefix(ANN_PREFIX)
    for candidate in (root / split, root / IMAGES_DIR / split, root / IMAGES_DIR):
        if candidate.is_dir():
            return candidate
    return None


def find_splits(root: Path) -> dict[str, SplitFiles]:
    """Every split found in the dataset folder ``root``, train/val/test first, in either layout.

    The split name drops the ``2017`` of COCO 2017 file names (``instances_val2017.json`` → ``val``).

    Raises:
        NotADirectoryError: ``root`` is not a folder.
        FileNotFoundError: no ``annotations/instances_*.json`` file, with the two expected layouts in the message.
    """
    root = Path(root)
    if not root.is_dir():
        raise NotADirectoryError(f"{root}: not a folder (expected a COCO dataset folder or an annotation .json file)")
    found: dict[str, SplitFiles] = {}
    for ann_file in sorted((root / ANNOTATIONS_DIR).glob(f"{ANN_PREFIX}*.json")):
        stem = ann_file.stem.removeprefix(ANN_PREFIX)
        split = stem.removesuffix(COCO2017_SUFFIX) or stem
        images_dir = next((d for d in (root / stem, root / IMAGES_DIR / split) if d.is_dir()), root / IMAGES_DIR)
        found.setdefault(split, SplitFiles(split, ann_file, images_dir))
    if not found:
        raise FileNotFoundError(
            f"{root}: no COCO annotation files; expected {ANNOTATIONS_DIR}/{ANN_PREFIX}train.json + {IMAGES_DIR}/ "
            f"(generic layout) or {ANNOTATIONS_DIR}/{ANN_PREFIX}train2017.json + train2017/ (COCO 2017 layout)"
        )
    rank = {name: i for i, name in enumerate(SPLIT_ORDER)}
    return dict(sorted(found.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0])))
