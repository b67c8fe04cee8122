"""Panoptic prediction: ``Detector.predict(task="panoptic")``, ``detr predict --task panoptic`` and its files."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import PANOPTIC_SAMPLE, require
from tests.tiny import TINY_MASK_MODEL
from torchdetr import DETRConfig, build_model
from torchdetr.cli import main as cli_main
from torchdetr.data.synthetic_panoptic import write_panoptic_folder
from torchdetr.engine.checkpoint import checkpoint_dict
from torchdetr.errors import ConfigError
from torchdetr.evaluation.panoptic import evaluate_panoptic_files
from torchdetr.inference.detector import Detector
from torchdetr.inference.loading import load_model
from torchdetr.models.build import panoptic_is_thing_map
from torchdetr.models.postprocess import NonFiniteOutputError, PostProcessPanoptic
from torchdetr.structures import rgb2id

MASK_MODEL = TINY_MASK_MODEL | dict(dec_layers=1, dim_feedforward=128, num_queries=6, num_classes=9)
ISTHING = {1: True, 2: True, 6: False, 7: False}


@pytest.fixture(scope="module")
def mask_model():
    torch.manual_seed(0)
    model, _, _ = build_model(DETRConfig(**MASK_MODEL))
    with torch.no_grad():  # confident, varied classes so that segments survive the threshold
        model.detr.class_embed.weight.mul_(40.0)
    return model.eval()


ALL_NAMES = {i: f"class{i}" for i in range(9)}  # every class id the model can predict


def random_images() -> list[Image.Image]:
    return [Image.fromarray(np.random.default_rng(i).integers(0, 255, (48 + 8 * i, 70, 3), dtype=np.uint8))
            for i in range(2)]


def original_id_maps(detector: Detector, images: list[Image.Image], threshold: float) -> list[tuple[np.ndarray, list]]:
    """The original's PostProcessPanoptic on the same batch: (id map 0, 1, … as it numbers them, segments_info)."""
    with torch.no_grad():
        samples = detector.batch(images)
        outputs = detector.model(samples)
    post = PostProcessPanoptic(panoptic_is_thing_map(9, ISTHING), threshold=threshold)
    results = post(outputs, samples.image_sizes, [(im.height, im.width) for im in images])
    return [(rgb2id(np.asarray(Image.open(io.BytesIO(r["png_string"])).convert("RGB"))), r["segments_info"])
            for r in results]


def test_detector_segments_as_the_original_post_processing(mask_model):
    detector = Detector(mask_model, ALL_NAMES, image_size=64, isthing=ISTHING)
    images = random_images()
    predictions = detector.predict(images, task="panoptic", threshold=0.0)
    for prediction, (ids, info), image in zip(predictions, original_id_maps(detector, images, 0.0), images):
        assert prediction.id_map.shape == (image.height, image.width) == ids.shape
        assert np.array_equal(prediction.id_map, ids + 1)  # COCO numbering: 0 is unlabelled
        assert [(s["id"] + 1, s["category_id"], s["isthing"], s["area"]) for s in info] == \
               [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in prediction.segments_info]
        assert len(prediction.segments) > 0
        assert rgb2id(np.asarray(prediction.png())).tolist() == prediction.id_map.tolist()
        assert [s.name for s in prediction.segments] == [ALL_NAMES[s.category_id] for s in prediction.segments]
        assert all(s.isthing == ISTHING.get(s.category_id, True) for s in prediction.segments)
    single = detector.predict(images[0], task="panoptic", threshold=0.0)
    assert np.array_equal(single.id_map, detector.predict([images[0]], task="panoptic", threshold=0.0)[0].id_map)


def test_segments_of_unknown_categories_become_unlabelled(mask_model):
    """Class ids that are none of the model's categories (ids its data never used) cannot be scored: their
    segments are left out, their pixels unlabelled, and the other segments renumbered 1, 2, …"""
    known = {1: "a", 2: "b", 6: "s", 7: "t"}
    images = random_images()
    predictions = Detector(mask_model, known, image_size=64, isthing=ISTHING).predict(images, task="panoptic",
                                                                                      threshold=0.0)
    dropped = 0
    for prediction, (ids, info) in zip(predictions, original_id_maps(Detector(mask_model, image_size=64), images, 0.0)):
        kept = [s for s in info if s["category_id"] in known]
        dropped += len(info) - len(kept)
        expected = np.zeros_like(ids)
        for new_id, s in enumerate(kept, start=1):
            expected[ids == s["id"]] = new_id
        assert np.array_equal(prediction.id_map, expected)
        assert [(s.category_id, s.area) for s in prediction.segments] == [(s["category_id"], s["area"]) for s in kept]
    assert dropped > 0  # the case is exercised


def test_panoptic_needs_a_mask_model_and_a_known_task(mask_model):
    box_model, _, _ = build_model(DETRConfig(**{**MASK_MODEL, "masks": False}))
    image = Image.new("RGB", (40, 30))
    with pytest.raises(ConfigError, match="needs a mask model"):
        Detector(box_model.eval(), image_size=64).predict(image, task="panoptic")
    with pytest.raises(ConfigError, match="task must be one of"):
        Detector(mask_model, image_size=64).predict(image, task="segm")


def test_non_finite_outputs_are_refused_not_segmented(mask_model):
    """A model whose logits are NaN gives no trustworthy segment: refused as in detection, not an empty map."""
    def nan_logits(samples):
        outputs = dict(mask_model(samples))
        outputs["pred_logits"] = torch.full_like(outputs["pred_logits"], float("nan"))
        return outputs

    image = Image.new("RGB", (40, 30))
    with pytest.raises(NonFiniteOutputError, match="pred_logits"):
        Detector(nan_logits, image_size=64).predict(image, task="panoptic")


def test_cli_predict_panoptic_then_eval_the_files(mask_model, tmp_path, capsys):
    data = tmp_path / "data"
    write_panoptic_folder(data, num_train=1, num_val=3, image_size=64)
    cfg = DETRConfig(**MASK_MODEL, dataset_file="coco_panoptic", coco_path=str(data))
    checkpoint = tmp_path / "segm.pth"
    categories = {1: "circle", 2: "square", 3: "triangle", 4: "cross", 5: "ring", 6: "sky", 7: "grass", 8: "sand"}
    torch.save(checkpoint_dict(mask_model, None, None, 0, cfg, categories=categories, thing_ids=[1, 2, 3, 4, 5]),
               checkpoint)
    loaded = load_model(checkpoint)
    assert loaded.isthing == {**dict.fromkeys(range(1, 6), True), **dict.fromkeys((6, 7, 8), False)}

    gt = data / "annotations" / "panoptic_val.json"
    out = tmp_path / "out"
    assert cli_main(["predict", str(data / "images"), "--model", str(checkpoint), "--task", "panoptic",
                     "--threshold", "0", "--output", str(out), "--annotations", str(gt), "--device", "cpu"]) == 0
    assert "segment(s) above 0" in capsys.readouterr().out
    written = json.loads((out / "panoptic.json").read_text())
    assert {c["id"]: c["isthing"] for c in written["categories"]} == {**dict.fromkeys(range(1, 6), 1),
                                                                       **dict.fromkeys((6, 7, 8), 0)}
    val_ids = {im["id"] for im in json.loads(gt.read_text())["images"]}
    assert {a["image_id"] for a in written["annotations"]} == val_ids  # train_* images are not in the val file
    for ann in written["annotations"]:
        ids = rgb2id(np.asarray(Image.open(out / "panoptic" / ann["file_name"])))
        assert set(np.unique(ids).tolist()) - {0} == {s["id"] for s in ann["segments_info"]}
    assert len(list((out / "images").iterdir())) == 4  # a picture for every input image

    # the PNG folders by default: the ground truth's by the dataset layout (panoptic/), the predictions' beside the JSON
    assert cli_main(["eval", "--ann", str(gt), "--results", str(out / "panoptic.json")]) == 0
    printed = capsys.readouterr().out
    assert "panoptic quality" in printed and "All" in printed and "Things" in printed and "Stuff" in printed


def test_predicted_files_are_a_consistent_coco_panoptic_set(mask_model, tmp_path, capsys):
    """Round trip: the predictions (PNGs + JSON), made a ground truth by adding the images, pass ``detr data check``
    (areas = pixel counts, every PNG id listed and every listed id in its PNG, known categories, image sizes) and
    score PQ = SQ = RQ = 1 against themselves."""
    data = tmp_path / "data"
    write_panoptic_folder(data, num_train=0, num_val=3, image_size=64)
    gt = data / "annotations" / "panoptic_val.json"
    checkpoint = tmp_path / "segm.pth"
    cfg = DETRConfig(**MASK_MODEL, dataset_file="coco_panoptic", coco_path=str(data))
    torch.save(checkpoint_dict(mask_model, None, None, 0, cfg, categories=ALL_NAMES, thing_ids=[1, 2, 3]), checkpoint)
    out = tmp_path / "out"
    assert cli_main(["predict", str(data / "images"), "--model", str(checkpoint), "--task", "panoptic", "--no_render",
                     "--threshold", "0", "--output", str(out), "--annotations", str(gt), "--device", "cpu"]) == 0
    predictions = json.loads((out / "panoptic.json").read_text())
    assert sum(len(a["segments_info"]) for a in predictions["annotations"]) > 0
    assert not (out / "images").exists()  # --no_render

    as_truth = {"images": json.loads(gt.read_text())["images"], "categories": predictions["categories"],
                "annotations": [{**a, "segments_info": [{**s, "iscrowd": 0} for s in a["segments_info"]]}
                                for a in predictions["annotations"]]}
    truth_file = tmp_path / "panoptic_truth.json"
    truth_file.write_text(json.dumps(as_truth))
    capsys.readouterr()
    assert cli_main(["data", "check", str(truth_file), "--png_dir", str(out / "panoptic"),
                     "--images", str(data / "images")]) == 0, capsys.readouterr().out
    result = evaluate_panoptic_files(truth_file, out / "panoptic.json", out / "panoptic", out / "panoptic")
    assert result.groups["All"]["pq"] == result.groups["All"]["sq"] == result.groups["All"]["rq"] == 1.0
    assert result.groups["All"]["n"] == len({s["category_id"] for a in predictions["annotations"]
                                              for s in a["segments_info"]})


# ----------------------------------------------------------------------------------------------
# The official panoptic models through the same commands (random weights in the hub cache, no download)
# ----------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def official_panoptic_hub(tmp_path_factory):
    """``detr_resnet50_panoptic`` with random weights where the download would put it; downloading fails."""
    from urllib.error import URLError

    from torchdetr import hub

    hub_dir = tmp_path_factory.mktemp("hub")
    torch.manual_seed(0)
    reference = hub.detr_resnet50_panoptic().eval()
    with torch.no_grad():  # confident, varied classes so that segments survive the threshold
        reference.detr.class_embed.weight.mul_(40.0)
    (hub_dir / "checkpoints").mkdir()
    torch.save({"model": reference.state_dict()}, hub_dir / "checkpoints" / Path(hub.OFFICIAL_MODELS[
        "detr_resnet50_panoptic"].url).name)

    def offline(*args, **kwargs):
        raise URLError("no network in this test")

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.hub, "download_url_to_file", offline)
        patch.setattr(torch.hub, "get_dir", lambda: str(hub_dir))
        yield reference


def test_official_panoptic_model_predicts_coco_panoptic_files(official_panoptic_hub, tmp_path, capsys):
    """``detr predict --model detr_resnet50_panoptic --task panoptic`` on the two real COCO images: the files use
    COCO panoptic's categories (names and isthing as COCO's own JSON), and ``detr eval`` accepts them."""
    sample = require(PANOPTIC_SAMPLE)
    gt = sample / "annotations" / "panoptic_examples.json"
    coco = {c["id"]: c for c in json.loads(gt.read_text())["categories"]}

    detector = Detector.from_pretrained("detr_resnet50_panoptic", device="cpu", image_size=96, max_size=160)
    assert detector.category_names == {i: c["name"] for i, c in coco.items()}
    image = Image.open(sample / "images" / "000000142238.jpg")
    prediction = detector.predict(image, task="panoptic", threshold=0.0)
    assert prediction.id_map.shape == (image.height, image.width) and len(prediction.segments) > 0
    for segment in prediction.segments:  # the original's rule: ids up to 90 are things
        assert segment.name == coco[segment.category_id]["name"]
        assert segment.isthing == bool(coco[segment.category_id]["isthing"])
        assert segment.area == int((prediction.id_map == segment.id).sum())
        rows, cols = np.nonzero(prediction.id_map == segment.id)
        assert segment.bbox == (cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1)

    out = tmp_path / "out"
    assert cli_main(["predict", str(sample / "images"), "--model", "detr_resnet50_panoptic", "--task", "panoptic",
                     "--threshold", "0", "--image_size", "96", "--max_size", "160", "--annotations", str(gt),
                     "--output", str(out), "--device", "cpu"]) == 0
    written = json.loads((out / "panoptic.json").read_text())
    assert {c["id"]: (c["name"], c["isthing"]) for c in written["categories"]} == \
           {i: (c["name"], c["isthing"]) for i, c in coco.items()}
    assert len(list((out / "images").iterdir())) == 2
    capsys.readouterr()
    assert cli_main(["eval", "--ann", str(gt), "--gt_png_dir", str(sample / "annotations" / "panoptic_examples"),
                     "--results", str(out / "panoptic.json")]) == 0
    assert "panoptic quality" in capsys.readouterr().out
