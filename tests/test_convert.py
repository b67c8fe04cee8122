"""Converters: VOC / YOLO / LabelMe written by the tests from known COCO boxes, converted back and compared."""

from __future__ import annotations

import base64
import io
import json
import os
from pathlib import Path

import pytest
import yaml
from PIL import Image

from tests.conftest import DATA, require
from torchdetr.data.convert import convert_dataset, read_class_names
from torchdetr.data.convert.split import hash_split
from torchdetr.data.io import ORIENTATION_TAG, read_image_header
from torchdetr.errors import ConfigError, DataError, MissingFileError, OutputError

# Ground truth used by the writers below: file name → (width, height, mode, [(class, x, y, w, h), ...]).
# Odd sizes; boxes on integer pixels so VOC (integer indices) can represent them exactly.
GT: dict[str, tuple[int, int, str, list[tuple[str, float, float, float, float]]]] = {
    "a.jpg": (37, 23, "RGB", [("cat", 3, 4, 10, 7), ("dog", 20, 2, 16, 20)]),
    "b.png": (41, 29, "L", [("dog", 0, 0, 41, 29)]),  # touches all four borders
    "c.png": (25, 31, "RGBA", [("bird", 1, 2, 3, 4), ("cat", 10, 10, 15, 21), ("cat", 0, 5, 6, 6)]),
    "d.jpg": (30, 18, "RGB", []),  # an empty label file
}


def make_image(path: Path, width: int, height: int, mode: str = "RGB", exif_orientation: int | None = None) -> None:
    """A small image with some structure (so JPEG re-encoding is visible), optionally with an EXIF orientation."""
    path.parent.mkdir(parents=True, exist_ok=True)
    image = Image.new("RGB", (width, height), (200, 30, 30))
    image.paste((20, 200, 20), (0, 0, width // 3, height // 2))
    image = image.convert(mode)
    options = {}
    if exif_orientation is not None:
        exif = Image.Exif()
        exif[ORIENTATION_TAG] = exif_orientation
        options["exif"] = exif.tobytes()
    image.save(path, **options)


def write_voc(root: Path, gt=GT, *, sizes: bool = True) -> Path:
    """Devkit layout, boxes as 1-based inclusive indices: xmin = x + 1, xmax = x + w."""
    for name, (w, h, mode, boxes) in gt.items():
        make_image(root / "JPEGImages" / name, w, h, mode)
        objects = "".join(
            f"<object><name>{c}</name><difficult>0</difficult><bndbox><xmin>{x + 1:g}</xmin><ymin>{y + 1:g}</ymin>"
            f"<xmax>{x + bw:g}</xmax><ymax>{y + bh:g}</ymax></bndbox></object>" for c, x, y, bw, bh in boxes)
        size = f"<size><width>{w}</width><height>{h}</height><depth>3</depth></size>" if sizes else ""
        xml = f"<annotation><folder>JPEGImages</folder><filename>{name}</filename>{size}{objects}</annotation>"
        (root / "Annotations").mkdir(parents=True, exist_ok=True)
        (root / "Annotations" / f"{Path(name).stem}.xml").write_text(xml)
    return root


def write_yolo(root: Path, classes: list[str], gt=GT, *, sub: str = "") -> Path:
    """Ultralytics layout: images/<sub>/x.jpg + labels/<sub>/x.txt, normalised centre/size, classes.txt."""
    for name, (w, h, mode, boxes) in gt.items():
        make_image(root / "images" / sub / name, w, h, mode)
        lines = [f"{classes.index(c)} {(x + bw / 2) / w:.6f} {(y + bh / 2) / h:.6f} {bw / w:.6f} {bh / h:.6f}"
                 for c, x, y, bw, bh in boxes]
        label = root / "labels" / sub / f"{Path(name).stem}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + ("\n" if lines else ""))
    (root / "classes.txt").write_text("\n".join(classes) + "\n")
    return root


def write_labelme(root: Path, gt=GT) -> Path:
    """One JSON per image; rectangles given by two opposite corners (bottom-right first, to test ordering)."""
    for name, (w, h, mode, boxes) in gt.items():
        make_image(root / name, w, h, mode)
        shapes = [{"label": c, "points": [[x + bw, y + bh], [x, y]], "shape_type": "rectangle", "flags": {}}
                  for c, x, y, bw, bh in boxes]
        content = {"version": "5.4.1", "shapes": shapes, "imagePath": name, "imageData": None,
                   "imageWidth": w, "imageHeight": h}
        (root / f"{Path(name).stem}.json").write_text(json.dumps(content))
    return root


def load_output(out: Path) -> tuple[dict[str, dict], dict[int, str], dict[str, list[tuple[str, list[float]]]]]:
    """Merge every split: {file_name: image record}, {category id: name}, {file_name: [(class, bbox)]}."""
    images, cats, boxes = {}, {}, {}
    for ann_file in sorted((out / "annotations").glob("instances_*.json")):
        data = json.loads(ann_file.read_text())
        cats.update({c["id"]: c["name"] for c in data["categories"]})
        by_id = {im["id"]: im for im in data["images"]}
        for im in data["images"]:
            images[im["file_name"]] = im
            boxes.setdefault(im["file_name"], [])
        for a in data["annotations"]:
            boxes[by_id[a["image_id"]]["file_name"]].append((cats[a["category_id"]], a["bbox"]))
    return images, cats, boxes


def assert_same_boxes(got: list[tuple[str, list[float]]], expected: list, tol: float) -> None:
    got = sorted(got, key=lambda b: (b[0], b[1]))
    expected = sorted(((c, [x, y, w, h]) for c, x, y, w, h in expected), key=lambda b: (b[0], b[1]))
    assert [c for c, _ in got] == [c for c, _ in expected]
    for (_, g), (_, e) in zip(got, expected):
        assert all(abs(a - b) <= tol for a, b in zip(g, e)), (g, e)


def problems(out: Path) -> list[dict]:
    return json.loads((out / "conversion_report.json").read_text())["problems"]


# --- round trips ---------------------------------------------------------------------------------
def test_voc_round_trip_is_exact(tmp_path):
    src = write_voc(tmp_path / "voc")
    report = convert_dataset("voc", src, tmp_path / "out")
    images, cats, boxes = load_output(tmp_path / "out")
    assert cats == {1: "bird", 2: "cat", 3: "dog"}  # sorted names → ids 1..K
    assert report.num_classes == 4
    assert set(images) == set(GT)
    for name, (w, h, _, expected) in GT.items():
        assert (images[name]["width"], images[name]["height"]) == (w, h)
        assert_same_boxes(boxes[name], expected, tol=0)  # integer VOC indices convert exactly
    kinds = {p["kind"] for p in problems(tmp_path / "out")}
    assert "clipped_box" not in kinds  # boxes touching the border are inside the image
    assert "image_without_labels" not in kinds  # d.jpg has an XML file with no object


def test_yolo_round_trip_within_a_pixel(tmp_path):
    classes = ["dog", "cat", "bird"]  # not sorted: YOLO's index order must be kept
    src = write_yolo(tmp_path / "yolo", classes)
    convert_dataset("yolo", src, tmp_path / "out")
    images, cats, boxes = load_output(tmp_path / "out")
    assert cats == {1: "dog", 2: "cat", 3: "bird"}
    for name, (w, h, _, expected) in GT.items():
        assert (images[name]["width"], images[name]["height"]) == (w, h)
        assert_same_boxes(boxes[name], expected, tol=1.0)
    assert all(0 <= b[0] and b[0] + b[2] <= images["b.png"]["width"] for _, b in boxes["b.png"])


def test_labelme_round_trip(tmp_path):
    src = write_labelme(tmp_path / "lm")
    convert_dataset("labelme", src, tmp_path / "out")
    images, cats, boxes = load_output(tmp_path / "out")
    assert sorted(cats.values()) == ["bird", "cat", "dog"]
    for name, (_, _, _, expected) in GT.items():
        assert_same_boxes(boxes[name], expected, tol=1e-6)


def test_images_are_hard_linked_or_copied_unchanged(tmp_path):
    src = write_voc(tmp_path / "voc")
    convert_dataset("voc", src, tmp_path / "out")
    convert_dataset("voc", src, tmp_path / "copied", copy=True)
    for name in GT:
        original = (src / "JPEGImages" / name).read_bytes()
        assert (tmp_path / "out" / "images" / name).read_bytes() == original
        assert (tmp_path / "copied" / "images" / name).read_bytes() == original
        assert not os.path.samefile(tmp_path / "copied" / "images" / name, src / "JPEGImages" / name)


# --- edge cases ------------------------------------------------------------------------------------
def test_boxes_past_the_border_are_clipped_and_reported(tmp_path):
    gt = {"e.png": (20, 10, "RGB", [("cat", 15, 5, 10, 10)])}
    src = write_labelme(tmp_path / "lm", gt)
    convert_dataset("labelme", src, tmp_path / "out")
    _, _, boxes = load_output(tmp_path / "out")
    assert boxes["e.png"] == [("cat", [15, 5, 5, 5])]
    assert [p["kind"] for p in problems(tmp_path / "out")] == ["clipped_box"]


def test_degenerate_and_outside_boxes_are_dropped(tmp_path):
    src = write_voc(tmp_path / "voc", {"a.jpg": (37, 23, "RGB", [("cat", 3, 4, 10, 7)])})
    xml = (src / "Annotations" / "a.xml").read_text()
    point = "<object><name>cat</name><bndbox><xmin>5</xmin><ymin>6</ymin><xmax>5</xmax><ymax>9</ymax></bndbox></object>"
    away = "<object><name>cat</name><bndbox><xmin>50</xmin><ymin>6</ymin><xmax>60</xmax><ymax>9</ymax></bndbox></object>"
    (src / "Annotations" / "a.xml").write_text(xml.replace("</annotation>", point + away + "</annotation>"))
    report = convert_dataset("voc", src, tmp_path / "out")
    _, _, boxes = load_output(tmp_path / "out")
    assert len(boxes["a.jpg"]) == 1
    found = {p["kind"]: p for p in problems(tmp_path / "out")}
    assert found["degenerate_box"]["file"] == "Annotations/a.xml" and found["degenerate_box"]["dropped"]
    assert found["outside_image"]["file"] == "Annotations/a.xml"
    assert report.counters["boxes_read"] == 3 and report.counters["boxes_written"] == 1


def test_unknown_class_names_are_dropped_with_the_class_list(tmp_path):
    src = write_voc(tmp_path / "voc")
    (tmp_path / "names.txt").write_text("dog\ncat\n")
    report = convert_dataset("voc", src, tmp_path / "out", classes=tmp_path / "names.txt")
    _, cats, boxes = load_output(tmp_path / "out")
    assert cats == {1: "dog", 2: "cat"}  # the given order, not sorted
    assert not any(c == "bird" for bs in boxes.values() for c, _ in bs)
    unknown = [p for p in report.problems if p.kind == "unknown_class"]
    assert len(unknown) == 1 and unknown[0].file == "Annotations/c.xml" and "bird" in unknown[0].detail


def test_yolo_index_out_of_range_and_bad_lines(tmp_path):
    src = write_yolo(tmp_path / "yolo", ["dog", "cat", "bird"], {"a.jpg": GT["a.jpg"]})
    label = src / "labels" / "a.txt"
    label.write_text(label.read_text() + "7 0.5 0.5 0.1 0.1\n0 12 30 40 50\n1 0.5 0.5\n")
    convert_dataset("yolo", src, tmp_path / "out")
    found = [(p["kind"], p["file"]) for p in problems(tmp_path / "out")]
    assert ("unknown_class", "labels/a.txt:3") in found
    assert ("bad_box", "labels/a.txt:4") in found  # pixel values instead of normalised
    assert ("bad_box", "labels/a.txt:5") in found  # too few values
    _, _, boxes = load_output(tmp_path / "out")
    assert len(boxes["a.jpg"]) == 2


def test_images_without_labels_are_kept_and_orphan_labels_reported(tmp_path):
    src = write_yolo(tmp_path / "yolo", ["dog", "cat", "bird"], {"a.jpg": GT["a.jpg"]})
    make_image(src / "images" / "unlabelled.png", 13, 11)
    (src / "labels" / "ghost.txt").write_text("0 0.5 0.5 0.2 0.2\n")
    report = convert_dataset("yolo", src, tmp_path / "out")
    images, _, boxes = load_output(tmp_path / "out")
    assert boxes["unlabelled.png"] == [] and images["unlabelled.png"]["width"] == 13
    kinds = {p.kind: p.file for p in report.problems}
    assert kinds["image_without_labels"] == "unlabelled.png"
    assert kinds["label_without_image"] == "labels/ghost.txt"
    assert sum(s["empty_images"] for s in report.splits.values()) == 1


def test_voc_label_without_image_and_unreadable_files(tmp_path):
    src = write_voc(tmp_path / "voc", {"a.jpg": GT["a.jpg"]})
    (src / "Annotations" / "lost.xml").write_text("<annotation><filename>lost.jpg</filename></annotation>")
    (src / "Annotations" / "broken.xml").write_text("<annotation><object>")
    (src / "JPEGImages" / "junk.jpg").write_bytes(b"not an image")
    convert_dataset("voc", src, tmp_path / "out")
    found = {p["kind"]: p["file"] for p in problems(tmp_path / "out")}
    assert found["label_without_image"] == "Annotations/lost.xml"
    assert found["unreadable_label"] == "Annotations/broken.xml"
    assert found["unreadable_image"] == "junk.jpg"
    images, _, _ = load_output(tmp_path / "out")
    assert set(images) == {"a.jpg"}


def test_grayscale_and_rgba_sizes_come_from_the_files(tmp_path):
    src = write_voc(tmp_path / "voc")
    xml = src / "Annotations" / "b.xml"
    xml.write_text(xml.read_text().replace("<width>41</width>", "<width>400</width>"))  # a wrong <size>
    convert_dataset("voc", src, tmp_path / "out")
    images, _, _ = load_output(tmp_path / "out")
    for name, (w, h, mode, _) in GT.items():
        with Image.open(tmp_path / "out" / "images" / name) as image:
            assert image.mode == mode and image.size == (w, h) == (images[name]["width"], images[name]["height"])
    assert [p["kind"] for p in problems(tmp_path / "out")] == ["size_mismatch"]


def test_exif_rotated_image_is_written_upright(tmp_path):
    # Stored 37x23 with orientation 6 (rotate 90° clockwise to view): the labelling tool showed 23x37.
    src = tmp_path / "yolo"
    make_image(src / "images" / "r.jpg", 37, 23, exif_orientation=6)
    (src / "labels").mkdir()
    (src / "labels" / "r.txt").write_text(f"0 {(2 + 5) / 23} {(3 + 10) / 37} {10 / 23} {20 / 37}\n")  # box 2,3,10,20
    (src / "classes.txt").write_text("cell\n")
    convert_dataset("yolo", src, tmp_path / "out")
    images, _, boxes = load_output(tmp_path / "out")
    assert (images["r.jpg"]["width"], images["r.jpg"]["height"]) == (23, 37)
    header = read_image_header(tmp_path / "out" / "images" / "r.jpg")
    assert header.stored_size == (23, 37) and header.orientation == 1
    assert_same_boxes(boxes["r.jpg"], [("cell", 2, 3, 10, 20)], tol=0.01)
    assert [p["kind"] for p in problems(tmp_path / "out")] == ["exif_reencoded"]


def test_exif_image_labelled_as_stored_keeps_its_pixels(tmp_path):
    # The VOC <size> equals the stored size (not the upright one): the tool labelled the stored pixels.
    src = write_voc(tmp_path / "voc", {"r.jpg": (37, 23, "RGB", [("cell", 20, 2, 16, 20)])})
    make_image(src / "JPEGImages" / "r.jpg", 37, 23, exif_orientation=8)
    convert_dataset("voc", src, tmp_path / "out")
    images, _, boxes = load_output(tmp_path / "out")
    assert (images["r.jpg"]["width"], images["r.jpg"]["height"]) == (37, 23)
    header = read_image_header(tmp_path / "out" / "images" / "r.jpg")
    assert header.stored_size == (37, 23) and header.orientation == 1
    assert boxes["r.jpg"] == [("cell", [20, 2, 16, 20])]


def test_labelme_polygons_shapes_and_embedded_images(tmp_path):
    src = tmp_path / "lm"
    src.mkdir()
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30)).save(buffer, format="PNG")
    polygon = [[5.5, 4.0], [20.0, 6.0], [12.0, 25.25]]
    content = {"shapes": [{"label": "leaf", "points": polygon, "shape_type": "polygon"},
                          {"label": "leaf", "points": [[3, 3], 4], "shape_type": "circle"}],
               "imagePath": "missing.png", "imageData": base64.b64encode(buffer.getvalue()).decode(),
               "imageWidth": 40, "imageHeight": 30}
    (src / "p.json").write_text(json.dumps(content))
    report = convert_dataset("labelme", src, tmp_path / "out")
    data = json.loads((tmp_path / "out" / "annotations" / "instances_train.json").read_text())
    data_val = json.loads((tmp_path / "out" / "annotations" / "instances_val.json").read_text())
    anns = data["annotations"] + data_val["annotations"]
    assert len(anns) == 1
    assert anns[0]["bbox"] == [5.5, 4.0, 14.5, 21.25]
    assert anns[0]["segmentation"] == [[v for p in polygon for v in p]]
    shoelace = abs(sum(polygon[i][0] * polygon[i - 2][1] - polygon[i - 2][0] * polygon[i][1] for i in range(3))) / 2
    assert anns[0]["area"] == pytest.approx(shoelace, abs=1e-3)
    with Image.open(tmp_path / "out" / "images" / "p.png") as image:
        assert image.size == (40, 30)
    assert [p.kind for p in report.problems] == ["unsupported_shape"]


def test_duplicate_boxes_are_dropped(tmp_path):
    src = write_labelme(tmp_path / "lm", {"a.jpg": (37, 23, "RGB", [("cat", 3, 4, 10, 7), ("cat", 3, 4, 10, 7)])})
    convert_dataset("labelme", src, tmp_path / "out")
    _, _, boxes = load_output(tmp_path / "out")
    assert len(boxes["a.jpg"]) == 1
    assert [p["kind"] for p in problems(tmp_path / "out")] == ["duplicate_box"]


# --- splits ---------------------------------------------------------------------------------------------
def test_hash_split_is_stable_and_close_to_the_fraction():
    names = [f"img_{i:05d}.jpg" for i in range(4000)]
    first = {n: hash_split(n, 0, 0.25) for n in names}
    assert first == {n: hash_split(n, 0, 0.25) for n in reversed(names)}
    share = sum(s == "val" for s in first.values()) / len(names)
    assert 0.22 < share < 0.28
    other_seed = {n: hash_split(n, 1, 0.25) for n in names}
    assert other_seed != first
    assert all(hash_split(n, 0, 0.0) == "train" for n in names[:100])
    with pytest.raises(ValueError, match="val_fraction"):
        hash_split("x", 0, 1.0)


def test_adding_images_does_not_move_the_others(tmp_path):
    gt = {f"{i:03d}.png": (9, 7, "RGB", [("cat", 1, 1, 3, 3)]) for i in range(30)}
    convert_dataset("labelme", write_labelme(tmp_path / "a", gt), tmp_path / "out_a", val_fraction=0.3, seed=5)
    more = {**gt, **{f"new{i}.png": (9, 7, "RGB", []) for i in range(10)}}
    convert_dataset("labelme", write_labelme(tmp_path / "b", more), tmp_path / "out_b", val_fraction=0.3, seed=5)

    def val_names(out: Path) -> set[str]:
        return {im["file_name"] for im in json.loads((out / "annotations" / "instances_val.json").read_text())["images"]}

    before, after = val_names(tmp_path / "out_a"), val_names(tmp_path / "out_b")
    assert before and before == {n for n in after if n in gt}


def test_voc_image_sets_decide_the_split(tmp_path):
    src = write_voc(tmp_path / "voc")
    (src / "ImageSets" / "Main").mkdir(parents=True)
    (src / "ImageSets" / "Main" / "train.txt").write_text("a\nb\n")
    (src / "ImageSets" / "Main" / "val.txt").write_text("c\n")
    (src / "ImageSets" / "Main" / "test.txt").write_text("d\n")
    report = convert_dataset("voc", src, tmp_path / "out", val_fraction=0.9)
    split_names = {}
    for split in ("train", "val", "test"):
        data = json.loads((tmp_path / "out" / "annotations" / f"instances_{split}.json").read_text())
        split_names[split] = {im["file_name"] for im in data["images"]}
    assert split_names == {"train": {"a.jpg", "b.png"}, "val": {"c.png"}, "test": {"d.jpg"}}
    assert "ImageSets" in report.split_rule


def test_yolo_split_folders_and_data_yaml_names(tmp_path):
    src = tmp_path / "yolo"
    write_yolo(src, ["dog", "cat", "bird"], {"a.jpg": GT["a.jpg"]}, sub="train")
    write_yolo(src, ["dog", "cat", "bird"], {"c.png": GT["c.png"]}, sub="val")
    (src / "classes.txt").unlink()
    (src / "data.yaml").write_text(yaml.safe_dump({"path": ".", "train": "images/train", "val": "images/val",
                                                   "names": {0: "dog", 1: "cat", 2: "bird"}}))
    convert_dataset("yolo", src, tmp_path / "out", val_fraction=0.0)
    val = json.loads((tmp_path / "out" / "annotations" / "instances_val.json").read_text())
    assert [im["file_name"] for im in val["images"]] == ["val/c.png"]
    assert [c["name"] for c in val["categories"]] == ["dog", "cat", "bird"]


# --- bad arguments -----------------------------------------------------------------------------------
def test_yolo_without_class_names_says_how_to_fix(tmp_path):
    src = write_yolo(tmp_path / "yolo", ["dog", "cat", "bird"], {"a.jpg": GT["a.jpg"]})
    (src / "classes.txt").unlink()
    with pytest.raises(FileNotFoundError, match="--classes"):
        convert_dataset("yolo", src, tmp_path / "out")


def test_output_folder_rules(tmp_path):
    src = write_voc(tmp_path / "voc", {"a.jpg": GT["a.jpg"]})
    with pytest.raises(OutputError, match="inside the input folder"):
        convert_dataset("voc", src, src / "coco")
    with pytest.raises(OutputError, match="contains the input folder"):
        convert_dataset("voc", src, tmp_path)
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(OutputError, match="not a folder"):
        convert_dataset("voc", src, tmp_path / "full" / "x")
    with pytest.raises(OutputError, match="not empty"):
        convert_dataset("voc", src, tmp_path / "full")
    (tmp_path / "full" / "annotations").mkdir()
    (tmp_path / "full" / "annotations" / "instances_test.json").write_text("{}")  # from an earlier run
    convert_dataset("voc", src, tmp_path / "full", overwrite=True)
    assert sorted(p.name for p in (tmp_path / "full" / "annotations").iterdir()) == ["instances_train.json",
                                                                                     "instances_val.json"]
    with pytest.raises(DataError, match="no usable images"):
        convert_dataset("voc", tmp_path / "full" / "annotations", tmp_path / "o2")
    with pytest.raises(ConfigError, match="unknown format"):
        convert_dataset("kitti", src, tmp_path / "o3")
    with pytest.raises(ConfigError, match="val_fraction"):
        convert_dataset("voc", src, tmp_path / "o4", val_fraction=1.0)
    with pytest.raises(MissingFileError, match="nowhere"):
        convert_dataset("voc", tmp_path / "nowhere", tmp_path / "o5")


def test_class_name_files_are_validated(tmp_path):
    (tmp_path / "dup.txt").write_text("cat\ndog\ncat\n")
    with pytest.raises(ValueError, match=r"dup.txt.*'cat' appears twice"):
        read_class_names(tmp_path / "dup.txt")
    (tmp_path / "gap.yaml").write_text("names: {0: cat, 2: dog}\n")
    with pytest.raises(ValueError, match=r"gap\.yaml.*0..1"):
        read_class_names(tmp_path / "gap.yaml")
    (tmp_path / "ok.yaml").write_text("nc: 2\nnames: [cat, dog]\n")
    assert read_class_names(tmp_path / "ok.yaml") == ["cat", "dog"]


def test_bccd_voc_source_reproduces_the_shared_dataset(tmp_path):
    """The shared BCCD dataset was converted from VOC with the same conventions: writing it back to VOC
    (xmin = x + 1, xmax = x + w) and converting again must give identical files, ids and boxes."""
    bccd = require(DATA / "bccd")
    voc = tmp_path / "voc"
    for sub in ("Annotations", "JPEGImages", "ImageSets/Main"):
        (voc / sub).mkdir(parents=True)
    expected = {}
    for split in ("train", "val", "test"):
        data = json.loads((bccd / "annotations" / f"instances_{split}.json").read_text())
        cats = {c["id"]: c["name"] for c in data["categories"]}
        names = {im["id"]: im["file_name"] for im in data["images"]}
        (voc / "ImageSets" / "Main" / f"{split}.txt").write_text("".join(Path(n).stem + "\n" for n in names.values()))
        objects: dict[int, str] = {}
        for a in data["annotations"]:
            x, y, w, h = a["bbox"]
            objects[a["image_id"]] = objects.get(a["image_id"], "") + (
                f"<object><name>{cats[a['category_id']]}</name><bndbox><xmin>{x + 1}</xmin><ymin>{y + 1}</ymin>"
                f"<xmax>{x + w}</xmax><ymax>{y + h}</ymax></bndbox></object>")
        for im in data["images"]:
            os.link(bccd / "images" / im["file_name"], voc / "JPEGImages" / im["file_name"])
            (voc / "Annotations" / f"{Path(im['file_name']).stem}.xml").write_text(
                f"<annotation><filename>{im['file_name']}</filename>{objects.get(im['id'], '')}</annotation>")
        expected[split] = data
    convert_dataset("voc", voc, tmp_path / "out")
    for split, data in expected.items():
        got = json.loads((tmp_path / "out" / "annotations" / f"instances_{split}.json").read_text())
        assert got["categories"] == data["categories"]
        assert [(i["id"], i["file_name"], i["width"], i["height"]) for i in got["images"]] == \
               [(i["id"], i["file_name"], i["width"], i["height"]) for i in data["images"]]
        key = ("image_id", "category_id", "bbox", "area", "iscrowd")
        assert sorted([a[k] for k in key] for a in got["annotations"]) == sorted([a[k] for k in key] for a in data["annotations"])


def test_small_datasets_get_a_non_empty_val_split():
    from torchdetr.data.convert.split import assign_splits, hash_fraction

    for seed in range(20):
        names = ["a.jpg", "b.jpg", "c.jpg"]
        splits = assign_splits(names, seed, 0.2)
        assert sorted(set(splits.values())) == ["train", "val"]
        plain = {n: hash_split(n, seed, 0.2) for n in names}
        if "val" not in plain.values():  # the name nearest the cut moved, nothing else
            moved = min(names, key=lambda n: hash_fraction(n, seed))
            assert splits == {**plain, moved: "val"}
    assert set(assign_splits(["a.jpg", "b.jpg"], 0, 0.0).values()) == {"train"}


def test_a_lone_train_folder_is_split_by_hash(tmp_path):
    gt = {f"{i}.png": (9, 7, "RGB", [("cat", 1, 1, 3, 3)]) for i in range(4)}
    src = write_yolo(tmp_path / "yolo", ["cat"], gt, sub="train")
    report = convert_dataset("yolo", src, tmp_path / "out", val_fraction=0.25)
    assert report.splits["val"]["images"] >= 1 and report.splits["train"]["images"] >= 1
    assert report.split_rule.startswith("hash")


def test_class_names_differing_only_in_case_are_flagged(tmp_path):
    src = write_labelme(tmp_path / "lm", {"a.jpg": (37, 23, "RGB", [("RBC", 3, 4, 10, 7), ("rbc ", 20, 2, 16, 20)])})
    report = convert_dataset("labelme", src, tmp_path / "out")
    assert report.categories == ["RBC", "rbc"]  # LabelMe names are stripped; case is kept
    flagged = [p for p in report.problems if p.kind == "similar_class_names"]
    assert len(flagged) == 1 and "'RBC', 'rbc'" in flagged[0].detail and not flagged[0].dropped
