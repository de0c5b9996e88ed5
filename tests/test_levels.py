"""Tests of the unit-level mechanism: names by level, [pipeline] levels, --level, per-level runs."""

from __future__ import annotations

import json
from pathlib import Path

import geopandas as gpd
import pytest
from click.testing import CliRunner
from shapely.geometry import box

from geo_pipeline import ConfigError
from geo_pipeline._io import list_layers, read_table, write_gpkg
from geo_pipeline._levels import LEVELS, UNITS_LAYER, check_levels, level_file, level_layer
from geo_pipeline.cli import StageContext, main
from geo_pipeline.config import Settings, settings_from_dict


def test_level_file_and_layer_names() -> None:
    assert level_file("distance.gpkg", "county") == "distance.gpkg"
    assert level_file("distance.gpkg", "prefecture") == "distance_prefecture.gpkg"
    assert level_file("band_summary_by_region.csv", "prefecture") == "band_summary_by_region_prefecture.csv"
    assert level_file("moran_change_pct.png", "prefecture") == "moran_change_pct_prefecture.png"
    assert level_file("sub/x.tar.gz", "prefecture") == "sub/x_prefecture.tar.gz"
    assert level_file("README", "prefecture") == "README_prefecture"
    assert level_layer("units", "county") == "units"
    assert level_layer("units", "prefecture") == "prefecture_units"
    assert UNITS_LAYER == {"county": "units", "prefecture": "prefectures"}
    with pytest.raises(ConfigError, match="'township'"):
        level_file("distance.gpkg", "township")


def test_check_levels_orders_and_rejects() -> None:
    assert check_levels(["prefecture", "county"]) == list(LEVELS)
    for bad in ([], ["county", "county"], ["county", "city"]):
        with pytest.raises(ConfigError, match="expected one or more distinct levels"):
            check_levels(bad)


def test_config_levels_default_validation_and_moved_key() -> None:
    assert Settings().pipeline.levels == ["county", "prefecture"]
    assert settings_from_dict({"pipeline": {"levels": ["prefecture"]}}).pipeline.levels == ["prefecture"]
    with pytest.raises(ConfigError, match=r"\[pipeline\] levels.*unknown: \['city'\]"):
        settings_from_dict({"pipeline": {"levels": ["city"]}})
    with pytest.raises(ConfigError, match=r"\[population\] level \(moved to \[pipeline\] levels\)"):
        settings_from_dict({"population": {"level": "prefecture"}})


def test_stage_context_paths_by_level(tmp_path: Path) -> None:
    settings = settings_from_dict({"paths": {"data_processed": str(tmp_path)}})
    ctx = StageContext(settings=settings, stage="distance")
    pref = ctx.for_level("prefecture")
    assert (ctx.units_layer, pref.units_layer) == ("units", "prefectures")
    assert ctx.level_output("distance.gpkg") == tmp_path / "distance.gpkg"
    assert pref.level_output("distance.gpkg") == tmp_path / "distance_prefecture.gpkg"
    assert pref.level_layer("lisa") == "prefecture_lisa" and pref.label == "distance[prefecture]"
    assert ctx.label == "distance" and ctx.level == "county"


# -- the CLI on synthetic units ---------------------------------------------------------
def _units(ids: list[str], pops: list[tuple[int, int]], x0: float) -> gpd.GeoDataFrame:
    frame = gpd.GeoDataFrame(
        {"unit_id": ids, "name": ids, "province": "省", "prefecture": "市",
         "pop_2010": [a for a, _ in pops], "pop_2020": [b for _, b in pops]},
        geometry=[box(x0 + i, 30, x0 + i + 1, 31) for i in range(len(ids))], crs="EPSG:4326",
    )
    frame["change_pct"] = 100 * (frame["pop_2020"] / frame["pop_2010"] - 1)
    frame["shrinking"] = frame["change_pct"] < 0
    return frame


def _workdir(tmp_path: Path, *, prefectures: bool = True, extra: str = "") -> Path:
    processed = tmp_path / "data_processed"
    layers = {"units": _units(["c1", "c2", "c3"], [(10, 9), (10, 12), (5, 5)], 110.0)}
    if prefectures:
        layers["prefectures"] = _units(["p1", "p2"], [(20, 21), (5, 4)], 110.0)
    write_gpkg(processed / "population.gpkg", layers)
    cfg = tmp_path / "geo_pipeline.toml"
    cfg.write_text(f'[paths]\ndata_processed = "{processed.as_posix()}"\n'
                   f'maps = "{(tmp_path / "maps").as_posix()}"\n' + extra, encoding="utf-8")
    return cfg


def test_stage_runs_every_configured_level(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path)
    result = CliRunner().invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "data_processed"
    county = read_table(out / "distance.gpkg", "units")
    pref = read_table(out / "distance_prefecture.gpkg", "units")
    assert county["unit_id"].tolist() == ["c1", "c2", "c3"] and pref["unit_id"].tolist() == ["p1", "p2"]
    assert (out / "band_summary.csv").is_file() and (out / "band_summary_prefecture.csv").is_file()
    stages = json.loads((out / "manifest.json").read_text(encoding="utf-8"))["stages"]
    assert set(stages) == {"distance", "distance[prefecture]"}
    assert stages["distance[prefecture]"]["summary"]["units"] == 2
    assert stages["distance[prefecture]"]["parameters"]["level"] == "prefecture"


def test_level_option_runs_one_level(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path)
    result = CliRunner().invoke(main, ["-c", str(cfg), "distance", "--level", "prefecture"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "data_processed"
    assert (out / "distance_prefecture.gpkg").is_file() and not (out / "distance.gpkg").exists()
    bad = CliRunner().invoke(main, ["-c", str(cfg), "distance", "--level", "township"])
    assert bad.exit_code == 2 and "township" in bad.output


def test_configured_levels_only(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path, extra='[pipeline]\nlevels = ["county"]\n')
    result = CliRunner().invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (tmp_path / "data_processed").glob("distance*")) == ["distance.gpkg"]


def test_missing_level_units_skipped_unless_chosen(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path, prefectures=False)
    result = CliRunner().invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 0, result.output
    assert "no layer 'prefectures'" in result.output and "skipped" in result.output
    assert not (tmp_path / "data_processed" / "distance_prefecture.gpkg").exists()
    chosen = CliRunner().invoke(main, ["-c", str(cfg), "distance", "--level", "prefecture", "--overwrite"])
    assert chosen.exit_code == 2 and "no layer 'prefectures'" in chosen.output


def test_non_level_stage_has_no_level_option(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path)
    result = CliRunner().invoke(main, ["-c", str(cfg), "export", "--level", "county"])
    assert result.exit_code == 2 and "No such option" in result.output
    assert list_layers(tmp_path / "data_processed" / "population.gpkg") == ["units", "prefectures"]
