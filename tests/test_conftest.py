"""The ../shared switch of tests/conftest.py: skip for users without it, fail in CI (TORCHDETR_REQUIRE_SHARED)."""

from __future__ import annotations

import pytest

from .conftest import REQUIRE_SHARED_VARIABLE, ROOT, require


def test_a_missing_fixture_skips_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(REQUIRE_SHARED_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not available"):
        require(tmp_path / "absent")
    assert require(tmp_path) == tmp_path


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_a_missing_fixture_fails_when_ci_requires_shared(monkeypatch, tmp_path, value):
    monkeypatch.setenv(REQUIRE_SHARED_VARIABLE, value)
    with pytest.raises(pytest.fail.Exception, match=REQUIRE_SHARED_VARIABLE):
        require(tmp_path / "absent")
    monkeypatch.setenv(REQUIRE_SHARED_VARIABLE, "0")
    with pytest.raises(pytest.skip.Exception):
        require(tmp_path / "absent")


def test_ci_sets_the_variable():
    assert f"export {REQUIRE_SHARED_VARIABLE}=1" in (ROOT / ".ci" / "run").read_text()
