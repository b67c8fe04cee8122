"""Building a model from an official name/file or a checkpoint: architecture inference and weights."""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch

from torchdetr import build_model, hub
from torchdetr.errors import DownloadError, InputFileError, MissingFileError
from torchdetr.inference.loading import config_from_checkpoint, infer_architecture, load_model

from .conftest import rebuild_oracle_checkpoint
from .tiny import tiny_config

ORACLE_ARCH = {
    "tiny_r18_postnorm_sine": dict(backbone="resnet18", hidden_dim=64, enc_layers=2, dec_layers=3, num_queries=12,
                                   pre_norm=False, position_embedding="sine", masks=False, num_classes=20),
    "tiny_r50_prenorm_learned_dc5": dict(backbone="resnet50", hidden_dim=64, enc_layers=2, dec_layers=3,
                                         num_queries=12, pre_norm=True, position_embedding="learned", masks=False),
    "tiny_r50_panoptic": dict(backbone="resnet50", hidden_dim=128, enc_layers=2, dec_layers=2, num_queries=10,
                              masks=True, num_classes=250, dim_feedforward=256),
}


@pytest.mark.parametrize("name", sorted(ORACLE_ARCH))
def test_architecture_inferred_from_original_checkpoints(name, oracle_dir):
    path, fixture = rebuild_oracle_checkpoint(name, oracle_dir)
    state = torch.load(path, weights_only=False)["model"]
    inferred = infer_architecture(state)
    for key, value in ORACLE_ARCH[name].items():
        assert inferred[key] == value, key
    loaded = load_model(path)  # args present: nheads/dilation from them; weights load strictly
    assert loaded.config.nheads == fixture["args"]["nheads"] and loaded.config.dilation == fixture["args"]["dilation"]
    assert not loaded.model.training


def test_an_official_file_on_disk_is_recognised_by_its_name(tmp_path):
    """DC5 cannot be read from weights; the released file name tells it (and the categories)."""
    reference = hub.detr_resnet50_dc5().eval()
    path = tmp_path / "detr-r50-dc5-f0fb7ef5.pth"
    torch.save({"model": reference.state_dict()}, path)
    loaded = load_model(path)
    assert loaded.config.dilation and loaded.category_names[1] == "person"
    assert (loaded.image_size, loaded.max_size) == (800, 1333)  # the official models' input size (models.zoo)
    images = torch.rand(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(images)["pred_boxes"], reference(images)["pred_boxes"])


def test_args_disagreeing_with_weights_lose(tmp_path, caplog):
    cfg = tiny_config(dec_layers=1, dim_feedforward=32, num_queries=4, num_classes=3)
    model = build_model(cfg)[0]
    import argparse

    wrong = argparse.Namespace(**{**cfg.to_dict(), "num_queries": 9})
    with caplog.at_level("WARNING"):
        resolved = config_from_checkpoint({"model": model.state_dict(), "args": wrong})
    assert resolved.num_queries == 4 and "num_queries" in caplog.text


def test_ema_weights_are_preferred(tmp_path):
    cfg = tiny_config(dec_layers=1, dim_feedforward=32, num_queries=4, num_classes=3)
    raw, ema = build_model(cfg)[0], build_model(cfg)[0]
    import argparse

    torch.save({"model": raw.state_dict(), "ema": {"model": ema.state_dict()},
                "args": argparse.Namespace(**cfg.to_dict())}, tmp_path / "c.pth")
    loaded = load_model(tmp_path / "c.pth")
    torch.testing.assert_close(loaded.model.query_embed.weight, ema.query_embed.weight)
    loaded = load_model(tmp_path / "c.pth", use_ema=False)
    torch.testing.assert_close(loaded.model.query_embed.weight, raw.query_embed.weight)


def test_unknown_name_is_a_clear_error():
    with pytest.raises(MissingFileError, match="neither an official model name"):
        load_model("detr_resnet51")


# ------------------------------------------------------------------------------ downloads
@pytest.fixture
def offline_hub(tmp_path, monkeypatch) -> Path:
    """An empty torch hub cache and no network: every download attempt raises URLError."""
    def offline(*args, **kwargs):
        raise URLError("[Errno -3] Temporary failure in name resolution")

    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "hub"))
    return tmp_path / "hub" / "checkpoints"


def test_offline_official_model_is_one_download_error_naming_model_url_and_remedy(offline_hub):
    url = hub.OFFICIAL_MODELS["detr_resnet50"].url
    for call in (lambda: load_model("detr_resnet50"), lambda: hub.detr_resnet50(pretrained=True)):
        with pytest.raises(DownloadError) as info:
            call()
        message = str(info.value)
        assert "\n" not in message and message.startswith("detr_resnet50: could not download")
        assert url in message and "Temporary failure" in message
        assert str(offline_hub / "detr-r50-e632da11.pth") in message and "--model PATH" in message


def test_a_hash_mismatch_is_a_download_error(tmp_path, monkeypatch):
    def wrong_file(url, dst, hash_prefix=None, progress=True):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "0123abcd")')

    monkeypatch.setattr(torch.hub, "download_url_to_file", wrong_file)
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path))
    with pytest.raises(DownloadError, match=r"detr_resnet50: .*does not match its hash.*e632da11"):
        load_model("detr_resnet50")


def test_a_corrupt_cached_download_is_an_input_file_error_naming_the_file(offline_hub):
    offline_hub.mkdir(parents=True)
    (offline_hub / "detr-r50-e632da11.pth").write_bytes(b"\x00 truncated")
    with pytest.raises(InputFileError, match=r"detr-r50-e632da11\.pth"):
        load_model("detr_resnet50")


def test_backbone_weights_report_only_download_failures_as_such(offline_hub, tmp_path):
    from torchdetr.models.backbone import imagenet_state_dict

    with pytest.raises(DownloadError, match=r"ImageNet weights of resnet18.*--backbone_weights PATH"):
        imagenet_state_dict("resnet18")
    corrupt = tmp_path / "resnet18.pth"
    corrupt.write_bytes(b"not a state dict")
    with pytest.raises(InputFileError, match=r"resnet18\.pth"):
        imagenet_state_dict("resnet18", str(corrupt))
    cached = offline_hub / "resnet18-f37072fd.pth"  # torchvision's file name
    cached.parent.mkdir(parents=True, exist_ok=True)
    cached.write_bytes(b"damaged")
    with pytest.raises(InputFileError, match=r"resnet18-f37072fd\.pth"):
        imagenet_state_dict("resnet18")
