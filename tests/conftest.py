"""Shared fixtures: the real-data mirror and a session-wide real pipeline run.

Real inputs come from the mirror folder ``../shared/data`` (or the folder in
``GEO_PIPELINE_MIRROR``). ``run_stage("distance")`` runs, once per test session,
every stage up to and including ``distance`` through the CLI on the real data in
a temporary work folder and returns that folder's ``data_processed`` path.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from pathlib import Path

import pytest
from click.testing import CliRunner

from geo_pipeline import DataQualityWarning
from geo_pipeline.cli import STAGE_ORDER, main

ROOT = Path(__file__).resolve().parents[1]
MIRROR = Path(os.environ.get("GEO_PIPELINE_MIRROR") or ROOT.parent / "shared" / "data").resolve()


def pytest_runtest_setup(item: pytest.Item) -> None:
    """Tests marked ``qgis`` skip without python3-qgis; fail with GEO_PIPELINE_REQUIRE_QGIS=1 (_qgis.py)."""
    if item.get_closest_marker("qgis") is not None:
        from _qgis import require_qgis

        require_qgis()


@pytest.fixture(scope="session")
def mirror() -> Path:
    """The folder holding the real input data (fails loudly when absent)."""
    if not (MIRROR / "census" / "census_county_2010_v1.xlsx").is_file():
        pytest.fail(f"real data mirror not found at {MIRROR}; set GEO_PIPELINE_MIRROR")
    return MIRROR


def write_config(folder: Path, mirror_dir: Path, extra: str = "") -> Path:
    """Write a config with absolute paths into ``folder`` and return its path."""
    cfg = folder / "geo_pipeline.toml"
    cfg.write_text(
        "[paths]\n"
        f'data_raw = "{(folder / "data_raw").as_posix()}"\n'
        f'data_processed = "{(folder / "data_processed").as_posix()}"\n'
        f'maps = "{(folder / "maps").as_posix()}"\n'
        f'mirror = "{mirror_dir.as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return cfg


@pytest.fixture(scope="session")
def real_workdir(tmp_path_factory: pytest.TempPathFactory, mirror: Path) -> Path:
    """A work folder with a config pointing at the real-data mirror."""
    folder = tmp_path_factory.mktemp("real")
    write_config(folder, mirror)
    return folder


@pytest.fixture(scope="session")
def run_stage(real_workdir: Path) -> Callable[[str], Path]:
    """Run stages on the real data once per session; return ``data_processed``."""
    done: set[str] = set()
    cfg = real_workdir / "geo_pipeline.toml"

    def _run(name: str) -> Path:
        for stage in STAGE_ORDER[: STAGE_ORDER.index(name) + 1]:
            if stage in done:
                continue
            # Data-quality warnings are findings about the real data (logged by the
            # CLI), not test failures; every other warning stays an error.
            with warnings.catch_warnings():
                warnings.simplefilter("default", DataQualityWarning)
                result = CliRunner().invoke(main, ["-c", str(cfg), "-q", stage], catch_exceptions=False)
            assert result.exit_code == 0, f"stage {stage} failed:\n{result.output}"
            done.add(stage)
        return real_workdir / "data_processed"

    return _run
