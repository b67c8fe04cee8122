"""The CI switches of tests/conftest.py: skip for users without ../shared or a test-extra package, fail in CI
(TORCHDETR_REQUIRE_SHARED, TORCHDETR_REQUIRE_EXTRAS; TORCHDETR_REQUIRE_BROWSER for the browser test)."""

from __future__ import annotations

import json
import re
import tomllib

import pytest

from .conftest import (
    REQUIRE_BROWSER_VARIABLE,
    REQUIRE_EXTRAS_VARIABLE,
    REQUIRE_SHARED_VARIABLE,
    ROOT,
    package_missing,
    require,
    require_package,
)


def outcome(call) -> tuple[str, str]:
    """How ``call()`` ends: ``("skip" | "fail" | "ok", message)``. Caught here, so that a skip where a failure is
    expected fails the test (``pytest.raises(pytest.fail.Exception)`` would let the skip through: a skipped test)."""
    try:
        call()
    except pytest.skip.Exception as err:
        return "skip", str(err)
    except pytest.fail.Exception as err:
        return "fail", str(err)
    return "ok", ""


def test_a_missing_fixture_skips_without_the_variable(monkeypatch, tmp_path):
    monkeypatch.delenv(REQUIRE_SHARED_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match="not available"):
        require(tmp_path / "absent")
    assert require(tmp_path) == tmp_path


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_a_missing_fixture_fails_when_ci_requires_shared(monkeypatch, tmp_path, value):
    monkeypatch.setenv(REQUIRE_SHARED_VARIABLE, value)
    kind, message = outcome(lambda: require(tmp_path / "absent"))
    assert kind == "fail" and REQUIRE_SHARED_VARIABLE in message
    monkeypatch.setenv(REQUIRE_SHARED_VARIABLE, "0")
    assert outcome(lambda: require(tmp_path / "absent"))[0] == "skip"


def test_ci_sets_the_variable():
    assert f"export {REQUIRE_SHARED_VARIABLE}=1" in (ROOT / ".ci" / "run").read_text()


# ------------------------------------------------------------------------------------------------ the test extra
ABSENT_PACKAGE = "torchdetr_no_such_package"


def test_a_missing_package_skips_without_the_variable(monkeypatch):
    monkeypatch.delenv(REQUIRE_EXTRAS_VARIABLE, raising=False)
    with pytest.raises(pytest.skip.Exception, match=ABSENT_PACKAGE):
        require_package(ABSENT_PACKAGE)
    assert package_missing(ABSENT_PACKAGE) and package_missing(f"{ABSENT_PACKAGE}.submodule")
    assert require_package("json") is json and not package_missing("json")


@pytest.mark.parametrize("value", ["1", "true", "yes"])
def test_a_missing_package_fails_when_ci_requires_the_extras(monkeypatch, value):
    monkeypatch.setenv(REQUIRE_EXTRAS_VARIABLE, value)
    kind, message = outcome(lambda: require_package(ABSENT_PACKAGE))
    assert kind == "fail" and REQUIRE_EXTRAS_VARIABLE in message and ABSENT_PACKAGE in message
    assert not package_missing(ABSENT_PACKAGE)  # skipif(package_missing(...)) lets the test run, and fail, in CI
    assert require_package("json") is json
    monkeypatch.setenv(REQUIRE_EXTRAS_VARIABLE, "0")
    assert outcome(lambda: require_package(ABSENT_PACKAGE))[0] == "skip"


def test_ci_sets_every_switch():
    ci = (ROOT / ".ci" / "run").read_text()
    for variable in (REQUIRE_SHARED_VARIABLE, REQUIRE_EXTRAS_VARIABLE, REQUIRE_BROWSER_VARIABLE):
        assert f"export {variable}=1" in ci, variable


# packages outside the `test` extra, which CI does not install: the tests that need them may skip there
SKIPPED_OUTSIDE_THE_TEST_EXTRA = {"test_hf_conversion.py": {"timm", "transformers"}}  # the `bench` extra


def test_tests_skip_on_a_missing_package_only_through_the_ci_switch():
    """A bare ``pytest.importorskip`` or ``skipif(find_spec(...))`` of a test-extra package would pass a green CI run
    with the feature untested: tests use ``require_package``/``package_missing``, which fail under the switch."""
    bare = re.compile(r"importorskip\(\s*[\"']([\w.]+)[\"']|skipif\(\s*importlib\.util\.find_spec\(\s*[\"']([\w.]+)")
    found = {}
    for path in sorted((ROOT / "tests").glob("*.py")):
        if path.name == "conftest.py":
            continue
        names = {a or b for a, b in bare.findall(path.read_text())}
        if names - SKIPPED_OUTSIDE_THE_TEST_EXTRA.get(path.name, set()):
            found[path.name] = sorted(names)
    assert found == {}
    # and those exceptions are indeed outside the test extra
    test_extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["test"]
    for names in SKIPPED_OUTSIDE_THE_TEST_EXTRA.values():
        assert not any(requirement.startswith(name) for name in names for requirement in test_extra)
