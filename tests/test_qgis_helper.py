"""The QGIS helper of the tests: skip with a reason without python3-qgis, fail when CI requires QGIS."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import _qgis
import pytest


@pytest.fixture
def no_qgis(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Point the helper at an interpreter that does not exist."""
    monkeypatch.setattr(_qgis, "QGIS_PYTHON", str(tmp_path / "no-such-python3"))
    _qgis.qgis_problem.cache_clear()
    yield
    _qgis.qgis_problem.cache_clear()


def test_missing_qgis_is_a_skip_with_the_reason(no_qgis: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_qgis.REQUIRE_ENV, raising=False)
    with pytest.raises(pytest.skip.Exception, match="no-such-python3 does not exist; install Debian"):
        _qgis.require_qgis()


@pytest.mark.parametrize("value", ["1", "yes", "true"])
def test_missing_qgis_fails_when_required(no_qgis: None, monkeypatch: pytest.MonkeyPatch, value: str) -> None:
    monkeypatch.setenv(_qgis.REQUIRE_ENV, value)
    with pytest.raises(pytest.fail.Exception, match="GEO_PIPELINE_REQUIRE_QGIS is set"):
        _qgis.require_qgis()


def test_python_without_qgis_is_detected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_qgis, "QGIS_PYTHON", sys.executable)  # the venv has no QGIS bindings
    _qgis.qgis_problem.cache_clear()
    try:
        assert "cannot import qgis.core" in (_qgis.qgis_problem() or "")
    finally:
        _qgis.qgis_problem.cache_clear()


def test_marked_test_is_skipped_or_failed_in_pytest(tmp_path: Path) -> None:
    """A ``@pytest.mark.qgis`` test in a pytest run without QGIS: skipped (reason shown), or an error."""
    tests = Path(__file__).resolve().parent
    conftest = (tests / "conftest.py").read_text(encoding="utf-8")
    (tmp_path / "conftest.py").write_text(conftest, encoding="utf-8")
    (tmp_path / "test_marked.py").write_text(textwrap.dedent("""
        import pytest

        @pytest.mark.qgis
        def test_needs_qgis():
            raise AssertionError("must not run without QGIS")
    """), encoding="utf-8")
    base = [sys.executable, "-m", "pytest", "-q", "-ra", "-p", "no:cacheprovider", "-m", "qgis",
            "-o", "markers=qgis: needs QGIS", str(tmp_path / "test_marked.py")]
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": f"{tests}:{tests.parent}",
           "GEO_PIPELINE_QGIS_PYTHON": str(tmp_path / "no-such-python3")}
    skipped = subprocess.run(base, capture_output=True, text=True, env=env, cwd=tmp_path)
    assert skipped.returncode == 0, skipped.stdout
    assert "1 skipped" in skipped.stdout and "QGIS check not run" in skipped.stdout
    required = subprocess.run(base, capture_output=True, text=True, cwd=tmp_path,
                              env={**env, "GEO_PIPELINE_REQUIRE_QGIS": "1"})
    assert required.returncode == 1, required.stdout
    assert "1 error" in required.stdout and "GEO_PIPELINE_REQUIRE_QGIS is set" in required.stdout


def test_qgis_runs_where_installed() -> None:
    """Where python3-qgis exists (this machine, CI) the helper finds it and runs a script."""
    _qgis.require_qgis()
    out = subprocess.run([_qgis.QGIS_PYTHON, "-c", "from qgis.core import Qgis; print(Qgis.QGIS_VERSION)"],
                         capture_output=True, text=True, env=_qgis.qgis_env(Path.cwd()), check=True)
    assert out.stdout.strip()[0].isdigit()
