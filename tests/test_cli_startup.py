"""The command line starts without the heavy libraries; stage commands load on first use."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from geo_pipeline import cli

ROOT = Path(__file__).resolve().parents[1]

#: Libraries that only a running stage may import (each takes 0.1-2 s to import).
HEAVY = ("geopandas", "rasterio", "esda", "osmnx", "matplotlib", "pandas", "libpysal", "mapclassify",
         "pyogrio", "shapely", "pyproj", "numba", "scipy", "fontTools", "pooch")

_PROBE = """
import json, sys
sys.argv = ["geo-pipeline", *json.loads(sys.argv[1])]
from geo_pipeline.cli import main
try:
    main()
except SystemExit as exc:
    code = exc.code
else:
    code = 0
sys.stdout.flush()
sys.stderr.write("\\nMODULES " + json.dumps([code, sorted(sys.modules)]) + "\\n")
"""


def loaded_modules(*args: str, tmp_path: Path) -> tuple[int, set[str], str]:
    """Exit code, modules imported (dotted names) and stdout of ``geo-pipeline ARGS`` in a fresh process."""
    proc = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(list(args))], capture_output=True,
                          text=True, cwd=tmp_path, check=False)
    line = [ln for ln in proc.stderr.splitlines() if ln.startswith("MODULES ")]
    assert line, proc.stderr
    code, mods = json.loads(line[-1][len("MODULES "):])
    return code, set(mods), proc.stdout


@pytest.mark.parametrize("args", [("--help",), ("config",), ("--version",), ("run", "--help")])
def test_cli_starts_without_heavy_libraries(args: tuple[str, ...], tmp_path: Path) -> None:
    code, mods, out = loaded_modules(*args, tmp_path=tmp_path)
    assert code == 0
    assert out.strip()
    assert sorted({m.split(".")[0] for m in mods} & set(HEAVY)) == []
    assert sorted(m for m in mods if m.startswith("geo_pipeline.cli._")) == []
    assert "geo_pipeline._io" not in mods


def test_stage_help_imports_only_that_stage(tmp_path: Path) -> None:
    code, mods, out = loaded_modules("distance", "--help", tmp_path=tmp_path)
    assert code == 0
    assert "--breaks-km" in out and "--overwrite" in out
    assert {"geopandas", "geo_pipeline.cli._distance"} <= mods  # the distance wrapper is loaded...
    assert not {"matplotlib", "esda", "osmnx", "rasterio", "geo_pipeline.cli._atlas"} & mods  # ...no other


def test_module_entry_point_prints_help(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "geo_pipeline.cli", "--help"], capture_output=True,
                          text=True, cwd=tmp_path, check=True)
    assert "Commands:" in proc.stdout and "atlas" in proc.stdout


def _eager_listing() -> list[tuple[str, str]]:
    """(name, short help) of every command as click prints them after importing each stage."""
    group = cli.main
    ctx = click.Context(group)
    names = group.list_commands(ctx)
    limit = 80 - 6 - max(len(n) for n in names)
    return [(n, group.get_command(ctx, n).get_short_help_str(limit)) for n in names]


def test_lazy_listing_equals_the_imported_commands() -> None:
    result = CliRunner().invoke(cli.main, ["--help"], terminal_width=80)
    assert result.exit_code == 0
    listed = result.output.split("Commands:\n", 1)[1]
    rows = [line.split(None, 1) for line in listed.splitlines() if line.strip()]
    present = [n for n in cli.STAGE_ORDER if cli._stage_source(n) is not None]
    assert {"run", "config", *present} == {r[0] for r in rows}
    assert [(r[0], r[1].strip()) for r in rows] == _eager_listing()


def test_stage_commands_resolve_and_unknown_is_an_error() -> None:
    runner = CliRunner()
    result = runner.invoke(cli.main, ["fetch", "--help"])
    assert result.exit_code == 0 and "--mirror" in result.output
    result = runner.invoke(cli.main, ["nosuchstage"])
    assert result.exit_code == 2 and "No such command 'nosuchstage'" in result.output


#: Heavy libraries (or heavy submodules) a stage's start-up may load: those its work calls in every
#: run (benchmarks/bench.py compares the start-up with importing them). Anything else of
#: STAGE_HEAVY is imported where it is used, e.g. matplotlib by the Moran scatterplots (0.3 s CPU
#: the statistics do not need).
STAGE_HEAVY = ("matplotlib", "PIL", "fontTools", "libpysal", "esda", "numba", "sklearn", "networkx", "osmnx",
               "rasterio", "mapclassify", "pooch", "requests", "scipy.stats", "scipy.spatial", "scipy.sparse")
_LIBPYSAL = {"libpysal", "numba", "sklearn", "requests", "scipy.stats", "scipy.spatial", "scipy.sparse"}
STAGE_MAY_LOAD = {
    "fetch": set(),
    "boundaries": set(),
    "population": {"scipy.sparse"},  # crosswalk: connected components
    "raster": {"rasterio", "numba"},  # the zonal kernel is compiled with numba
    "distance": {"scipy.spatial", "scipy.sparse"},  # cKDTree candidates of the nearest core
    "autocorrelation": _LIBPYSAL,  # weights are a libpysal Graph; libpysal loads the rest
    "infrastructure": {"networkx", "scipy.spatial", "scipy.sparse"},  # rail network; nearest station
    "export": set(),
    "report": {"scipy.stats", "scipy.spatial", "scipy.sparse"},  # findings: binomtest, spearmanr
    "atlas": {"matplotlib", "PIL", "fontTools"},  # the atlas is drawn with matplotlib
    "qgis_project": set(),
}


@pytest.mark.parametrize("stage", sorted(STAGE_MAY_LOAD))
def test_stage_module_imports_only_what_its_work_needs(stage: str, tmp_path: Path) -> None:
    code = (f"import json, sys, geo_pipeline.cli._{stage}, geo_pipeline.{stage}; "
            "print(json.dumps(sorted(sys.modules)))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path,
                          check=True)
    mods = set(json.loads(proc.stdout))
    assert {h for h in STAGE_HEAVY if h in mods} - STAGE_MAY_LOAD[stage] == set()


def test_every_stage_has_a_start_up_rule() -> None:
    assert set(STAGE_MAY_LOAD) == {n for n in cli.STAGE_ORDER if cli._stage_source(n) is not None}
