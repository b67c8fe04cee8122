"""The synthetic panoptic set: things = the detection shapes, stuff = background bands, clutter = void."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from torchdetr.cli import main as cli_main
from torchdetr.data.check import check_coco_folder
from torchdetr.data.synthetic import CATEGORIES, SyntheticShapes, split_seed
from torchdetr.data.synthetic_panoptic import STUFF_CATEGORIES, render_panoptic, write_panoptic_folder
from torchdetr.structures import rgb2id


def test_rendering_is_a_function_of_seed_and_index():
    first = render_panoptic(3, 5, 64)
    again = render_panoptic(3, 5, 64)
    other = render_panoptic(3, 6, 64)
    assert np.array_equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]
    assert not np.array_equal(first[0], other[0])


def test_segments_describe_the_id_map_exactly():
    for index in range(20):
        image, ids, segments = render_panoptic(0, index, 64)
        assert image.shape == (64, 64, 3) and image.dtype == np.uint8
        listed = {s["id"] for s in segments}
        present = set(np.unique(ids).tolist())
        assert present - {0} == listed  # every non-void pixel belongs to a listed segment, none is empty
        for s in segments:
            mask = ids == s["id"]
            rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
            assert s["area"] == mask.sum()
            assert s["bbox"] == [cols[0], rows[0], cols[-1] - cols[0] + 1, rows[-1] - rows[0] + 1]
            assert s["id"] // 1000 == s["category_id"]
        stuff = [s["category_id"] for s in segments if s["category_id"] in STUFF_CATEGORIES]
        assert 1 <= len(stuff) == len(set(stuff)) <= 3  # one segment per stuff class, 1-3 bands


def test_things_are_the_detection_shapes_and_void_exists():
    """The things are drawn by the detection generator's layout rule: the same shapes, visible pixels included."""
    seed = split_seed(0, "val")
    detection = SyntheticShapes(10, seed=seed, image_size=64)
    voids = 0
    for index in range(10):
        _, ids, segments = render_panoptic(seed, index, 64)
        things = [s for s in segments if s["category_id"] in CATEGORIES]
        gt = detection.coco.imgToAnns[index + 1]
        assert [s["category_id"] for s in things] == [a["category_id"] for a in gt]
        assert [s["area"] for s in things] == [a["area"] for a in gt]
        voids += int((ids == 0).sum())
    assert voids > 0


def test_folder_passes_the_check_and_the_cli_writes_it(tmp_path, capsys):
    assert cli_main(["data", "synth", "--panoptic", "--out", str(tmp_path), "--num_train", "3", "--num_val", "2",
                     "--image_size", "48"]) == 0
    assert "synthetic panoptic dataset written" in capsys.readouterr().out
    reports = check_coco_folder(tmp_path)
    assert list(reports) == ["train", "val"] and all(r.ok for r in reports.values())
    assert {p.kind for r in reports.values() for p in r.warnings} <= {"unused_category"}  # few images: some class absent
    content = json.loads((tmp_path / "annotations" / "panoptic_val.json").read_text())
    assert {c["id"]: c["isthing"] for c in content["categories"]} == {**dict.fromkeys(CATEGORIES, 1),
                                                                       **dict.fromkeys(STUFF_CATEGORIES, 0)}
    ids = rgb2id(np.asarray(Image.open(tmp_path / "panoptic" / content["annotations"][0]["file_name"])))
    _, expected, _ = render_panoptic(split_seed(0, "val"), 0, 48)
    assert np.array_equal(ids, expected)
    write_panoptic_folder(tmp_path / "again", 3, 2, image_size=48)
    assert (tmp_path / "again" / "annotations" / "panoptic_val.json").read_text() == json.dumps(content)
