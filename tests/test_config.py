"""torchdetr.config: grouped options, the architecture part (ModelConfig), typed flags and files, validation."""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import logging
import typing
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import yaml

from torchdetr.cli import main as cli_main
from torchdetr.config import (
    GROUPS,
    DETRConfig,
    ModelConfig,
    _option,
    add_config_arguments,
    check_compatibility_options,
    coerce_value,
    config_from_args,
    field_types,
    model_field_names,
    read_config_file,
    select_options,
)
from torchdetr.errors import ConfigError, MissingFileError

from .conftest import ROOT
from .tiny import TINY_MODEL

PACKAGE = ROOT / "torchdetr"
TINY = TINY_MODEL | dict(dec_layers=1, dim_feedforward=32, num_queries=4, num_classes=3)

# the flags of facebookresearch/detr's main.py (its get_args_parser), which checkpoints store as `args`
ORIGINAL_FLAGS = (
    "lr", "lr_backbone", "batch_size", "weight_decay", "epochs", "lr_drop", "clip_max_norm", "frozen_weights",
    "backbone", "dilation", "position_embedding", "enc_layers", "dec_layers", "dim_feedforward", "hidden_dim",
    "dropout", "nheads", "num_queries", "pre_norm", "masks", "aux_loss", "set_cost_class", "set_cost_bbox",
    "set_cost_giou", "mask_loss_coef", "dice_loss_coef", "bbox_loss_coef", "giou_loss_coef", "eos_coef",
    "dataset_file", "coco_path", "coco_panoptic_path", "remove_difficult", "output_dir", "device", "seed", "resume",
    "start_epoch", "eval", "num_workers", "world_size", "dist_url",
)


def _parser(**selection) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config")
    add_config_arguments(parser, **selection)
    return parser


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


# ---------------------------------------------------------------- structure: groups and the architecture part
def test_every_option_has_a_group_and_help_and_the_original_flags_are_all_there():
    fields = dataclasses.fields(DETRConfig)
    assert all(f.metadata["group"] in GROUPS and f.metadata["help"] for f in fields)
    assert set(ORIGINAL_FLAGS) <= {f.name for f in fields}
    assert {f.metadata["group"] for f in fields} == set(GROUPS)


def test_model_config_is_the_model_group_and_a_base_of_the_run_config():
    assert issubclass(DETRConfig, ModelConfig)
    assert model_field_names() == tuple(f.name for f in dataclasses.fields(ModelConfig))
    model_group = [f.name for f in dataclasses.fields(DETRConfig) if f.metadata["group"] == "model"]
    assert model_group == list(model_field_names())


def test_flat_construction_and_access_stay_and_model_is_the_architecture_alone():
    cfg = DETRConfig(**TINY, lr=3e-4, epochs=7, output_dir="runs/x")
    assert (cfg.backbone, cfg.lr, cfg.epochs) == ("resnet18", 3e-4, 7)
    arch = cfg.model
    assert type(arch) is ModelConfig and arch.hidden_dim == 32
    assert arch.backbone_norm == "batch"  # resolved: backbone_weights none → trainable BatchNorm
    assert DETRConfig(**{**TINY, "backbone_weights": "imagenet"}).model.backbone_norm == "frozen"
    rebuilt = DETRConfig.from_model_config(arch, lr=3e-4)
    assert rebuilt.model == arch and rebuilt.lr == 3e-4 and rebuilt.epochs == DETRConfig().epochs
    assert hash(arch) == hash(ModelConfig(**arch.to_dict()))


def test_configs_are_frozen_and_replace_validates_again():
    cfg = DETRConfig(**TINY)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.lr = 1.0  # type: ignore[misc]
    assert cfg.replace(lr=2e-4).lr == 2e-4
    with pytest.raises(ConfigError, match="--lr"):
        cfg.replace(lr=-1.0)


def test_path_values_of_text_options_are_kept_as_text():
    cfg = DETRConfig(output_dir=Path("runs") / "a", coco_path=Path("data"))
    assert cfg.output_dir == str(Path("runs") / "a") and cfg.coco_path == "data"
    json.dumps(cfg.to_dict())  # still serialisable (export metadata, YAML)


class _RecordingConfig:
    """Forwards attribute reads to a config and records their names."""

    def __init__(self, cfg: DETRConfig) -> None:
        object.__setattr__(self, "_cfg", cfg)
        object.__setattr__(self, "read", set())

    def __getattr__(self, name: str):
        self.read.add(name)
        return getattr(self._cfg, name)


# read by the builders but not architecture: which parameters train, and (reported to the models layer)
# the dataset kind deciding whether a mask model gets the panoptic post-processor
TRAINING_SWITCHES = {"lr_backbone", "frozen_weights", "resolved_backbone_norm"}
POSTPROCESSING_FROM_DATA = {"dataset_file"}


@pytest.mark.parametrize("overrides", [
    {},
    {"variant": "dab", "two_stage": True, "cls_loss": "focal"},
    {"hidden_dim": 128, "nheads": 8, "masks": True, "pre_norm": True, "position_embedding": "learned"},
])
def test_the_builders_read_the_architecture_and_nothing_else(overrides):
    """``ModelConfig`` is complete: the network and post-processors are built from its fields only."""
    from torchdetr.models.build import build_detector, build_postprocessors

    cfg = DETRConfig(**{**TINY, **overrides})
    recorder = _RecordingConfig(cfg)
    model = build_detector(recorder)  # type: ignore[arg-type]
    postprocessors = build_postprocessors(recorder)  # type: ignore[arg-type]
    unexpected = recorder.read - set(model_field_names()) - TRAINING_SWITCHES - POSTPROCESSING_FROM_DATA
    assert not unexpected, f"the builders read {unexpected}: architecture fields missing from ModelConfig?"
    # the same architecture with every other option at its default builds the same network
    again = build_detector(DETRConfig.from_model_config(cfg.model))
    assert {k: v.shape for k, v in again.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    assert set(build_postprocessors(DETRConfig.from_model_config(cfg.model))) == set(postprocessors)


def test_a_checkpoint_reads_back_its_architecture(tmp_path):
    from torchdetr.inference.loading import load_model
    from torchdetr.models.build import build_detector

    cfg = DETRConfig(**{**TINY, "variant": "dab", "cls_loss": "focal"}, lr=5e-4, epochs=3, image_size=96)
    torch.save({"model": build_detector(cfg).state_dict(), "args": argparse.Namespace(**cfg.to_dict())},
               tmp_path / "c.pth")
    loaded = load_model(tmp_path / "c.pth")
    assert loaded.config.model == cfg.model
    assert (loaded.config.lr, loaded.config.image_size) == (5e-4, 96)


def test_old_checkpoint_args_with_unknown_and_refused_values_still_load(caplog):
    """The original's Namespace (plus keys of other versions/forks, and values this version refuses)."""
    original = {name: getattr(DETRConfig(), name) for name in ORIGINAL_FLAGS}
    args = {**original, **TINY, "device": "cuda", "distributed": True, "gpu": 0, "rank": 3, "some_fork_option": [1],
            "dataset_file": "kitti", "num_workers": -5}
    with caplog.at_level(logging.WARNING):
        cfg = DETRConfig.from_checkpoint_args(args, source="old.pth")
    assert cfg.model == DETRConfig(**TINY).model
    assert cfg.dataset_file == "coco" and cfg.num_workers == 2 and cfg.device == "auto"
    assert "old.pth" in caplog.text and "dataset_file" in caplog.text and "num_workers" in caplog.text
    contradicting = {**args, "dataset_file": "coco", "coco_panoptic_path": "/data/panoptic", "image_size": 96}
    cfg = DETRConfig.from_checkpoint_args(contradicting, source="old.pth")
    assert cfg.coco_panoptic_path is None and cfg.image_size == 96  # only the contradicting option is dropped
    with pytest.raises(ConfigError, match=r"old\.pth: .*--hidden_dim"):
        DETRConfig.from_checkpoint_args({**args, "hidden_dim": 30, "nheads": 8}, source="old.pth")


def test_checkpoint_args_keep_every_name_and_value():
    from torchdetr.engine.checkpoint import checkpoint_dict

    cfg = DETRConfig(**TINY, lr=5e-4)
    args = checkpoint_dict(torch.nn.Linear(1, 1), None, None, 0, cfg)["args"]
    assert isinstance(args, argparse.Namespace) and vars(args) == cfg.to_dict()
    assert set(ORIGINAL_FLAGS) <= set(vars(args))


# ---------------------------------------------------------------- types from the type objects
def test_field_types_are_type_objects_not_strings():
    hints = field_types()
    assert hints["lr"] is float and hints["epochs"] is int and hints["eval"] is bool and hints["backbone"] is str
    assert hints["max_size"] == int | None and hints["coco_path"] == str | None
    assert not any(isinstance(h, str) for h in hints.values())


@pytest.mark.parametrize("hint", [float | None, typing.Optional[float]])  # noqa: UP045 (both spellings)
def test_an_optional_float_parses_as_float(hint):
    assert coerce_value("1e-4", hint) == pytest.approx(1e-4) and isinstance(coerce_value("2", hint), float)
    assert coerce_value(None, hint) is None
    with pytest.raises(ValueError, match="not a number"):
        coerce_value("abc", hint)


@dataclass(frozen=True)
class _WithThreshold(DETRConfig):
    score_threshold: float | None = _option(None, "a float | None option", "run", ge=0, le=1)


def test_flags_take_their_types_from_the_fields():
    parser = _parser()
    args = parser.parse_args(["--lr", "1e-4", "--epochs", "3", "--max_size", "640", "--masks", "--pre_norm", "false",
                              "--coco_path", "123"])
    assert (args.lr, args.epochs, args.max_size, args.masks, args.pre_norm, args.coco_path) == (
        1e-4, 3, 640, True, False, "123")
    assert isinstance(args.lr, float) and isinstance(args.epochs, int)
    threshold = argparse.ArgumentParser()
    add_config_arguments(threshold, groups=(), include=("score_threshold",), config_class=_WithThreshold)
    value = threshold.parse_args(["--score_threshold", "0.25"]).score_threshold
    assert value == 0.25 and isinstance(value, float)
    with pytest.raises(SystemExit):
        threshold.parse_args(["--score_threshold", "high"])


@pytest.mark.parametrize("flags", [["--epochs", "3.5"], ["--lr", "fast"], ["--eval", "maybe"], ["--backbone", "vgg16"],
                                   ["--dataset_file", "voc"]])
def test_bad_flag_values_are_refused_by_the_parser(flags, capsys):
    with pytest.raises(SystemExit) as exit_info:
        _parser().parse_args(flags)
    assert exit_info.value.code == 2 and flags[0] in capsys.readouterr().err


def test_select_options_by_group_include_and_exclude():
    names = {f.name for f in select_options(groups=("loss",), include=("lr",), exclude=("eos_coef",))}
    assert "set_cost_class" in names and "lr" in names and "eos_coef" not in names and "epochs" not in names
    with pytest.raises(KeyError, match="hiden_dim"):
        select_options(include=("hiden_dim",))
    with pytest.raises(KeyError, match="optimization"):
        select_options(groups=("optimization",))


# ---------------------------------------------------------------- typed config files
def test_pyyaml_reads_1e_4_as_text_and_the_config_reads_it_as_a_number(tmp_path):
    text = "lr: 1e-4\neval: 'false'\nepochs: '3'\nmax_size: null\ndilation: yes\n"
    assert yaml.safe_load(text)["lr"] == "1e-4"  # YAML 1.1: no dot, no float
    path = _write(tmp_path / "c.yaml", text)
    cfg = DETRConfig.from_file(path)
    assert cfg.lr == 1e-4 and cfg.eval is False and cfg.epochs == 3 and cfg.max_size is None and cfg.dilation is True


def test_json_values_are_coerced_too(tmp_path):
    path = _write(tmp_path / "c.json", json.dumps({"eval": "false", "lr_drop": 100.0, "batch_size": "4", "lr": 2}))
    cfg = DETRConfig.from_file(path)
    assert (cfg.eval, cfg.lr_drop, cfg.batch_size, cfg.lr) == (False, 100, 4, 2)


@pytest.mark.parametrize(("text", "key", "value"), [
    ("epochs: abc\n", "epochs", "'abc'"),
    ("eval: maybe\n", "eval", "'maybe'"),
    ("lr: [1, 2]\n", "lr", "[1, 2]"),
    ("backbone: vgg16\n", "backbone", "'vgg16'"),
    ("dataset_file: voc\n", "dataset_file", "'voc'"),
    ("epochs: 0\n", "epochs", "0"),
    ("device: gpu\n", "device", "'gpu'"),
    ("seed: 1.5\n", "seed", "1.5"),
    ("batch_size: null\n", "batch_size", "None"),
    ("amp: false\n", "amp", "False"),
])
def test_a_bad_value_in_a_file_names_file_key_and_value_in_one_line(tmp_path, text, key, value):
    path = _write(tmp_path / "bad.yaml", text)
    with pytest.raises(ConfigError) as err:
        DETRConfig.from_file(path)
    message = str(err.value)
    assert message.startswith(f"{path}: {key}: {value}") and "\n" not in message


@pytest.mark.parametrize(("name", "text", "match"), [
    ("broken.yaml", "lr: [1\n", "not valid YAML"),
    ("broken.json", "{\"lr\": }", "not valid JSON"),
    ("list.yaml", "- lr\n- 1\n", "mapping of option names"),
    ("typo.yaml", "hiden_dim: 3\n", "unknown option.*hiden_dim"),
])
def test_unreadable_config_files_are_one_line_errors(tmp_path, name, text, match):
    path = _write(tmp_path / name, text)
    with pytest.raises(ConfigError, match=match) as err:
        DETRConfig.from_file(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_missing_config_file_and_empty_file(tmp_path):
    with pytest.raises(MissingFileError, match=r"nothing\.yaml"):
        read_config_file(tmp_path / "nothing.yaml")
    assert DETRConfig.from_file(_write(tmp_path / "empty.yaml", "# nothing set\n")) == DETRConfig()


def test_file_then_flags_merge_and_a_bad_file_value_stops_the_cli(tmp_path, capsys):
    path = _write(tmp_path / "c.yaml", "hidden_dim: 128\nnheads: 4\nlr: 1e-4\neval: 'false'\n")
    cfg = config_from_args(_parser().parse_args(["--config", str(path), "--nheads", "8"]))
    assert (cfg.hidden_dim, cfg.nheads, cfg.lr, cfg.eval) == (128, 8, 1e-4, False)
    bad = _write(tmp_path / "bad.yaml", "epochs: abc\n")
    out = tmp_path / "run"
    assert cli_main(["train", "--config", str(bad), "--output_dir", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "epochs" in err and "'abc'" in err
    assert not out.exists()


@pytest.mark.parametrize("name", sorted(p.name for p in (ROOT / "configs").glob("*.yaml")))
def test_the_shipped_config_files_are_valid(name):
    cfg = DETRConfig.from_file(ROOT / "configs" / name)
    assert cfg != DETRConfig()


# ---------------------------------------------------------------- validation before any work
@pytest.mark.parametrize(("option", "value"), [
    ("epochs", -1), ("epochs", 0), ("lr_drop", 0), ("batch_size", 0), ("num_workers", -1), ("num_groups", 0),
    ("dn_groups", -1), ("eval_every", 0), ("time_budget", -1.0), ("print_freq", 0), ("image_size", 0), ("max_size", 0),
    ("num_queries", 0), ("dec_layers", 0), ("enc_layers", -1), ("hidden_dim", 0), ("nheads", 0), ("num_classes", 0),
    ("num_train", 0), ("num_val", 0), ("warmup_iters", -1), ("seed", -1), ("start_epoch", -1), ("world_size", 0),
    ("lr", -1e-4), ("weight_decay", -0.1), ("clip_max_norm", -1.0), ("dropout", 1.0), ("ema_decay", 1.0),
    ("ema_decay", 0.0), ("min_lr_ratio", 1.5), ("dn_label_noise", 1.5), ("dn_box_noise", -0.1), ("focal_alpha", 2.0),
    ("eos_coef", -0.1), ("set_cost_giou", -1.0), ("device", "gpu"), ("device", "cuda:x"), ("device", ""),
    ("dist_url", "localhost"), ("backbone", "vgg16"), ("amp", "fp8"), ("lr_schedule", "linear"),
    ("epochs", "3"), ("eval", "false"), ("lr", float("nan")), ("masks", 1), ("output_dir", None),
])
def test_every_bad_option_is_refused_naming_option_and_value(option, value):
    with pytest.raises(ConfigError) as err:
        DETRConfig(**{option: value})
    assert f"--{option}" in str(err.value) and repr(value) in str(err.value)


@pytest.mark.parametrize(("options", "match"), [
    ({"epochs": 5, "start_epoch": 5}, "nothing to train"),
    ({"hidden_dim": 30, "nheads": 8}, "divisible by --nheads"),
    ({"hidden_dim": 64, "masks": True}, "--masks needs"),
    ({"variant": "dab", "masks": True, "hidden_dim": 128}, "--variant dab"),
    ({"two_stage": True}, "--two_stage needs --variant dab"),
    ({"variant": "dab", "two_stage": True, "num_groups": 2}, "--two_stage needs --num_groups 1"),
    ({"frozen_weights": "det.pth"}, "--frozen_weights"),
    ({"masks": True, "hidden_dim": 128, "dn_groups": 2}, "not with --masks"),
    ({"coco_panoptic_path": "/data/panoptic"}, "--coco_panoptic_path"),
])
def test_options_that_do_not_fit_together_are_refused(options, match):
    with pytest.raises(ConfigError, match=match):
        DETRConfig(**options)


def test_good_values_at_the_bounds_are_accepted():
    DETRConfig(epochs=1, enc_layers=0, num_workers=0, dn_groups=0, time_budget=0, dropout=0.0, min_lr_ratio=1.0,
               device="cuda:1", dist_url="tcp://10.0.0.1:23456", eval=True, start_epoch=3)


def test_nothing_is_written_when_an_option_is_bad(tmp_path, capsys):
    out = tmp_path / "run"
    code = cli_main(["train", "--dataset_file", "synthetic", "--epochs", "-1", "--output_dir", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "--epochs" in err and "-1" in err and "Traceback" not in err and not out.exists()


# ---------------------------------------------------------------- every option is read, or refused/checked
def _attributes_read_outside_config() -> set[str]:
    """Names of options read from a config object (``cfg.lr``, ``loaded.config.image_size``…) outside config.py."""
    names = {f.name for f in dataclasses.fields(DETRConfig)}
    read: set[str] = set()
    for path in PACKAGE.rglob("*.py"):
        if path == PACKAGE / "config.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute):
                base = ast.unparse(node.value).split(".")[-1].lower()
                if base.endswith(("cfg", "config", "config()")):
                    read.add(node.attr)
    derived = _fields_read_by_properties()
    for prop in read & set(derived):
        read |= derived[prop]
    return read & names


def _fields_read_by_properties() -> dict[str, set[str]]:
    """``resolved_*`` properties of config.py → the fields they read."""
    tree = ast.parse((PACKAGE / "config.py").read_text())
    found: dict[str, set[str]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef) and node.name.startswith("resolved_"):
            found.setdefault(node.name, set()).update(
                n.attr for n in ast.walk(node) if isinstance(n, ast.Attribute) and ast.unparse(n.value) == "self")
    return found


def test_every_option_is_read_somewhere_or_is_a_listed_compatibility_option():
    compat = {f.name for f in dataclasses.fields(DETRConfig) if f.metadata["compat"]}
    assert compat == {"remove_difficult", "world_size"}  # each tested below
    unread = {f.name for f in dataclasses.fields(DETRConfig)} - _attributes_read_outside_config() - compat
    assert not unread, f"options accepted but read by no module: {sorted(unread)}"


def test_world_size_is_checked_against_torchrun(monkeypatch, capsys):
    check_compatibility_options({"world_size": 2}, environ={"WORLD_SIZE": "2"})
    check_compatibility_options({}, environ={"WORLD_SIZE": "8"})  # not given: informational default
    with pytest.raises(ConfigError, match="--world_size 4: torchrun started 2"):
        check_compatibility_options({"world_size": 4}, environ={"WORLD_SIZE": "2"})
    with pytest.raises(ConfigError, match="--world_size 2: this is a single process"):
        check_compatibility_options({"world_size": 2}, environ={})
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert cli_main(["train", "--world_size", "2", "--dataset_file", "synthetic"]) == 2
    assert "--world_size 2" in capsys.readouterr().err


def test_remove_difficult_warns_that_it_has_no_effect(caplog):
    with caplog.at_level(logging.WARNING, logger="torchdetr.config"):
        cfg = config_from_args(_parser().parse_args(["--remove_difficult"]))
    assert cfg.remove_difficult and "--remove_difficult has no effect" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="torchdetr.config"):
        config_from_args(_parser().parse_args([]))
    assert "remove_difficult" not in caplog.text


def test_panoptic_data_options(capsys):
    assert DETRConfig(dataset_file="coco_panoptic").dataset_file == "coco_panoptic"
    cfg = config_from_args(_parser().parse_args(["--dataset_file", "coco_panoptic", "--coco_panoptic_path", "/data/pan"]))
    assert (cfg.dataset_file, cfg.coco_panoptic_path) == ("coco_panoptic", "/data/pan")
    with pytest.raises(ConfigError, match="--coco_panoptic_path '/data/panoptic' is read with --dataset_file coco_panoptic"):
        config_from_args(_parser().parse_args(["--coco_panoptic_path", "/data/panoptic"]))
    assert "{coco,coco_panoptic,synthetic}" in _parser().format_help()
