"""PQ (evaluation/panoptic.py) against its published definition.

The oracle is ``reference_pq`` below: a slow pixel-set implementation written straight from the definition
(Kirillov et al. 2019 + the COCO panoptic rules), with exact fractions. The vectorised implementation must give
the same TP/FP/FN and IoU sums on hand-built cases (whose answers are also worked out by hand) and on the two
real COCO images of ../shared with perturbed predictions.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import PANOPTIC_SAMPLE_JSON as SAMPLE_JSON
from tests.conftest import PANOPTIC_SAMPLE_PNGS as SAMPLE_PNGS
from tests.conftest import png_id_map, require
from torchdetr.data.panoptic import PanopticCategory, PanopticImage
from torchdetr.errors import DataError, MissingFileError
from torchdetr.evaluation.panoptic import PQStat, evaluate_panoptic_files, pq_image
from torchdetr.structures import id2rgb

THING, STUFF, OTHER_THING = 1, 2, 3
CATEGORIES = {THING: PanopticCategory(THING, "thing", True), STUFF: PanopticCategory(STUFF, "stuff", False),
              OTHER_THING: PanopticCategory(OTHER_THING, "other", True)}


# ----------------------------------------------------------------------------------------------
# The oracle: the definition, pixel set by pixel set
# ----------------------------------------------------------------------------------------------
def reference_pq(gt_map, gt_segments, pred_map, pred_segments):
    """``{category: [tp, fp, fn, iou_sum]}`` by the definition; exact fractions, boolean masks, plain loops."""
    counts = defaultdict(lambda: [0, 0, 0, Fraction(0)])
    void = gt_map == 0
    gt_masks = {s["id"]: gt_map == s["id"] for s in gt_segments}
    pred_masks = {s["id"]: pred_map == s["id"] for s in pred_segments}
    matched_gt, matched_pred = set(), set()
    for g in gt_segments:
        for p in pred_segments:
            if g.get("iscrowd", 0) or g["category_id"] != p["category_id"]:
                continue
            gm, pm = gt_masks[g["id"]], pred_masks[p["id"]]
            intersection = int((gm & pm).sum())
            union = int((gm | (pm & ~void)).sum())  # the prediction's void pixels are not part of the union
            if union and Fraction(intersection, union) > Fraction(1, 2):
                counts[g["category_id"]][0] += 1
                counts[g["category_id"]][3] += Fraction(intersection, union)
                matched_gt.add(g["id"])
                matched_pred.add(p["id"])
    for g in gt_segments:
        if g["id"] not in matched_gt and not g.get("iscrowd", 0):
            counts[g["category_id"]][2] += 1
    for p in pred_segments:
        if p["id"] in matched_pred:
            continue
        pm = pred_masks[p["id"]]
        crowd_same_class = np.zeros_like(void)
        for g in gt_segments:
            if g.get("iscrowd", 0) and g["category_id"] == p["category_id"]:
                crowd_same_class |= gt_masks[g["id"]]
        if Fraction(int((pm & (void | crowd_same_class)).sum()), int(pm.sum())) > Fraction(1, 2):
            continue  # mostly on void / crowd of its class: ignored
        counts[p["category_id"]][1] += 1
    return dict(counts)


def assert_same_stat(stat: PQStat, reference: dict) -> None:
    ours = {c for c in (*stat.tp, *stat.fp, *stat.fn) if stat.tp.get(c) or stat.fp.get(c) or stat.fn.get(c)}
    theirs = {c for c, v in reference.items() if v[0] or v[1] or v[2]}
    assert ours == theirs
    for c in theirs:
        tp, fp, fn, iou = reference[c]
        assert (stat.tp.get(c, 0), stat.fp.get(c, 0), stat.fn.get(c, 0)) == (tp, fp, fn), f"category {c}"
        assert stat.iou.get(c, 0.0) == pytest.approx(float(iou), abs=1e-12), f"category {c}"


def score(gt_map, gt_segments, pred_map, pred_segments, categories=CATEGORIES) -> PQStat:
    stat = pq_image(PanopticImage(gt_map, gt_segments), PanopticImage(pred_map, pred_segments), categories)
    assert_same_stat(stat, reference_pq(gt_map, gt_segments, pred_map, pred_segments))
    return stat


def seg(segment_id, category_id, iscrowd=0):
    return {"id": segment_id, "category_id": category_id, "iscrowd": iscrowd}


# ----------------------------------------------------------------------------------------------
# Hand-built cases
# ----------------------------------------------------------------------------------------------
def two_region_map():
    """10x10: a thing (id 5) in the top-left 4x4, stuff (id 9) everywhere else but a void bottom row."""
    m = np.full((10, 10), 9, dtype=np.int64)
    m[:4, :4] = 5
    m[9, :] = 0
    return m, [seg(5, THING), seg(9, STUFF)]


def test_perfect_prediction_is_one():
    gt, segments = two_region_map()
    result = score(gt, segments, gt.copy(), segments).result(CATEGORIES)
    for group in ("All", "Things", "Stuff"):
        assert (result.groups[group]["pq"], result.groups[group]["sq"], result.groups[group]["rq"]) == (1.0, 1.0, 1.0)
    assert result.groups["All"]["n"] == 2 and result.groups["Things"]["n"] == 1
    other = next(c for c in result.per_class if c["category_id"] == OTHER_THING)
    assert math.isnan(other["pq"]), "a category without TP/FP/FN is not counted"


@pytest.mark.parametrize("covered, matches", [(8, False), (9, True)])
def test_iou_exactly_one_half_is_not_a_match(covered, matches):
    gt = np.zeros((4, 4), dtype=np.int64)
    gt[:, :] = 1  # 16 thing pixels
    pred = np.zeros((4, 4), dtype=np.int64)
    pred.flat[:covered] = 7  # IoU = covered / 16; the rest of the prediction is void (unlisted id 0)
    stat = score(gt, [seg(1, THING)], pred, [seg(7, THING)])
    assert stat.tp.get(THING, 0) == int(matches)
    assert (stat.fp.get(THING, 0), stat.fn.get(THING, 0)) == ((0, 0) if matches else (1, 1))
    if matches:
        assert stat.iou[THING] == pytest.approx(9 / 16)


def test_void_pixels_leave_the_union():
    gt = np.zeros((4, 8), dtype=np.int64)
    gt[:, :4] = 3  # 16 thing pixels, 16 void pixels
    pred = np.full((4, 8), 4, dtype=np.int64)  # one segment over everything: 16 on the thing, 16 on void
    stat = score(gt, [seg(3, THING)], pred, [seg(4, THING)])
    assert stat.tp[THING] == 1 and stat.iou[THING] == 1.0  # 16 / (16 + 32 - 16 - 16)


@pytest.mark.parametrize("void_pixels, ignored", [(5, False), (6, True)])
def test_prediction_mostly_on_void_is_ignored(void_pixels, ignored):
    gt = np.full((1, 20), 1, dtype=np.int64)
    gt[0, :void_pixels] = 0
    pred = np.zeros((1, 20), dtype=np.int64)
    pred[0, :10] = 2  # 10 pixels: void_pixels on void, the rest on the stuff, which it does not match (wrong class)
    stat = score(gt, [seg(1, STUFF)], pred, [seg(2, THING)])
    assert stat.fp.get(THING, 0) == (0 if ignored else 1)  # 6/10 > 1/2 on void is ignored; 5/10 is not
    assert stat.fn[STUFF] == 1


def test_crowd_regions():
    gt = np.zeros((4, 12), dtype=np.int64)
    gt[:, :4] = 1  # a crowd region of THING
    gt[:, 4:8] = 2  # a crowd region of OTHER_THING
    gt[:, 8:] = 3  # a plain THING
    segments = [seg(1, THING, iscrowd=1), seg(2, OTHER_THING, iscrowd=1), seg(3, THING)]
    pred = np.zeros((4, 12), dtype=np.int64)
    pred[:, :4] = 10  # THING on the THING crowd: ignored
    pred[:, 4:8] = 11  # THING on the OTHER_THING crowd: a false positive (crowd of another class)
    pred[:, 8:] = 12  # THING on the plain THING: a match
    pred_segments = [seg(10, THING), seg(11, THING), seg(12, THING)]
    stat = score(gt, segments, pred, pred_segments)
    assert (stat.tp[THING], stat.fp[THING], stat.fn.get(THING, 0)) == (1, 1, 0)  # unmatched crowd is no FN
    assert stat.fn.get(OTHER_THING, 0) == 0
    # a prediction exactly on a crowd region never matches it
    stat = score(gt, segments, gt.copy(), [seg(1, THING), seg(2, OTHER_THING), seg(3, THING)])
    assert (stat.tp[THING], stat.fp.get(THING, 0), stat.fp.get(OTHER_THING, 0)) == (1, 0, 0)


def test_wrong_class_is_a_miss_and_a_false_positive():
    gt, segments = two_region_map()
    stat = score(gt, segments, gt.copy(), [seg(5, OTHER_THING), seg(9, STUFF)])
    assert (stat.fn[THING], stat.fp[OTHER_THING], stat.tp[STUFF]) == (1, 1, 1)


def test_accumulation_is_per_category_over_the_whole_set():
    gt, segments = two_region_map()
    total = score(gt, segments, gt.copy(), segments)  # image 1: THING right
    total += score(gt, segments, np.where(gt == 5, 0, gt), [seg(9, STUFF)])  # image 2: THING missed
    result = total.result(CATEGORIES)
    thing = next(c for c in result.per_class if c["category_id"] == THING)
    assert (thing["tp"], thing["fn"]) == (1, 1)
    assert thing["pq"] == pytest.approx(1.0 / 1.5)  # IoU sum / (TP + FN/2), not the mean of per-image PQs (0.5)
    assert thing["sq"] == 1.0 and thing["rq"] == pytest.approx(1 / 1.5)
    assert result.groups["All"]["pq"] == pytest.approx((1 / 1.5 + 1.0) / 2)


def test_empty_prediction_misses_everything():
    gt, segments = two_region_map()
    stat = score(gt, segments, np.zeros_like(gt), [])
    assert (stat.fn[THING], stat.fn[STUFF], sum(stat.tp.values()), sum(stat.fp.values())) == (1, 1, 0, 0)
    assert not any(score(np.zeros_like(gt), [], gt, segments).fp.values())  # all on void: ignored, not FP


def test_prediction_id_zero_listed_is_a_segment():
    gt, segments = two_region_map()
    pred = np.where(gt == 5, 0, 1)  # the thing predicted with id 0, which segments_info lists (DETR numbers from 0)
    stat = score(gt, segments, pred, [seg(0, THING), seg(1, STUFF)])
    assert stat.tp[THING] == 1


@pytest.mark.parametrize("case, message", [
    ("png_id_not_in_json", "in the PNG but not in segments_info"),
    ("json_id_not_in_png", "in segments_info but not in the PNG"),
    ("unknown_category", "unknown category_id 42"),
    ("size", "the prediction is 10x9"),
    ("duplicate", "listed twice"),
])
def test_inconsistent_inputs_are_one_line_errors(case, message):
    gt, segments = two_region_map()
    pred, pred_segments = gt.copy(), [dict(s) for s in segments]
    if case == "png_id_not_in_json":
        pred[0, 0] = 77
    elif case == "json_id_not_in_png":
        pred_segments.append(seg(78, THING))
    elif case == "unknown_category":
        pred_segments[0]["category_id"] = 42
    elif case == "size":
        pred = pred[:9]
    else:
        pred_segments.append(dict(pred_segments[0]))
    with pytest.raises(DataError, match=message) as err:
        pq_image(PanopticImage(gt, segments), PanopticImage(pred, pred_segments), CATEGORIES, "image 3")
    assert "\n" not in str(err.value) and "image 3" in str(err.value)


# ----------------------------------------------------------------------------------------------
# The two real COCO images, with perturbed predictions
# ----------------------------------------------------------------------------------------------
def load_sample():
    content = json.loads(require(SAMPLE_JSON).read_text())
    categories = {c["id"]: PanopticCategory(c["id"], c["name"], bool(c["isthing"])) for c in content["categories"]}
    images = []
    for ann in content["annotations"]:
        images.append((ann, png_id_map(SAMPLE_PNGS / ann["file_name"])))
    return content, categories, images


def perturb(id_map, segments, rng, categories):
    """A plausible, imperfect prediction: missed segments, shifted masks, wrong classes, false positives."""
    pred = id_map.copy()
    pred_segments = [{"id": s["id"], "category_id": s["category_id"]} for s in segments]
    order = rng.permutation(len(pred_segments))
    missed = set(order[: len(order) // 6].tolist())
    for k in missed:  # missed: pixels become void
        pred[pred == pred_segments[k]["id"]] = 0
    for k in order[len(order) // 6 : len(order) // 3]:  # shifted by a few pixels (drawn over the others)
        mask = id_map == pred_segments[k]["id"]
        shifted = np.roll(mask, tuple(rng.integers(-12, 13, size=2)), axis=(0, 1))
        pred[shifted] = pred_segments[k]["id"]
    ids = list(categories)
    for k in order[len(order) // 3 : len(order) // 2]:  # wrong class
        pred_segments[k]["category_id"] = int(rng.choice(ids))
    height, width = pred.shape
    for n in range(3):  # false positives: rectangles of new segments
        y, x = int(rng.integers(0, height - 40)), int(rng.integers(0, width - 40))
        pred[y : y + int(rng.integers(5, 40)), x : x + int(rng.integers(5, 40))] = 900_000 + n
        pred_segments.append({"id": 900_000 + n, "category_id": int(rng.choice(ids))})
    present = set(np.unique(pred).tolist())
    return pred, [s for s in pred_segments if s["id"] in present]


@pytest.mark.parametrize("seed", range(4))
def test_real_images_with_perturbed_predictions_match_the_definition(seed):
    _, categories, images = load_sample()
    rng = np.random.default_rng(seed)
    total = PQStat()
    for ann, id_map in images:
        pred, pred_segments = perturb(id_map, ann["segments_info"], rng, categories)
        total += score(id_map, ann["segments_info"], pred, pred_segments, categories)
    result = total.result(categories)
    assert 0.0 < result.groups["All"]["pq"] < 1.0


def test_sample_ground_truth_against_itself_through_files():
    result = evaluate_panoptic_files(require(SAMPLE_JSON), SAMPLE_JSON, SAMPLE_PNGS, SAMPLE_PNGS)
    for group in ("All", "Things", "Stuff"):
        assert (result.groups[group]["pq"], result.groups[group]["sq"], result.groups[group]["rq"]) == (1.0, 1.0, 1.0)
    assert result.num_images == 2


def write_predictions(tmp_path: Path, predictions) -> tuple[Path, Path]:
    png_dir = tmp_path / "pred"
    png_dir.mkdir()
    annotations = []
    for image_id, (pred, segments) in predictions.items():
        Image.fromarray(id2rgb(pred)).save(png_dir / f"{image_id}.png")
        annotations.append({"image_id": image_id, "file_name": f"{image_id}.png", "segments_info": segments})
    results = tmp_path / "pred.json"
    results.write_text(json.dumps({"annotations": annotations}))
    return results, png_dir


def test_files_give_the_in_memory_numbers(tmp_path):
    content, categories, images = load_sample()
    rng = np.random.default_rng(7)
    predictions, total = {}, PQStat()
    for ann, id_map in images:
        pred, pred_segments = perturb(id_map, ann["segments_info"], rng, categories)
        predictions[ann["image_id"]] = (pred, pred_segments)
        total += score(id_map, ann["segments_info"], pred, pred_segments, categories)
    results, png_dir = write_predictions(tmp_path, predictions)
    from_files = evaluate_panoptic_files(SAMPLE_JSON, results, SAMPLE_PNGS, png_dir)
    assert from_files.groups == total.result(categories).groups


@pytest.mark.parametrize("case, error, message", [
    ("missing_png", MissingFileError, "segment PNG not found"),
    ("missing_prediction", DataError, "no prediction for image 439180"),
    ("unknown_image", DataError, "no ground truth"),
    ("size", DataError, "width x height"),
    ("unknown_category", DataError, "unknown category_id 12345"),
    ("png_folder", MissingFileError, "--results_png_dir"),
])
def test_file_mode_input_errors(tmp_path, case, error, message):
    _, _, images = load_sample()
    predictions = {ann["image_id"]: (id_map, ann["segments_info"]) for ann, id_map in images}
    if case == "missing_prediction":
        predictions.pop(439180)
    elif case == "unknown_image":
        predictions[5] = predictions[142238]
    elif case == "size":
        predictions[142238] = (predictions[142238][0][:-1], predictions[142238][1])
    elif case == "unknown_category":
        segments = [dict(s) for s in predictions[142238][1]]
        segments[0]["category_id"] = 12345
        predictions[142238] = (predictions[142238][0], segments)
    results, png_dir = write_predictions(tmp_path, predictions)
    if case == "missing_png":
        (png_dir / "142238.png").unlink()
    if case == "png_folder":
        png_dir = tmp_path / "nowhere"
    with pytest.raises(error, match=message) as err:
        evaluate_panoptic_files(SAMPLE_JSON, results, SAMPLE_PNGS, png_dir)
    assert "\n" not in str(err.value)
