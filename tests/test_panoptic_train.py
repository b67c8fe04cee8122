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
from torchdetr.structures import collate_fn

from .tiny import TINY_MODEL

SIZE = 64
MASK_MODEL = TINY_MODEL | dict(hidden_dim=128, nheads=8, dim_feedforward=256, num_queries=10, dataset_file="coco_panoptic",
                             image_size=SIZE, batch_size=2, num_workers=0, device="cpu", dropout=0.0)  # masks=True where wanted
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


# ----------------------------------------------------------------------------------------------
# The two-stage recipe, briefly: box model, then the mask head on the frozen detector
# ----------------------------------------------------------------------------------------------
RECIPE = dict(MASK_MODEL, hidden_dim=256, num_queries=8, batch_size=4, num_classes=None)
RECIPE_IMAGES = 4  # memorised: the run evaluates on its training images (a check that the recipe learns)
REPEATS = 20  # the images repeated in an epoch: few epochs, so few checkpoint writes
STAGE_EPOCHS = 4  # 4 epochs x 20 iterations per stage
BOX_LR, MASK_LR = 5e-4, 3e-4


@torch.no_grad()
def panoptic_mask_iou(model, criterion, dataset) -> tuple[float, float]:
    """Mean IoU of each ground-truth segment with the pixels its matched query wins (the panoptic assignment:
    each pixel to the object query with the highest mask logit), and the chance level: the IoU of a mask covering
    the whole image (the segment's share of the image)."""
    model.eval()
    ious, whole = [], []
    samples, targets = collate_fn([dataset[i] for i in range(len(dataset))])
    outputs = model(samples)
    logits = torch.nn.functional.interpolate(outputs["pred_masks"], size=samples.tensors.shape[-2:], mode="bilinear")
    objects = outputs["pred_logits"].argmax(-1) != outputs["pred_logits"].shape[-1] - 1
    for b, (queries, segments) in enumerate(criterion.matcher(outputs, targets)):
        competing = objects[b].clone()
        competing[queries] = True
        owner = torch.where(competing[:, None, None], logits[b], torch.tensor(-torch.inf)).argmax(0)
        for q, g in zip(queries.tolist(), segments.tolist()):
            gt = targets[b]["masks"][g]
            won = owner[: gt.shape[0], : gt.shape[1]] == q
            ious.append(float((won & gt).sum() / (won | gt).sum()))
            whole.append(float(gt.float().mean()))
    return sum(ious) / len(ious), sum(whole) / len(whole)


@pytest.mark.slow
def test_two_stage_recipe_learns_masks_and_scores_pq(tmp_path, capsys):
    from torch.utils.data import ConcatDataset

    from torchdetr.cli import main as cli_main
    from torchdetr.engine.checkpoint import load_checkpoint
    from torchdetr.engine.run import train
    from torchdetr.engine.start import load_start_weights

    data = tmp_path / "data"
    write_panoptic_folder(data, num_train=RECIPE_IMAGES, num_val=0, seed=0, image_size=SIZE)
    annotations = data / "annotations"
    (annotations / "panoptic_val.json").write_text((annotations / "panoptic_train.json").read_text())
    common = dict(RECIPE, coco_path=str(data), eval_every=STAGE_EPOCHS, epochs=STAGE_EPOCHS)
    torch.manual_seed(0)

    # stage 1: the box model (every parameter trains; the validation transform, so that the images are memorised)
    box_cfg = DETRConfig(**common, lr=BOX_LR, lr_backbone=BOX_LR, output_dir=str(tmp_path / "box"))
    images = build_dataset("val", box_cfg)
    boxes = train(box_cfg, datasets=(ConcatDataset([images] * REPEATS), images))
    assert boxes.history[-1]["test_coco_eval_bbox"][1] > 0.5  # AP50 of the box model on its images

    # stage 2: --masks --frozen_weights BOX: only the mask head learns
    segm_cfg = DETRConfig(**common, masks=True, frozen_weights=str(tmp_path / "box" / "checkpoint.pth"), lr=MASK_LR,
                          output_dir=str(tmp_path / "segm"))
    images = build_dataset("val", segm_cfg.replace(num_classes=9))
    untrained, criterion, _ = build_model(segm_cfg.replace(num_classes=9))
    load_start_weights(untrained, segm_cfg.replace(num_classes=9))
    before, chance = panoptic_mask_iou(untrained, criterion, images)
    segm = train(segm_cfg, datasets=(ConcatDataset([images] * REPEATS), images))
    trainable = {name for name, p in segm.model.named_parameters() if p.requires_grad}
    assert trainable and not any(name.startswith("detr.") for name in trainable)
    box_weights = load_checkpoint(tmp_path / "box" / "checkpoint.pth")["model"]
    assert all(torch.equal(v, segm.model.state_dict()[f"detr.{k}"]) for k, v in box_weights.items()
               if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))  # the detector is frozen
    after, _ = panoptic_mask_iou(segm.model, criterion, images)
    assert after > max(2 * chance, 2 * before, 0.3), (before, after, chance)

    # log.txt as the original: test_PQ_all / _th / _st = {pq, sq, rq, n}, and the checkpoint knows things from stuff
    row = json.loads((tmp_path / "segm" / "log.txt").read_text().splitlines()[-1])
    assert set(row["test_PQ_all"]) == {"pq", "sq", "rq", "n"} and "test_PQ_th" in row and "test_PQ_st" in row
    assert load_checkpoint(tmp_path / "segm" / "checkpoint.pth")["thing_ids"] == [1, 2, 3, 4, 5]

    # detr predict --task panoptic, then detr eval on its files: PQ > 0
    out = tmp_path / "pred"
    assert cli_main(["predict", str(data / "images"), "--model", str(tmp_path / "segm" / "checkpoint.pth"),
                     "--task", "panoptic", "--annotations", str(annotations / "panoptic_val.json"),
                     "--output", str(out), "--device", "cpu"]) == 0
    result = evaluate_panoptic_files(annotations / "panoptic_val.json", out / "panoptic.json", data / "panoptic")
    assert result.pq > 0
    capsys.readouterr()
    assert cli_main(["eval", "--ann", str(annotations / "panoptic_val.json"), "--results", str(out / "panoptic.json"),
                     "--gt_png_dir", str(data / "panoptic")]) == 0
    assert f"All       | {100 * result.pq:5.1f}" in capsys.readouterr().out
