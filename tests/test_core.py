"""Tests of the shared foundation: errors, validation, config, atomic I/O, CLI."""

from __future__ import annotations

from pathlib import Path

import geopandas as gpd
import pandas as pd
import pytest
from click.testing import CliRunner
from shapely.geometry import Polygon, box

from geo_pipeline import (
    ConfigError,
    CRSError,
    GeometryError,
    InputError,
    OutputExistsError,
    load_settings,
)
from geo_pipeline._io import read_layer, read_table, write_gpkg
from geo_pipeline._validate import check_frame, check_same_crs
from geo_pipeline.cli import main


def _squares(crs: str = "EPSG:4326") -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"unit_id": ["a", "b"], "value": [1.0, 2.0]},
        geometry=[box(0, 0, 1, 1), box(1, 0, 2, 1)],
        crs=crs,
    )


def test_check_frame_collects_every_problem() -> None:
    gdf = _squares().drop(columns=["value"])
    with pytest.raises(InputError) as err:
        cols = {"value": "numeric", "pop": "numeric"}
        check_frame(gdf, name="units", columns=cols, geometry=True).raise_if_any()
    assert "missing column(s) ['value', 'pop']" in str(err.value)


def test_check_frame_wrong_crs_is_crs_error() -> None:
    with pytest.raises(CRSError, match="expected CRS EPSG:4326, found EPSG:3857"):
        check_frame(_squares("EPSG:3857"), name="units", geometry=True, crs="EPSG:4326").raise_if_any()


def test_check_frame_invalid_geometry() -> None:
    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    gdf = gpd.GeoDataFrame({"unit_id": ["x"]}, geometry=[bowtie], crs="EPSG:4326")
    with pytest.raises(GeometryError, match="1 invalid geometries"):
        check_frame(gdf, name="units", geometry=True).raise_if_any()


def test_check_same_crs_mismatch() -> None:
    with pytest.raises(CRSError, match="GCJ-02"):
        check_same_crs(("units", _squares()), ("rail", _squares("EPSG:3857")))


def test_config_unknown_key_is_named(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[distance]\nbreaks = [50]\n[nope]\nx = 1\n")
    with pytest.raises(ConfigError) as err:
        load_settings(cfg)
    assert "[distance] breaks" in str(err.value) and "[nope]" in str(err.value)


def test_config_type_and_choice_errors(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[autocorrelation]\npermutations = 'many'\n")
    with pytest.raises(ConfigError, match="expected an integer"):
        load_settings(cfg)
    cfg.write_text("[distance]\nbreaks_km = [100, 50]\n")
    with pytest.raises(ConfigError, match="increasing"):
        load_settings(cfg)


def test_config_values_read(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[distance]\nbreaks_km = [25, 75]\n[autocorrelation]\nseed = 7\n")
    s = load_settings(cfg)
    assert s.distance.breaks_km == [25.0, 75.0] and s.autocorrelation.seed == 7
    assert s.autocorrelation.permutations == 999  # default kept


def test_write_gpkg_roundtrip_and_table(tmp_path: Path) -> None:
    out = tmp_path / "x.gpkg"
    table = pd.DataFrame({"band": ["0-50", ">150"], "units": [3, 4]})
    write_gpkg(out, {"units": _squares(), "summary": table})
    back = read_layer(out, "units")
    assert back.crs.to_epsg() == 4326 and list(back["unit_id"]) == ["a", "b"]
    assert read_table(out, "summary")["units"].tolist() == [3, 4]


def test_frames_read_again_are_copies_of_an_unchanged_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Spatial layers of files in the manifest are read once per file version and process."""
    import os

    import geo_pipeline._io as io_mod

    reads: list[str] = []
    real_read = io_mod.pyogrio.read_dataframe
    monkeypatch.setattr(io_mod.pyogrio, "read_dataframe",
                        lambda p, **k: reads.append(k["layer"]) or real_read(p, **k))
    monkeypatch.setattr(io_mod, "_FRAMES", io_mod.collections.OrderedDict())
    monkeypatch.setattr(io_mod, "_write_through", lambda *a: None)  # reads only; see test_write_through.py
    out = tmp_path / "x.gpkg"
    table = pd.DataFrame({"a": [1]})
    write_gpkg(out, {"units": _squares(), "summary": table})
    assert len(read_layer(out, "units")) == 2 and len(read_layer(out, "units")) == 2
    assert reads == ["units", "units"]  # not in a manifest: read every time
    io_mod.write_manifest(tmp_path / "manifest.json", stage="s", inputs={}, outputs={"x": out}, parameters={})
    first = read_layer(out, "units")
    first.loc[0, "value"] = 99.0  # the caller's frame is its own
    first["new"] = 1
    again = read_layer(out, "units")
    assert reads == ["units", "units", "units"]
    assert again["value"].tolist() == [1.0, 2.0] and "new" not in again.columns
    again.loc[1, "value"] = -1.0
    assert read_layer(out, "units")["value"].tolist() == [1.0, 2.0] and len(reads) == 3
    read_table(out, "summary")
    read_table(out, "summary")  # attribute tables are read every time
    assert reads[3:] == ["summary", "summary"]
    # a new version of the file (another inode, size or time) is read again
    changed = _squares()
    changed["value"] = [5.0, 6.0]
    write_gpkg(out, {"units": changed, "summary": table}, overwrite=True)
    io_mod.write_manifest(tmp_path / "manifest.json", stage="s", inputs={}, outputs={"x": out}, parameters={})
    assert read_layer(out, "units")["value"].tolist() == [5.0, 6.0] and reads[5:] == ["units"]
    assert len(io_mod._FRAMES) == 1  # the old version was dropped
    monkeypatch.setattr(io_mod, "_FRAMES_PID", [os.getpid() + 1])  # as in a forked child
    read_layer(out, "units")
    assert reads[6:] == ["units"]


def test_read_layer_errors_name_the_layers(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The layers are listed only when a read fails; a missing layer and a failed read keep their messages."""
    import geo_pipeline._io as io_mod

    out = tmp_path / "x.gpkg"
    write_gpkg(out, {"units": _squares(), "summary": pd.DataFrame({"a": [1]})})
    listed: list[Path] = []
    real_list = io_mod.list_layers
    monkeypatch.setattr(io_mod, "list_layers", lambda p: listed.append(Path(p)) or real_list(p))
    assert len(read_layer(out, "units")) == 2 and listed == []
    with pytest.raises(InputError, match=r"x.gpkg: no layer 'nope'; layers found: \['units', 'summary'\]$"):
        read_layer(out, "nope")
    assert listed == [out]
    with pytest.raises(InputError, match=r"x.gpkg: cannot read layer 'units': .*no_such_column"):
        read_layer(out, "units", columns=["no_such_column"], where="no_such_column > 1")


def test_sha256_once_per_file_version(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import hashlib

    import geo_pipeline._io as io_mod

    out = tmp_path / "x.gpkg"
    write_gpkg(out, {"units": _squares()})
    first = io_mod.sha256(out)
    assert first == hashlib.sha256(out.read_bytes()).hexdigest()
    opened = []
    real_open = open
    monkeypatch.setattr("builtins.open", lambda *a, **k: opened.append(a[0]) or real_open(*a, **k))
    assert io_mod.sha256(out) == first and not opened  # unchanged file: not read again
    monkeypatch.undo()
    write_gpkg(out, {"units": _squares().assign(value=[5.0, 6.0])}, overwrite=True)  # replaced
    assert io_mod.sha256(out) == hashlib.sha256(out.read_bytes()).hexdigest() != first


def test_write_gpkg_refuses_overwrite_and_keeps_old_on_failure(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "x.gpkg"
    write_gpkg(out, {"units": _squares()})
    before = out.read_bytes()
    with pytest.raises(OutputExistsError):
        write_gpkg(out, {"units": _squares()})

    calls = []

    def fail_on_second(path: Path, name: str, frame: pd.DataFrame) -> None:
        calls.append(name)
        if len(calls) == 2:
            raise OSError("disk full")  # simulated failure half-way through
        real_write(path, name, frame)

    import geo_pipeline._io as io_mod

    real_write = io_mod._write_layer
    monkeypatch.setattr(io_mod, "_write_layer", fail_on_second)
    with pytest.raises(OSError, match="disk full"):
        write_gpkg(out, {"units": _squares(), "more": _squares()}, overwrite=True)
    assert out.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.gpkg"]


def test_cli_bad_config_exits_nonzero(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text("[paths]\nfoo = 1\n")
    result = CliRunner().invoke(main, ["-c", str(cfg), "run"])
    assert result.exit_code == 2
    assert "unknown key(s) [paths] foo" in result.output


def test_cli_config_prints_toml_that_loads_back(tmp_path: Path) -> None:
    from geo_pipeline.config import Settings

    result = CliRunner().invoke(main, ["config"])
    assert result.exit_code == 0
    cfg = tmp_path / "c.toml"
    cfg.write_text(result.output, encoding="utf-8")
    assert load_settings(cfg) == Settings()


def test_example_config_matches_defaults() -> None:
    """The shipped geo_pipeline.example.toml documents exactly the defaults."""
    from geo_pipeline.cli import settings_to_toml
    from geo_pipeline.config import Settings

    example = Path(__file__).resolve().parents[1] / "geo_pipeline.example.toml"
    assert example.read_text(encoding="utf-8") == settings_to_toml(Settings()), (
        "regenerate with: geo-pipeline config > geo_pipeline.example.toml"
    )


def test_public_api_resolves_lazily() -> None:
    import subprocess
    import sys

    import geo_pipeline

    for name in geo_pipeline.__all__:
        assert getattr(geo_pipeline, name) is not None, name
    # importing the package must not pull in the heavy plotting/OSM stack
    code = "import sys, geo_pipeline; print('matplotlib' in sys.modules or 'osmnx' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
