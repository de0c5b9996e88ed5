"""README's set-up commands: one to run the pipeline, one to run the tests, and .ci/run runs the latter."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def quick_start_commands() -> list[str]:
    """The bash blocks of README's Quick start section."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_one_command_sets_up_and_runs_the_pipeline_and_one_the_tests() -> None:
    run, test = quick_start_commands()
    for cmd in (run, test):
        assert "\n" not in cmd and cmd.startswith("python3 -m venv .venv && .venv/bin/pip install -e ")
    assert run.endswith(".venv/bin/geo-pipeline run")
    assert test.endswith(".venv/bin/python -m pytest -q")


def test_ci_runs_the_readme_test_command_exactly() -> None:
    _, test = quick_start_commands()
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    lines = [ln.strip() for ln in ci.splitlines() if ln.strip() and not ln.strip().startswith("#")]
    assert lines[-1] == test  # the last command: its exit status is the script's
    assert "export GEO_PIPELINE_REQUIRE_QGIS=1" in lines
    for tool in ("poppler-utils", "fonts-noto-cjk", "pdffonts", "pdftoppm"):
        assert tool not in ci
