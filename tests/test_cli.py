"""The ``detr`` command framework: registered commands, per-command help, the error policy, ``python -m torchdetr``."""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import os
import subprocess
import sys

import pytest

import torchdetr.cli as cli
from torchdetr.config import DETRConfig
from torchdetr.errors import ConfigError, DataError, DownloadError, MissingFileError, UserError

from .conftest import ROOT


def _run_module(*args: str, code: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    command = [sys.executable, "-c", code, *args] if code else [sys.executable, "-m", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=300, env=env, cwd=ROOT)


def _help(command: str, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        cli.main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


# ---------------------------------------------------------------- commands
def test_every_registered_command_has_its_module():
    for name, module in cli.COMMANDS.items():
        assert importlib.util.find_spec(f"torchdetr.cli.{module}") is not None, name
    assert "serve" in cli.COMMANDS


def test_a_missing_command_module_is_an_error_not_a_hidden_command(monkeypatch):
    monkeypatch.setitem(cli.COMMANDS, "ghost", "ghost")
    with pytest.raises(ModuleNotFoundError, match=r"torchdetr\.cli\.ghost"):
        cli.build_parser()


def test_an_unknown_command_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(["ghost"])
    assert exit_info.value.code == 2 and "invalid choice: 'ghost'" in capsys.readouterr().err


# ---------------------------------------------------------------- help: each command shows what it uses
@pytest.mark.parametrize("command", sorted(cli.COMMANDS))
def test_every_command_has_help(command, capsys):
    assert f"detr {command}" in _help(command, capsys)


def _flags(text: str) -> set[str]:
    return {word.strip("[],") for word in text.split() if word.startswith(("--", "[--"))}


def test_train_help_lists_every_option(capsys):
    flags = _flags(_help("train", capsys))
    expected = {f"--{f.name}" for f in dataclasses.fields(DETRConfig)} | {"--no_aux_loss"}
    assert expected - {"--aux_loss"} <= flags  # --aux_loss VALUE is accepted but hidden (--no_aux_loss is the flag)


def test_eval_help_shows_data_and_run_options_not_the_architecture_or_training(capsys):
    flags = _flags(_help("eval", capsys))
    assert {"--model", "--coco_path", "--dataset_file", "--batch_size", "--resume", "--device", "--num_workers"} <= flags
    assert not {"--hidden_dim", "--backbone", "--lr", "--epochs", "--num_groups", "--set_cost_class", "--eval"} & flags


def test_info_help_shows_the_model_not_data_or_training(capsys):
    flags = _flags(_help("info", capsys))
    assert {"--backbone", "--hidden_dim", "--num_queries", "--masks", "--set_cost_class", "--config"} <= flags
    assert not {"--lr", "--epochs", "--coco_path", "--output_dir", "--batch_size", "--num_workers"} & flags


def test_info_still_runs_with_its_options(capsys):
    code = cli.main(["info", "--backbone", "resnet18", "--backbone_weights", "none", "--hidden_dim", "32", "--nheads",
                     "2", "--enc_layers", "1", "--dec_layers", "1", "--dim_feedforward", "32", "--num_queries", "4",
                     "--num_classes", "3", "--image", "64", "64"])
    out = capsys.readouterr().out
    assert code == 0 and "pred_logits: [1, 4, 4]" in out


# ---------------------------------------------------------------- the error policy
def _with_command(monkeypatch, error: BaseException) -> None:
    """Replace the parser by one whose ``boom`` command raises ``error``."""

    def build_parser(only=None):
        parser = argparse.ArgumentParser(prog="detr")
        parser.add_argument("-v", "--verbose", action="store_true")
        sub = parser.add_subparsers(dest="command")
        boom = sub.add_parser("boom")

        def run(args):
            raise error

        boom.set_defaults(func=run)
        return parser

    monkeypatch.setattr(cli, "build_parser", build_parser)


@pytest.mark.parametrize("error", [ConfigError("--lr: -1 must be >= 0"), DataError("a.json: image 3: no file"),
                                   MissingFileError("--model: x.pth not found"), DownloadError("https://x: offline"),
                                   UserError("some user mistake")])
def test_a_user_error_is_one_line_with_exit_code_2(monkeypatch, capsys, error):
    _with_command(monkeypatch, error)
    assert cli.main(["boom"]) == 2
    err = capsys.readouterr().err
    assert err == f"detr boom: error: {error}\n"


@pytest.mark.parametrize("error", [RuntimeError("internal"), ValueError("a bug"), KeyError("missing_key"),
                                   TypeError("bad call"), AssertionError()])
def test_anything_else_is_a_bug_and_keeps_its_traceback(monkeypatch, error):
    _with_command(monkeypatch, error)
    with pytest.raises(type(error)):
        cli.main(["boom"])


def test_verbose_shows_the_traceback_of_user_errors_too(monkeypatch):
    _with_command(monkeypatch, ConfigError("--lr: bad"))
    with pytest.raises(ConfigError):
        cli.main(["-v", "boom"])


def test_only_user_errors_are_one_line():
    assert cli.is_user_error(ConfigError("x")) and cli.is_user_error(UserError("x"))
    assert not any(cli.is_user_error(e) for e in (ValueError("x"), KeyError("x"), FileNotFoundError("x"), RuntimeError("x")))


def test_a_bug_prints_a_traceback_and_a_user_error_one_line_in_a_real_process():
    script = ("import sys, torchdetr.cli as cli\n"
              "def run(args): raise {}\n"
              "def build_parser(only=None):\n"
              "    import argparse\n"
              "    p = argparse.ArgumentParser(prog='detr'); p.add_argument('-v', '--verbose', action='store_true')\n"
              "    s = p.add_subparsers(dest='command'); s.add_parser('boom').set_defaults(func=run); return p\n"
              "cli.build_parser = build_parser\n"
              "sys.exit(cli.main(['boom']))\n")
    bug = _run_module(code=script.format("KeyError('internal')"))
    assert bug.returncode == 1 and "Traceback" in bug.stderr and "KeyError: 'internal'" in bug.stderr
    user = _run_module(code=script.format("__import__('torchdetr.errors').errors.ConfigError('--lr: -1 must be >= 0')"))
    assert user.returncode == 2 and user.stderr == "detr boom: error: --lr: -1 must be >= 0\n"


# ---------------------------------------------------------------- python -m torchdetr
def test_python_m_torchdetr_is_the_detr_command():
    result = _run_module("torchdetr", "--help")
    assert result.returncode == 0 and "train" in result.stdout and "predict" in result.stdout
    bad = _run_module("torchdetr", "train", "--epochs", "-1", "--dataset_file", "synthetic")
    assert bad.returncode == 2 and bad.stderr.strip() == "detr train: error: --epochs: -1 must be >= 1"
    assert _run_module("torchdetr.cli", "info", "--help").returncode == 0  # torchrun's form still works
