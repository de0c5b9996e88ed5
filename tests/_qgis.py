"""Run scripts in Debian's headless QGIS (``python3-qgis`` under the system Python) from the tests.

QGIS is no pip package: its Python bindings belong to the system interpreter, so a test
runs a script of its own (e.g. ``tests/qgis_check.py``) with that interpreter and reads
its JSON output. Where ``python3-qgis`` is missing the test is skipped with the reason
(shown by ``pytest -ra``); with ``GEO_PIPELINE_REQUIRE_QGIS=1`` in the environment (as
``.ci/run`` sets it) that skip is a failure instead, so CI cannot pass without QGIS.

Use it in a test module (``tests/`` is on ``sys.path`` under pytest)::

    from _qgis import qgis_json

    @pytest.mark.qgis          # conftest: skip (or fail) before the fixtures when QGIS is missing
    def test_in_qgis(tmp_path):
        report = qgis_json(ROOT / "tests" / "my_qgis_script.py", path)

or call :func:`require_qgis` inside a test, after the checks that need no QGIS.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

#: Interpreter that has the QGIS bindings (Debian's python3-qgis installs them for it).
QGIS_PYTHON = os.environ.get("GEO_PIPELINE_QGIS_PYTHON", "/usr/bin/python3")
#: Environment variable that turns a missing QGIS from a skip into a failure.
REQUIRE_ENV = "GEO_PIPELINE_REQUIRE_QGIS"
INSTALL_HINT = "install Debian's python3-qgis (apt-get install python3-qgis; .ci/run does this)"


@functools.cache
def qgis_problem() -> str | None:
    """Why headless QGIS cannot run here, or None when ``import qgis.core`` works."""
    if not Path(QGIS_PYTHON).is_file():
        return f"{QGIS_PYTHON} does not exist"
    try:
        probe = subprocess.run([QGIS_PYTHON, "-c", "import qgis.core"], capture_output=True, text=True,
                               timeout=120, env=qgis_env(Path.cwd()))
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{QGIS_PYTHON} could not be run ({exc})"
    if probe.returncode != 0:
        last = (probe.stderr.strip().splitlines() or ["no message"])[-1]
        return f"{QGIS_PYTHON} cannot import qgis.core ({last})"
    return None


def qgis_required() -> bool:
    """True when ``GEO_PIPELINE_REQUIRE_QGIS`` is set to anything but empty, 0, false or no."""
    return os.environ.get(REQUIRE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def require_qgis() -> None:
    """Skip the calling test where QGIS is missing; fail instead when ``GEO_PIPELINE_REQUIRE_QGIS`` is set."""
    problem = qgis_problem()
    if problem is None:
        return
    message = f"QGIS check not run: {problem}; {INSTALL_HINT}"
    if qgis_required():
        pytest.fail(f"{message} [{REQUIRE_ENV} is set, so a missing QGIS is a failure]", pytrace=False)
    pytest.skip(message)


def qgis_env(home: Path) -> dict[str, str]:
    """Environment for the QGIS interpreter: offscreen Qt, system PATH, a private HOME (QGIS writes there)."""
    return {"QT_QPA_PLATFORM": "offscreen", "PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}


def run_qgis(
    script: Path, *args: str | Path, home: Path, timeout: float = 600
) -> subprocess.CompletedProcess:
    """Run ``script ARGS`` with the QGIS interpreter (after :func:`require_qgis`); assert exit code 0."""
    require_qgis()
    proc = subprocess.run([QGIS_PYTHON, str(script), *map(str, args)], capture_output=True, text=True,
                          timeout=timeout, env=qgis_env(home))
    assert proc.returncode == 0, f"{script.name} failed in QGIS:\n{proc.stderr[-3000:]}"
    return proc


def qgis_json(script: Path, *args: str | Path, home: Path | None = None, timeout: float = 600) -> Any:
    """Run ``script`` in QGIS and return the JSON document on the last line of its stdout."""
    if home is None:
        home = Path(args[0]).parent if args else Path.cwd()
    proc = run_qgis(script, *args, home=home, timeout=timeout)
    return json.loads(proc.stdout.strip().splitlines()[-1])
