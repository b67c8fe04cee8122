"""Shared test fixtures: paths to ../shared, oracle checkpoints rebuilt in the official format."""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from torchdetr.structures import rgb2id

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("TORCHDETR_SHARED", ROOT.parent / "shared"))
REFERENCE = SHARED / "reference"
ORACLE = REFERENCE / "oracle"
DATA = SHARED / "data"
# two real COCO val2017 images with their official panoptic ground truth (annotations/panoptic_examples.json + PNGs)
PANOPTIC_SAMPLE = DATA / "coco_panoptic_sample"
PANOPTIC_SAMPLE_JSON = PANOPTIC_SAMPLE / "annotations" / "panoptic_examples.json"
PANOPTIC_SAMPLE_PNGS = PANOPTIC_SAMPLE / "annotations" / "panoptic_examples"

# Set by .ci/run: a missing ../shared fixture fails the test instead of skipping it, so that the oracle
# ("faithful to the original") tests cannot pass CI as skipped. Users without ../shared still skip.
REQUIRE_SHARED_VARIABLE = "TORCHDETR_REQUIRE_SHARED"
# Set by .ci/run too: a package of the `test` extra (pyproject.toml) that cannot be imported fails the tests that
# need it instead of skipping them, so a broken install cannot leave a feature untested in a green CI run.
REQUIRE_EXTRAS_VARIABLE = "TORCHDETR_REQUIRE_EXTRAS"
# Set by .ci/run too: tests/test_serve_browser.py fails instead of skipping without Playwright or Chromium.
REQUIRE_BROWSER_VARIABLE = "TORCHDETR_REQUIRE_BROWSER"

torch.set_num_threads(min(2, torch.get_num_threads()))


def switched_on(variable: str) -> bool:
    """Whether one of the CI switches above is set (any value but empty, ``0``, ``false`` or ``no``)."""
    return os.environ.get(variable, "").strip().lower() not in ("", "0", "false", "no")


def shared_required() -> bool:
    """Whether ``TORCHDETR_REQUIRE_SHARED`` asks for every ../shared fixture to be present."""
    return switched_on(REQUIRE_SHARED_VARIABLE)


def require(path: Path) -> Path:
    """Skip the calling test when a file of ../shared is absent (fail instead under ``TORCHDETR_REQUIRE_SHARED=1``)."""
    if not path.exists():
        message = f"{path} not available (../shared is absent)"
        if shared_required():
            pytest.fail(f"{message}; {REQUIRE_SHARED_VARIABLE} is set (CI), so the fixtures must be there")
        pytest.skip(message)
    return path


def extras_required() -> bool:
    """Whether ``TORCHDETR_REQUIRE_EXTRAS`` asks for every package of the ``test`` extra to be importable."""
    return switched_on(REQUIRE_EXTRAS_VARIABLE)


def require_package(name: str, reason: str | None = None):
    """``pytest.importorskip(name)``, except under ``TORCHDETR_REQUIRE_EXTRAS=1`` (CI), where a missing package fails."""
    if extras_required():
        try:
            return importlib.import_module(name)
        except ImportError as err:
            pytest.fail(f"{name} cannot be imported ({err}); {REQUIRE_EXTRAS_VARIABLE} is set (CI), so the test extra "
                        "must be installed")
    return pytest.importorskip(name, reason=reason)


def package_missing(name: str) -> bool:
    """For ``skipif``: the package is absent and CI does not require it (under CI the test runs and fails)."""
    try:
        absent = importlib.util.find_spec(name) is None
    except ModuleNotFoundError:  # a dotted name whose parent package is absent
        absent = True
    return absent and not extras_required()


def png_id_map(path: Path) -> np.ndarray:
    """int64 [H, W] segment ids of a COCO panoptic PNG (id = R + 256·G + 256²·B), decoded by PIL and ``rgb2id``
    only (not by the loader under test, ``torchdetr.data.io.load_segment_ids``)."""
    return rgb2id(np.asarray(Image.open(path).convert("RGB")))


def _decode(entry: dict) -> torch.Tensor:
    if "q" in entry:
        return entry["q"].to(torch.float32) * entry["scale"]
    return entry["raw"]


_BACKBONES: dict[str, dict] = {}


def rebuild_oracle_checkpoint(name: str, out_dir: Path) -> tuple[Path, dict]:
    """Rebuild ``{"model", "args"}`` of an oracle fixture, save it as .pth; return (path, fixture)."""
    fixture = torch.load(require(ORACLE / f"{name}.pt"), weights_only=True)
    backbone_file = fixture["backbone_file"]
    if backbone_file not in _BACKBONES:
        _BACKBONES[backbone_file] = torch.load(ORACLE / backbone_file, weights_only=True)
    entries = {k: _decode(v) for k, v in fixture["weights"].items()}
    prefix = fixture["backbone_prefix"]
    for k, v in _BACKBONES[backbone_file].items():
        entries[prefix + k] = _decode(v) if isinstance(v, dict) else v
    state = {k: entries[k] for k in fixture["state_dict_keys"]}
    path = out_dir / f"{name}.pth"
    torch.save({"model": state, "args": argparse.Namespace(**fixture["args"])}, path)
    return path, fixture


@pytest.fixture(scope="session")
def oracle_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("oracle")
