"""``detr data convert|check|stats|synth`` through ``torchdetr.cli.main``: exit codes and outputs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from torchdetr.cli import main

from .test_io import _png_header as png_header
from .test_validate import mutated_files


def voc_folder(root: Path) -> Path:
    """Two VOC images (one box each) and one XML whose image is missing."""
    (root / "Annotations").mkdir(parents=True)
    (root / "JPEGImages").mkdir()
    for stem, cls in (("x", "cell"), ("y", "blob")):
        Image.new("RGB", (33, 21)).save(root / "JPEGImages" / f"{stem}.jpg")
        (root / "Annotations" / f"{stem}.xml").write_text(
            f"<annotation><filename>{stem}.jpg</filename><object><name>{cls}</name><bndbox><xmin>2</xmin><ymin>3</ymin>"
            "<xmax>12</xmax><ymax>20</ymax></bndbox></object></annotation>")
    (root / "Annotations" / "z.xml").write_text("<annotation><filename>z.jpg</filename></annotation>")
    return root


def coco_folder(root: Path, bbox: list[float]) -> Path:
    (root / "images").mkdir(parents=True)
    (root / "annotations").mkdir()
    Image.new("RGB", (20, 10)).save(root / "images" / "a.png")
    for split in ("train", "val"):
        data = {"images": [{"id": 1, "file_name": "a.png", "width": 20, "height": 10}],
                "annotations": [{"id": 1, "image_id": 1, "category_id": 1, "bbox": bbox, "area": 1, "iscrowd": 0}],
                "categories": [{"id": 1, "name": "thing"}]}
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(data))
    return root


def test_convert_then_check_and_stats(tmp_path, capsys):
    src = voc_folder(tmp_path / "voc")
    out = tmp_path / "coco"
    assert main(["data", "convert", "--from", "voc", str(src), "--out", str(out), "--val_fraction", "0.5", "--seed", "3"]) == 0
    printed = capsys.readouterr().out
    assert "1: blob, 2: cell" in printed and "num_classes 3" in printed
    assert "label_without_image" in printed and "Annotations/z.xml" in printed
    assert f"detr train --coco_path {out}" in printed
    report = json.loads((out / "conversion_report.json").read_text())
    assert report["num_classes"] == 3 and report["problem_counts"] == {"label_without_image": 1}
    assert main(["data", "stats", str(out), "--out", str(tmp_path / "s.png")]) == 0
    assert (tmp_path / "s.png").stat().st_size > 0
    assert "boxes per class" in capsys.readouterr().out


def test_convert_with_bad_arguments_exits_2(tmp_path, capsys):
    src = voc_folder(tmp_path / "voc")
    assert main(["data", "convert", "--from", "voc", str(src), "--out", str(tmp_path / "o"), "--val_fraction", "1.5"]) == 2
    assert "--val_fraction" in capsys.readouterr().err
    assert main(["data", "convert", "--from", "yolo", str(src), "--out", str(tmp_path / "o")]) == 2
    assert "classes.txt" in capsys.readouterr().err


@pytest.mark.parametrize(("bbox", "code", "word"), [
    ([1, 1, 5, 5], 0, "OK: no errors"),
    ([15, 1, 10, 5], 0, "box_partly_outside"),  # a warning only
    ([1, 1, -5, 5], 1, "bad_box_size"),
])
def test_check_exit_codes(tmp_path, capsys, bbox, code, word):
    root = coco_folder(tmp_path / "d", bbox)
    assert main(["data", "check", str(root), "--json", str(tmp_path / "r.json")]) == code
    assert word in capsys.readouterr().out
    assert json.loads((tmp_path / "r.json").read_text())["train"]["ok"] == (code == 0)
    assert main(["data", "check", str(root / "annotations" / "instances_val.json"), "--images", str(root / "images")]) == code


def test_malformed_values_are_reported_by_check_and_stats_without_traceback(tmp_path, capsys):
    root = coco_folder(tmp_path / "d", [1, 1, 5, 5])
    ann_file = root / "annotations" / "instances_train.json"
    data = json.loads(ann_file.read_text())
    data["annotations"][0]["image_id"] = [1]  # a list where an id belongs
    data["images"][0]["width"] = {"w": 20}
    ann_file.write_text(json.dumps(data))
    assert main(["data", "check", str(root)]) == 1
    out = capsys.readouterr().out
    assert "annotations[0] (id 1): image_id [1] is not in 'images'" in out and "'width' must be a positive number" in out
    assert main(["data", "stats", str(ann_file)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "annotations[0] (id 1): image_id [1]" in err and "detr data check" in err


def test_check_missing_path_exits_2(tmp_path, capsys):
    assert main(["data", "check", str(tmp_path / "nothing")]) == 2
    assert "nothing" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main(["data", "check", str(tmp_path / "empty")]) == 2


def test_synth_writes_a_dataset_that_checks(tmp_path, capsys):
    out = tmp_path / "synth"
    assert main(["data", "synth", "--out", str(out), "--num_train", "3", "--num_val", "2", "--seed", "1",
                 "--image_size", "64"]) == 0
    for split, count in (("train", 3), ("val", 2)):
        data = json.loads((out / "annotations" / f"instances_{split}.json").read_text())
        assert len(data["images"]) == count
        with Image.open(out / "images" / data["images"][0]["file_name"]) as image:
            assert image.size == (64, 64)
    capsys.readouterr()
    assert main(["data", "check", str(out)]) == 0
    assert main(["data", "synth", "--out", str(out), "--num_train", "-1"]) == 2
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert main(["data", "synth", "--out", str(out), "--num_train", "1", "--num_val", "1"]) == 2  # a dataset is there
    assert "--overwrite" in capsys.readouterr().err
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    assert main(["data", "synth", "--out", str(out), "--num_train", "1", "--num_val", "1", "--overwrite"]) == 0
    assert len(json.loads((out / "annotations" / "instances_train.json").read_text())["images"]) == 1


# ---------------------------------------------------------------- `detr data check` never raises (issue 10, item 11)
HOSTILE_IMAGE_PREFIXES = [b"", b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff\xe0", b"GIF89a", b"BM", b"II*\x00", b"RIFF"]


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(content=mutated_files(), header=st.sampled_from(HOSTILE_IMAGE_PREFIXES), body=st.binary(max_size=80),
       width=st.integers(0, 2**31 - 1), height=st.integers(0, 2**31 - 1), full=st.booleans())
def test_data_check_never_raises_on_any_annotation_file_or_image_header(tmp_path_factory, content, header, body, width,
                                                                         height, full):
    """Fuzzed annotation files and image files (random bytes after real magic numbers; PNG headers declaring any
    size, decompression bombs included) through ``detr data check``: exit code 0, 1 or 2, never an exception."""
    import io
    from contextlib import redirect_stderr, redirect_stdout

    root = tmp_path_factory.mktemp("fuzz")
    (root / "annotations").mkdir()
    (root / "images" / "b").mkdir(parents=True)
    (root / "annotations" / "instances_train.json").write_text(json.dumps(content))
    (root / "images" / "a.png").write_bytes(header + body)
    (root / "images" / "b" / "c.png").write_bytes(png_header(width, height))
    err = io.StringIO()
    with redirect_stdout(io.StringIO()), redirect_stderr(err):
        code = main(["data", "check", str(root), *(["--full"] if full else [])])
    assert code in (0, 1, 2) and "Traceback" not in err.getvalue()
    if code == 2:
        assert err.getvalue().count("\n") == 1
