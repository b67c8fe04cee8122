"""Panoptic evaluation under ``torchrun`` (2 Gloo processes on the CPU) equals one process.

With 2 processes, each writes the PNGs of its own validation images into ``OUTPUT/panoptic_eval/``, the main
process ``predictions.json``, and PQ is summed over the gathered per-image statistics in image-id order
(``evaluation.panoptic.PanopticEvaluator``). The same checkpoint is evaluated as ``detr eval --model`` does
(``tests/distributed_panoptic_worker.py``) by one process and by two; the files and the PQ floats must agree.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchdetr.atomic_write import TEMPORARY_FILE
from torchdetr.config import DETRConfig
from torchdetr.data.synthetic_panoptic import panoptic_categories_json, write_panoptic_folder
from torchdetr.engine.checkpoint import checkpoint_dict
from torchdetr.engine.evaluate import PANOPTIC_EVAL_DIR
from torchdetr.evaluation.panoptic import PREDICTIONS_FILE, evaluate_panoptic_files
from torchdetr.losses.build import build_model
from torchdetr.structures import rgb2id

from .test_distributed import TORCHRUN, run
from .tiny import TINY_MASK_MODEL

pytestmark = pytest.mark.slow

VAL_IMAGES = 11  # batches of 2: rank 0 gets [1,2] [5,6] [9,10], rank 1 [3,4] [7,8] [11] (uneven, a short batch)
IMAGE_SIZE = 64
DATA_SEED = 14  # with the weights below: 3 sky true positives whose IoU sum depends on the order of addition
MASK_MODEL = TINY_MASK_MODEL | dict(num_queries=10, num_classes=9)
CLASS_WEIGHT_SCALE = 40.0  # confident, varied classes per query: segments pass the panoptic threshold (0.85)
SKY_ID, SKY_LOGIT_BONUS = 6, 28.0  # some queries say "sky" in some images: sky segments (some whole-image), partly right


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory) -> Path:
    """One random mask checkpoint evaluated on the same panoptic split by 1 process (``one/``) and 2 (``two/``)."""
    root = tmp_path_factory.mktemp("ddp_panoptic")
    data = write_panoptic_folder(root / "data", num_train=0, num_val=VAL_IMAGES, seed=DATA_SEED, image_size=IMAGE_SIZE)
    cfg = DETRConfig(**MASK_MODEL, dataset_file="coco_panoptic", coco_path=str(data))
    torch.manual_seed(0)
    model, _, _ = build_model(cfg)
    with torch.no_grad():
        model.detr.class_embed.weight.mul_(CLASS_WEIGHT_SCALE)
        model.detr.class_embed.bias[SKY_ID] += SKY_LOGIT_BONUS
    categories = panoptic_categories_json()
    torch.save(checkpoint_dict(model, None, None, 0, cfg, categories={c["id"]: c["name"] for c in categories},
                               thing_ids=[c["id"] for c in categories if c["isthing"]]), root / "segm.pth")
    flags = ["--model", str(root / "segm.pth"), "--dataset_file", "coco_panoptic", "--coco_path", str(data),
             "--image_size", str(IMAGE_SIZE), "--batch_size", "2", "--num_workers", "0", "--device", "cpu"]
    worker = ["-m", "tests.distributed_panoptic_worker"]
    proc = run([sys.executable, *worker, str(root / "one.json"), "--", *flags, "--output_dir", str(root / "one")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = run([*TORCHRUN, "--standalone", "--nproc_per_node", "2", *worker, str(root / "two.json"), "--", *flags,
                "--output_dir", str(root / "two")])
    assert proc.returncode == 0, proc.stderr[-3000:]
    return root


def val_image_ids(root: Path) -> list[int]:
    return sorted(im["id"] for im in json.loads((root / "data" / "annotations" / "panoptic_val.json").read_text())["images"])


@pytest.mark.parametrize("run_dir", ["one", "two"])
def test_every_image_has_one_png_and_one_prediction_and_nothing_else(evaluations: Path, run_dir: str) -> None:
    folder = evaluations / run_dir / PANOPTIC_EVAL_DIR
    ids = val_image_ids(evaluations)
    assert len(ids) == VAL_IMAGES
    pngs = {f"{image_id:012d}.png" for image_id in ids}
    assert sorted(p.name for p in folder.iterdir()) == sorted(pngs | {PREDICTIONS_FILE})  # no partial/temporary file
    annotations = json.loads((folder / PREDICTIONS_FILE).read_text())["annotations"]
    assert [a["image_id"] for a in annotations] == ids  # each image once, in id order
    for annotation in annotations:
        assert annotation["file_name"] == f"{annotation['image_id']:012d}.png"
        id_map = rgb2id(np.asarray(Image.open(folder / annotation["file_name"]).convert("RGB")))
        assert set(np.unique(id_map).tolist()) - {0} == {s["id"] for s in annotation["segments_info"]}
    leftovers = [p for p in (evaluations / run_dir).rglob("*") if TEMPORARY_FILE.match(p.name) or p.suffix == ".tmp"]
    assert leftovers == []


def test_two_processes_write_the_files_of_one(evaluations: Path) -> None:
    one, two = (evaluations / name / PANOPTIC_EVAL_DIR for name in ("one", "two"))
    assert (two / PREDICTIONS_FILE).read_bytes() == (one / PREDICTIONS_FILE).read_bytes()
    segments = 0
    for image_id in val_image_ids(evaluations):
        name = f"{image_id:012d}.png"
        assert (two / name).read_bytes() == (one / name).read_bytes(), name
        segments += len(np.unique(np.asarray(Image.open(one / name).convert("RGB")).reshape(-1, 3), axis=0))
    assert segments > 2 * VAL_IMAGES  # the PNGs differ from image to image (not all one segment): a real comparison


def test_two_processes_compute_the_pq_floats_of_one(evaluations: Path) -> None:
    one_text, two_text = ((evaluations / f"{name}.json").read_text() for name in ("one", "two"))
    assert two_text == one_text  # every float of All/Things/Stuff and per class, as JSON writes it (repr: exact)
    two = json.loads(two_text)
    assert two["num_images"] == VAL_IMAGES
    assert set(two["groups"]) == {"All", "Things", "Stuff"}
    tp = sum(c["tp"] for c in two["per_class"])
    assert tp > 0 and two["groups"]["All"]["pq"] > 0  # a true positive: IoU sums that are not just zeros
    assert sum(c["fp"] + c["fn"] for c in two["per_class"]) > 0
    # the 2-process files score, from disk, the floats the 2 processes computed in memory
    data = evaluations / "data"
    written = evaluations / "two" / PANOPTIC_EVAL_DIR
    again = evaluate_panoptic_files(data / "annotations" / "panoptic_val.json", written / PREDICTIONS_FILE,
                                    data / "panoptic", written)
    assert json.dumps(again.groups) == json.dumps(two["groups"])
