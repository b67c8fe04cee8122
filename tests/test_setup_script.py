"""scripts/setup.sh (the first step of both quick-start commands and of CI) stops on a failed install.

It used to pipe pip through `grep ... || true`, which swallowed pip's exit status: a full disk ended the
setup "successfully", marked the venv installed, and CI then failed with "lint-imports: command not found".
The tests run the real script in a copy of the project whose `.venv/bin/python` is a fake interpreter that
records its arguments and fails (or succeeds) at `pip install`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

FAKE_PYTHON = """#!/usr/bin/env bash
echo "$*" >> "$(dirname "$0")/calls.log"
if [ "$1 $2 $3" = "-m pip install" ] && [ -n "${FAIL_PIP_ON:-}" ] && [[ "$*" == *"$FAIL_PIP_ON"* ]]; then
  echo "ERROR: Could not install packages due to an OSError: [Errno 28] No space left on device" >&2
  exit 1
fi
exit 0
"""


def _project_copy(tmp_path: Path) -> Path:
    project = tmp_path / "project"
    (project / "scripts").mkdir(parents=True)
    shutil.copy2(ROOT / "scripts" / "setup.sh", project / "scripts" / "setup.sh")
    shutil.copy2(ROOT / "pyproject.toml", project / "pyproject.toml")
    bin_dir = project / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    python = bin_dir / "python"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    (bin_dir / "activate").write_text(f'export PATH="{bin_dir}:$PATH"\n')
    return project


def _run_setup(project: Path, fail_on: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "FAIL_PIP_ON")}
    if fail_on is not None:
        env["FAIL_PIP_ON"] = fail_on
    return subprocess.run(
        ["bash", str(project / "scripts" / "setup.sh")], env=env, capture_output=True, text=True, timeout=60
    )


@pytest.mark.parametrize("fail_on", ["torch==2.14.1", ".[test]"])
def test_a_failed_pip_install_stops_the_setup_with_pips_error_and_leaves_the_venv_unmarked(
    tmp_path: Path, fail_on: str
) -> None:
    project = _project_copy(tmp_path)
    result = _run_setup(project, fail_on)
    assert result.returncode != 0
    assert "No space left on device" in result.stderr
    assert "setup: 'pip install" in result.stderr and fail_on in result.stderr
    assert not (project / ".venv" / ".torchdetr-installed").exists()
    calls = (project / ".venv" / "bin" / "calls.log").read_text().splitlines()
    # nothing ran after the failed install (no later pip step, no import check)
    assert fail_on in calls[-1]


def test_a_successful_setup_installs_without_pips_cache_and_marks_the_venv(tmp_path: Path) -> None:
    project = _project_copy(tmp_path)
    result = _run_setup(project, None)
    assert result.returncode == 0, result.stderr
    assert (project / ".venv" / ".torchdetr-installed").exists()
    calls = (project / ".venv" / "bin" / "calls.log").read_text().splitlines()
    installs = [c for c in calls if c.startswith("-m pip install")]
    assert [c.split()[-1] for c in installs] == ["pip", "torchvision==0.29.1", ".[test]"]
    assert all("--no-cache-dir" in c for c in installs)
    assert calls[-1] == "-c import torchdetr, torch, torchvision"
    # marked: a second run installs nothing
    assert _run_setup(project, "pip").returncode == 0
    assert (project / ".venv" / "bin" / "calls.log").read_text().splitlines() == calls
