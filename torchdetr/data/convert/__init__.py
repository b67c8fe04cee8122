"""Convert Pascal VOC, YOLO and LabelMe datasets into a checked COCO dataset folder.

``convert_dataset("voc", "my_voc", "my_coco")`` reads the source with the format's reader
(:mod:`.voc`, :mod:`.yolo`, :mod:`.labelme`: parsing and coordinate conventions), then
:mod:`.writer` assigns category ids, clips and filters boxes, splits train/val, writes
``images/``, ``annotations/instances_{train,val}.json`` and ``conversion_report.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from ...errors import ConfigError, DataError, MissingFileError, OutputError
from ...output_paths import make_output_folder, refuse_inputs, refuse_non_empty_folder
from ..io import IMAGE_EXTENSIONS, image_suffixes
from ..layout import ANN_PREFIX, ANNOTATIONS_DIR, SplitFiles, find_splits, generic_split_files, images_dir_for
from .classes import read_class_names, validate_class_names
from .labelme import read_labelme
from .records import SourceDataset
from .split import check_val_fraction
from .voc import read_voc
from .writer import REPORT_FILE, ConversionReport, write_coco_dataset
from .yolo import read_yolo

FORMATS: tuple[str, ...] = ("voc", "yolo", "labelme")

__all__ = [
    "FORMATS",
    "IMAGE_EXTENSIONS",
    "ConversionReport",
    "SplitFiles",
    "convert_dataset",
    "find_splits",
    "generic_split_files",
    "images_dir_for",
    "read_class_names",
]


def _reader(fmt: str, classes: list[str] | None) -> Callable[[Path], SourceDataset]:
    if fmt == "voc":
        return read_voc
    if fmt == "yolo":
        return lambda src: read_yolo(src, classes)
    if fmt == "labelme":
        return read_labelme
    raise ConfigError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")


def _check_out_dir(src: Path, out: Path, overwrite: bool, classes: object) -> None:
    """``out`` must not overlap ``src`` or the class-name file, nor (without ``overwrite``) hold anything."""
    refuse_inputs(out, [src, classes if isinstance(classes, (str, Path)) else None], what=f"--out {out}", folder=True)
    refuse_non_empty_folder(out, what=f"--out {out}", overwrite=overwrite)


def convert_dataset(
    fmt: str,
    src: Path | str,
    out: Path | str,
    *,
    val_fraction: float = 0.2,
    seed: int = 0,
    classes: Path | str | Sequence[str] | None = None,
    copy: bool = False,
    overwrite: bool = False,
) -> ConversionReport:
    """Convert the ``fmt`` dataset in ``src`` into a generic COCO folder ``out``; return the report.

    Args:
        fmt: ``"voc"``, ``"yolo"`` or ``"labelme"``.
        src: the source folder.
        out: the output folder; must be new or empty (or ``overwrite``), and outside ``src``.
        val_fraction: share of images put in ``val`` when the source does not define the split itself.
        seed: changes which images the hash split puts in ``val``.
        classes: class names in category-id order (a file as read by :func:`.classes.read_class_names`,
            or a list). Boxes of other classes are dropped and reported. Default: the source's own list
            (YOLO), else the sorted names found.
        copy: copy the images instead of hard-linking them.
        overwrite: allow a non-empty ``out``: its annotation files and report are replaced, and images of
            the same names overwritten.

    Raises:
        MissingFileError: ``src`` (or the class-name file) does not exist.
        ConfigError: an unknown format or a ``val_fraction`` outside ``[0, 1)``.
        OutputError: ``out`` is inside ``src`` (or contains it or the class-name file), is a file, is not empty
            without ``overwrite``, or cannot be written (naming the file; see :mod:`torchdetr.output_paths`).
        DataError: a malformed class-name file, or a source with no usable images;
        each with the path or value at fault in the message.
    """
    src, out = Path(src).expanduser().resolve(), Path(out).expanduser().resolve()
    if not src.is_dir():
        raise MissingFileError(f"{src}: source folder not found")
    _check_out_dir(src, out, overwrite, classes)
    check_val_fraction(val_fraction)
    if isinstance(classes, (str, Path)):
        class_names: list[str] | None = read_class_names(Path(classes))
    else:
        class_names = validate_class_names(classes, "--classes") if classes is not None else None
    source = _reader(fmt, class_names)(src)
    if not source.images:
        dropped = f" ({len(source.problems)} problems, e.g. {source.problems[0].detail})" if source.problems else ""
        raise DataError(f"{src}: no usable images found for format {fmt!r}{dropped}; "
                        f"recognised image files end in {image_suffixes()}")
    make_output_folder(out, what=f"--out {out}")
    for stale in [*out.glob(f"{ANNOTATIONS_DIR}/{ANN_PREFIX}*.json"), out / REPORT_FILE]:  # from an earlier run
        try:
            stale.unlink(missing_ok=True)
        except OSError as err:
            raise OutputError(f"--overwrite: cannot remove {stale}: {err.strerror or err}") from None
    return write_coco_dataset(source, out, fmt=fmt, src=src, class_names=class_names,
                              val_fraction=val_fraction, seed=seed, copy=copy)
