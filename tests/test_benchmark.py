"""``detr benchmark`` on a tiny model: the table, the JSON, the Markdown with the machine, skipped formats.

No timing is asserted; the checks are on what is measured and reported (FLOPs against a closed form,
the faithful row as the 1.00× baseline, parity of the fast path, a missing package skipped with a note).
"""

from __future__ import annotations

import json

import pytest
import torch

from torchdetr.cli import main
from torchdetr.errors import MissingExtraError
from torchdetr.inference import benchmark
from torchdetr.structures import NestedTensor

from .test_predict import write_tiny_checkpoint


def test_model_flops_counts_a_convolution_in_closed_form():
    conv = torch.nn.Conv2d(3, 8, kernel_size=3, padding=1)

    class Model(torch.nn.Module):
        def forward(self, samples: NestedTensor):
            return conv(samples.tensors)

    samples = NestedTensor(torch.zeros(2, 3, 16, 20), torch.zeros(2, 16, 20, dtype=torch.bool))
    assert benchmark.model_flops(Model(), samples) == 2 * 2 * 8 * 16 * 20 * 3 * 3 * 3  # 2·B·O·H·W·I·k²


def test_benchmark_writes_table_json_and_markdown_and_skips_missing_packages(tmp_path, capsys, monkeypatch):
    def missing(*args, **kwargs):
        raise MissingExtraError("OpenVINO needs the openvino package: pip install 'torchdetr[openvino]'")

    monkeypatch.setattr("torchdetr.inference.export.export_openvino", missing)
    checkpoint = write_tiny_checkpoint(tmp_path / "tiny.pth")
    out_json, out_md = tmp_path / "bench.json", tmp_path / "results" / "inference.md"
    flags = ["benchmark", "--model", str(checkpoint), "--formats", "pytorch,openvino,int8", "--size", "64x96",
             "--runs", "2", "--warmup", "1", "--threads", "1", "--json", str(out_json), "--markdown", str(out_md)]
    assert main(flags) == 0
    printed = capsys.readouterr().out
    assert "| faithful |" in printed and "| pytorch |" in printed
    report = json.loads(out_json.read_text())
    rows = {r["format"]: r for r in report["results"]}
    assert list(rows) == ["faithful", "pytorch", "openvino", "int8"]  # the baseline first
    assert rows["faithful"]["speedup"] == pytest.approx(1.0) and rows["faithful"]["max_logit_diff"] == 0.0
    assert rows["pytorch"]["status"] == "ok" and rows["pytorch"]["max_logit_diff"] <= 1e-4
    assert rows["pytorch"]["latency_ms_p95"] >= rows["pytorch"]["latency_ms_p50"] > 0
    assert rows["openvino"]["status"] == "skipped" and "pip install" in rows["openvino"]["note"]
    assert rows["int8"]["status"] == "skipped" and "--data" in rows["int8"]["note"]
    flops = report["gflop_per_image"] * 1e9
    assert rows["pytorch"]["gflops_per_s"] == pytest.approx(flops / (rows["pytorch"]["latency_ms_p50"] / 1e3) / 1e9)
    assert report["gemm_peak_gflops"]["fp32"] > 0 and report["machine"]["threads"] == 1
    markdown = out_md.read_text()
    assert report["machine"]["cpu"] in markdown and "GEMM peak" in markdown and "| openvino | skipped" in markdown
    assert main(flags) == 2  # an earlier result is not replaced without --overwrite
    assert "--overwrite" in capsys.readouterr().err
    assert main(["benchmark", "--model", str(checkpoint), "--formats", "tensorrt"]) == 2
    assert main(["benchmark", "--model", str(checkpoint), "--size", "big"]) == 2


def _ground_truth_runner(ann: dict, image_ids: list[int], shift: float, num_classes: int):
    """A "model" that outputs each image's ground-truth boxes (called once per image, in order), every box moved
    right by ``shift`` × its width; one confident query per object, the other queries no-object."""
    images = {im["id"]: im for im in ann["images"]}
    boxes_of = {i: [a for a in ann["annotations"] if a["image_id"] == i] for i in image_ids}
    calls = iter(image_ids)

    def run(samples: NestedTensor) -> dict:
        image_id = next(calls)
        width, height = images[image_id]["width"], images[image_id]["height"]
        objects = boxes_of[image_id]
        queries = len(objects) + 1
        logits = torch.full((1, queries, num_classes + 1), -20.0)
        logits[0, :, num_classes] = 20.0  # no-object everywhere ...
        boxes = torch.full((1, queries, 4), 0.5)
        for q, a in enumerate(objects):  # ... except one query per object, on its box
            x, y, w, h = a["bbox"]
            logits[0, q, num_classes], logits[0, q, a["category_id"]] = -20.0, 20.0
            boxes[0, q] = torch.tensor([(x + w / 2 + shift * w) / width, (y + h / 2) / height, w / width, h / height])
        return {"pred_logits": logits, "pred_boxes": boxes}

    return run


@pytest.mark.parametrize("shift, expected_ap", [(0.0, 1.0), (0.2, 0.4)])
def test_benchmark_ap_is_coco_ap_of_the_detections(shift, expected_ap):
    """A runner that outputs the ground truth scores AP = AP50 = 1; moved right by 0.2 of their width every box has
    IoU 0.8 / 1.2 = 2/3 with its object, so it counts at the thresholds 0.50, 0.55, 0.60, 0.65 of ten: AP 0.4 (a box
    clipped at the image border would have IoU 0.8: more); pycocotools on the same detections is the oracle."""
    import contextlib
    import io

    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    from torchdetr.config import DETRConfig
    from torchdetr.inference.dataset_images import dataset_images, load_images
    from torchdetr.inference.detector import Detector
    from torchdetr.inference.loading import LoadedModel

    from .conftest import DATA, require

    ann_file, images = dataset_images(require(DATA / "bccd"), limit=4)
    ann = json.loads(ann_file.read_text())
    ids = [i.image_id for i in images]
    num_classes = max(c["id"] for c in ann["categories"]) + 1
    loaded = LoadedModel(model=torch.nn.Identity(), config=DETRConfig(num_classes=num_classes),
                         category_names={c["id"]: c["name"] for c in ann["categories"]}, image_size=64, max_size=96)
    pictures = load_images(images)
    ap, ap50 = benchmark.coco_ap_of(_ground_truth_runner(ann, ids, shift, num_classes), loaded, ann_file, images,
                                    pictures)
    # the oracle: the same detections through Detector, scored by pycocotools' COCOeval
    detector = Detector(_ground_truth_runner(ann, ids, shift, num_classes), loaded.category_names, threshold=0.0,
                        image_size=64, max_size=96, batch_size=1)
    results = [{"image_id": i, "category_id": d.label, "score": d.score,
                "bbox": [d.box[0], d.box[1], d.box[2] - d.box[0], d.box[3] - d.box[1]]}
               for i, picture in zip(ids, pictures) for d in detector.detect([picture])[0]]
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(ann_file))
        evaluation = COCOeval(gt, gt.loadRes(results), "bbox")
        evaluation.params.imgIds = ids
        evaluation.evaluate()
        evaluation.accumulate()
        evaluation.summarize()
    assert (ap, ap50) == pytest.approx((evaluation.stats[0], evaluation.stats[1]), abs=1e-9)
    assert ap50 == pytest.approx(1.0, abs=1e-6)
    assert ap == pytest.approx(expected_ap, abs=1e-6)


def test_benchmark_ap_refuses_a_broken_annotation_file_in_one_line(tmp_path):
    """An annotation without ``bbox`` is a one-line ``DataError`` naming the file (``load_coco_gt``), not a KeyError deep
    inside COCOeval after every format has been timed."""
    from torchdetr.config import DETRConfig
    from torchdetr.errors import DataError
    from torchdetr.inference.dataset_images import dataset_images, load_images
    from torchdetr.inference.loading import LoadedModel

    from .conftest import DATA, require

    ann_file, images = dataset_images(require(DATA / "bccd"), limit=2)
    ann = json.loads(ann_file.read_text())
    damaged = json.loads(ann_file.read_text())
    del damaged["annotations"][0]["bbox"]
    broken = tmp_path / "broken.json"
    broken.write_text(json.dumps(damaged))
    ids = [i.image_id for i in images]
    num_classes = max(c["id"] for c in ann["categories"]) + 1
    loaded = LoadedModel(model=torch.nn.Identity(), config=DETRConfig(num_classes=num_classes),
                         category_names={c["id"]: c["name"] for c in ann["categories"]}, image_size=64, max_size=96)
    with pytest.raises(DataError, match=r"broken\.json"):
        benchmark.coco_ap_of(_ground_truth_runner(ann, ids, 0.0, num_classes), loaded, broken, images, load_images(images))
