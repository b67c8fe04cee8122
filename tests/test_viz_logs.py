"""Training-log plots: hand-made log files, closed-form smoothing, the ``detr plot logs`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from torchdetr.cli import main
from torchdetr.viz.logs import COCO_STATS, ewm_mean, field_series, plot_logs, read_log


def _write_run(run_dir: Path, epochs: int, offset: float = 0.0, eval_every: int = 1) -> Path:
    run_dir.mkdir(parents=True)
    lines = []
    for epoch in range(epochs):
        row = {"epoch": epoch, "train_loss": 10.0 - epoch + offset, "train_class_error": 50.0 - 5 * epoch,
               "n_parameters": 1234}
        if epoch % eval_every == 0:
            row |= {"test_loss": 11.0 - epoch + offset, "test_class_error": 60.0 - 5 * epoch,
                    "test_coco_eval_bbox": [0.1 * epoch + 0.01 * i for i in range(12)]}
        lines.append(json.dumps(row))
    (run_dir / "log.txt").write_text("\n".join(lines) + "\n")
    return run_dir


def _ewm_by_weights(x: np.ndarray, com: float) -> np.ndarray:
    """Direct definition: y_t = Σ w_i x_i / Σ w_i with w_i = (1 - α)^(t - i), α = 1 / (1 + com)."""
    alpha = 1 / (1 + com)
    out = []
    for t in range(len(x)):
        w = (1 - alpha) ** np.arange(t, -1, -1)
        out.append(float((w * x[: t + 1]).sum() / w.sum()))
    return np.asarray(out)


def test_ewm_mean_matches_the_definition():
    x = np.array([3.0, -1.0, 4.0, 1.0, 5.0, 9.0])
    np.testing.assert_allclose(ewm_mean(x, 0.0), x)
    for com in (0.5, 1.0, 3.0):
        np.testing.assert_allclose(ewm_mean(x, com), _ewm_by_weights(x, com))
    np.testing.assert_allclose(ewm_mean(np.full(5, 2.5), 4.0), np.full(5, 2.5))
    np.testing.assert_allclose(ewm_mean([0.0, 1.0], 1.0), [0.0, 2 / 3])  # α = 1/2: (1 + 0.5·0) / (1 + 0.5)
    with pytest.raises(ValueError, match="ewm_col"):
        ewm_mean(x, -1.0)


def test_field_series_reads_coco_stats_and_skips_missing_epochs(tmp_path):
    records = read_log(_write_run(tmp_path / "run", epochs=5, eval_every=2) / "log.txt")
    epochs, values = field_series(records, "mAP")
    np.testing.assert_array_equal(epochs, [0, 2, 4])
    np.testing.assert_allclose(values, [0.0, 0.2, 0.4])  # stats[0] of each evaluated epoch
    _, ap50 = field_series(records, "AP50")
    np.testing.assert_allclose(ap50, [0.01, 0.21, 0.41])
    epochs, values = field_series(records, "train_loss")
    np.testing.assert_array_equal(epochs, range(5))
    assert len(COCO_STATS) == 12


def test_plot_logs_overlays_runs_train_solid_test_dashed(tmp_path):
    runs = [_write_run(tmp_path / "a", 4), _write_run(tmp_path / "b", 6, offset=2.0)]
    fig = plot_logs(runs, fields=("loss", "class_error", "mAP"), ewm_col=1.0)
    axes = fig.axes
    assert [ax.get_title() for ax in axes] == ["loss", "class_error", "mAP"]
    loss_lines = axes[0].get_lines()
    assert len(loss_lines) == 4  # 2 runs × (train, test)
    assert [line.get_linestyle() for line in loss_lines] == ["-", "--", "-", "--"]
    assert loss_lines[0].get_color() != loss_lines[2].get_color()
    train_b = np.array([12.0, 11.0, 10.0, 9.0, 8.0, 7.0])
    np.testing.assert_allclose(loss_lines[2].get_ydata(), _ewm_by_weights(train_b, 1.0))
    assert len(axes[2].get_lines()) == 2  # mAP: one line per run


def test_plot_logs_errors_name_the_problem(tmp_path):
    run = _write_run(tmp_path / "run", 3)
    with pytest.raises(ValueError, match="'nope' is in none of the logs"):
        plot_logs([run], fields=("nope",))
    with pytest.raises(FileNotFoundError, match="missing"):
        plot_logs([tmp_path / "missing"])
    bad = tmp_path / "bad.txt"
    bad.write_text('{"epoch": 0}\nnot json\n')
    with pytest.raises(ValueError, match=r"bad.txt:2"):
        plot_logs([bad])


def test_cli_plot_logs_writes_a_png(tmp_path, capsys):
    runs = [_write_run(tmp_path / "a", 4), _write_run(tmp_path / "b", 4, offset=1.0)]
    out = tmp_path / "plots" / "logs.png"
    assert main(["plot", "logs", str(runs[0]), str(runs[1] / "log.txt"), "--ewm_col", "2", "--output", str(out)]) == 0
    with Image.open(out) as image:
        assert image.width > 1000 and image.height > 200
        pixels = np.asarray(image.convert("RGB"))
    assert pixels.std() > 10  # not a blank canvas
    assert main(["plot", "logs", str(runs[0]), "--fields", "bogus", "--output", str(out)]) == 2
    assert "bogus" in capsys.readouterr().err
