"""Panoptic prediction: ``Detector.predict(task="panoptic")``, ``detr predict --task panoptic`` and its files."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from torchdetr import DETRConfig, build_model
from torchdetr.cli import main as cli_main
from torchdetr.data.synthetic_panoptic import write_panoptic_folder
from torchdetr.engine.checkpoint import checkpoint_dict
from torchdetr.errors import ConfigError
from torchdetr.inference.detector import Detector
from torchdetr.inference.loading import load_model
from torchdetr.models.build import panoptic_is_thing_map
from torchdetr.models.postprocess import PostProcessPanoptic
from torchdetr.structures import rgb2id

MASK_MODEL = dict(backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=1, dim_feedforward=128,
                  num_queries=6, backbone_weights="none", num_classes=9, masks=True)
ISTHING = {1: True, 2: True, 6: False, 7: False}


@pytest.fixture(scope="module")
def mask_model():
    torch.manual_seed(0)
    model, _, _ = build_model(DETRConfig(**MASK_MODEL))
    with torch.no_grad():  # confident, varied classes so that segments survive the threshold
        model.detr.class_embed.weight.mul_(40.0)
    return model.eval()


def test_detector_segments_as_the_original_post_processing(mask_model):
    detector = Detector(mask_model, {1: "a", 2: "b", 6: "s", 7: "t"}, image_size=64, isthing=ISTHING)
    images = [Image.fromarray(np.random.default_rng(i).integers(0, 255, (48 + 8 * i, 70, 3), dtype=np.uint8))
              for i in range(2)]
    predictions = detector.predict(images, task="panoptic", threshold=0.0)
    with torch.no_grad():
        samples = detector.batch(images)
        outputs = mask_model(samples)
    post = PostProcessPanoptic(panoptic_is_thing_map(9, ISTHING), threshold=0.0)
    expected = post(outputs, samples.image_sizes, [(im.height, im.width) for im in images])
    for prediction, original, image in zip(predictions, expected, images):
        ids = rgb2id(np.asarray(Image.open(__import__("io").BytesIO(original["png_string"])).convert("RGB")))
        assert prediction.id_map.shape == (image.height, image.width) == ids.shape
        assert np.array_equal(prediction.id_map, ids + 1)  # COCO numbering: 0 is unlabelled
        assert [(s["id"] + 1, s["category_id"], s["isthing"], s["area"]) for s in original["segments_info"]] == \
               [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in prediction.segments_info]
        assert len(prediction.segments) > 0
        assert rgb2id(np.asarray(prediction.png())).tolist() == prediction.id_map.tolist()
    single = detector.predict(images[0], task="panoptic", threshold=0.0)
    assert np.array_equal(single.id_map, detector.predict([images[0]], task="panoptic", threshold=0.0)[0].id_map)


def test_panoptic_needs_a_mask_model_and_a_known_task(mask_model):
    box_model, _, _ = build_model(DETRConfig(**{**MASK_MODEL, "masks": False}))
    image = Image.new("RGB", (40, 30))
    with pytest.raises(ConfigError, match="needs a mask model"):
        Detector(box_model.eval(), image_size=64).predict(image, task="panoptic")
    with pytest.raises(ConfigError, match="task must be one of"):
        Detector(mask_model, image_size=64).predict(image, task="segm")


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

    assert cli_main(["eval", "--ann", str(gt), "--gt_png_dir", str(data / "panoptic"),
                     "--results", str(out / "panoptic.json")]) == 0
    printed = capsys.readouterr().out
    assert "panoptic quality" in printed and "All" in printed and "Things" in printed and "Stuff" in printed
