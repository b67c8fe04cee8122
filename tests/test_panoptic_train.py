"""Panoptic DETR end to end: PQ in the evaluation loop, the two-stage recipe, ``detr eval`` on the predictions."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from torchdetr import DETRConfig, build_model
from torchdetr.data.build import build_dataset
from torchdetr.data.synthetic_panoptic import write_panoptic_folder
from torchdetr.engine.evaluate import PANOPTIC_EVAL_DIR, evaluate
from torchdetr.engine.loaders import make_loaders
from torchdetr.evaluation.panoptic import PREDICTIONS_FILE, evaluate_panoptic_files

SIZE = 64
MASK_MODEL = dict(backbone="resnet18", hidden_dim=128, nheads=8, enc_layers=1, dec_layers=2, dim_feedforward=256,
                  num_queries=10, backbone_weights="none", dataset_file="coco_panoptic", image_size=SIZE, batch_size=2,
                  num_workers=0, device="cpu", dropout=0.0)
LOGIT = 10.0


class Oracle(nn.Module):
    """Outputs that reproduce the ground truth of each batch, in the loader's order: one query per segment with
    its class (logit 10) and its mask (+10 inside, -10 outside), the other queries "no object"."""

    def __init__(self, dataset, num_queries: int, num_classes: int, batch_size: int) -> None:
        super().__init__()
        self.batches = []
        for start in range(0, len(dataset), batch_size):
            targets = [dataset[i][1] for i in range(start, min(start + batch_size, len(dataset)))]
            height = max(int(t["size"][0]) for t in targets)
            width = max(int(t["size"][1]) for t in targets)
            logits = torch.zeros(len(targets), num_queries, num_classes + 1)
            logits[..., -1] = LOGIT
            masks = torch.full((len(targets), num_queries, height, width), -LOGIT)
            boxes = torch.full((len(targets), num_queries, 4), 0.5)
            for b, t in enumerate(targets):
                for q, (label, mask) in enumerate(zip(t["labels"], t["masks"])):
                    logits[b, q, -1], logits[b, q, label] = 0.0, LOGIT
                    masks[b, q, : mask.shape[0], : mask.shape[1]][mask] = LOGIT
                    boxes[b, q] = t["boxes"][q]
            self.batches.append({"pred_logits": logits, "pred_boxes": boxes, "pred_masks": masks})
        self.calls = 0

    def forward(self, samples):
        out = self.batches[self.calls % len(self.batches)]
        self.calls += 1
        return out


@pytest.fixture(scope="module")
def panoptic_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synthetic_panoptic")
    write_panoptic_folder(root, num_train=4, num_val=4, seed=0, image_size=SIZE)
    return root


def test_the_evaluation_loop_scores_a_perfect_model_pq_one(panoptic_root, tmp_path):
    cfg = DETRConfig(**MASK_MODEL, masks=True, coco_path=str(panoptic_root), num_classes=9)
    dataset = build_dataset("val", cfg)
    _, criterion, postprocessors = build_model(cfg)
    _, loader = make_loaders(None, dataset, cfg)
    model = Oracle(dataset, cfg.num_queries, cfg.num_classes, cfg.batch_size)
    result = evaluate(model, criterion, postprocessors, loader, dataset.coco, torch.device("cpu"), cfg,
                      output_dir=tmp_path, print_tables=False)
    for group in ("All", "Things", "Stuff"):
        assert result.panoptic.groups[group]["pq"] == 1.0
    assert result.test_stats()["PQ_all"] == {"pq": 1.0, "sq": 1.0, "rq": 1.0, "n": result.panoptic.groups["All"]["n"]}
    assert result.coco_stats["segm"][1] == 1.0  # mask AP50 against the same segments as COCO detection
    # the predictions written as the original does, scored again from the files by detr eval's code
    written = tmp_path / PANOPTIC_EVAL_DIR
    annotations = json.loads((written / PREDICTIONS_FILE).read_text())["annotations"]
    assert sorted(a["image_id"] for a in annotations) == dataset.ids
    again = evaluate_panoptic_files(panoptic_root / "annotations" / "panoptic_val.json", written / PREDICTIONS_FILE,
                                    panoptic_root / "panoptic", written)
    assert again.groups == result.panoptic.groups


def test_box_models_on_panoptic_data_get_no_pq(panoptic_root):
    cfg = DETRConfig(**MASK_MODEL, coco_path=str(panoptic_root), num_classes=9)
    dataset = build_dataset("val", cfg)
    model, criterion, postprocessors = build_model(cfg)
    _, loader = make_loaders(None, dataset, cfg)
    result = evaluate(model, criterion, postprocessors, loader, dataset.coco, torch.device("cpu"), cfg, print_tables=False)
    assert result.panoptic is None and "PQ_all" not in result.test_stats() and len(result.coco_stats["bbox"]) == 12
