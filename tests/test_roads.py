"""Expressways from a user's layer through the corridor overlay (geo_pipeline.roads)."""

from __future__ import annotations

import geopandas as gpd
import pyproj
import pytest
import shapely
from click.testing import CliRunner
from shapely.geometry import LineString, box
from test_infrastructure import _small_units, _workdir

from geo_pipeline import CRSError, InputError, roads
from geo_pipeline._io import list_layers, read_layer, read_table, write_gpkg
from geo_pipeline.cli import main

GEOD = pyproj.Geod(ellps="WGS84")


def _units() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"unit_id": ["W", "E"], "pop_2010": [100, 100], "pop_2020": [90, 120], "change_pct": [-10.0, 20.0],
         "shrinking": [True, False]},
        geometry=[box(110.0, 30.0, 110.5, 30.5), box(110.5, 30.0, 111.0, 30.5)],
        crs="EPSG:4326",
    )


def _roads() -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame({"name": ["G1"]}, geometry=[LineString([(110.25, 29.0), (110.25, 32.0)])],
                            crs="EPSG:4326")


def test_synthetic_expressway_overlay() -> None:
    units = _units()
    out = roads.expressway_overlay(units, roads.prepare_expressways(_roads()), buffer_km=10.0)
    out = out.set_index("unit_id")
    assert list(out.columns[:-1]) == list(roads.EXPRESSWAY_COLUMNS)[1:]
    assert out.loc["W", "expressway_crosses"] and not out.loc["E", "expressway_crosses"]
    # W: a 20 km strip across a unit 0.5 degree wide at 30.25 N (48.1 km): share 20 / 48.1
    width = GEOD.inv(110.0, 30.25, 110.5, 30.25)[2] / 1000.0
    assert width == pytest.approx(48.13, abs=0.01)
    assert out.loc["W", "expressway_share"] == pytest.approx(20.0 / width, rel=0.01)
    assert out.loc["W", "in_expressway_corridor"] and not out.loc["E", "in_expressway_corridor"]
    # the strip reaches 10 km - (110.5 - 110.25 degrees = 24.07 km) short of E: share 0
    assert out.loc["E", "expressway_share"] == 0.0
    # E: distance from its representative point to the road, to within half the 1 km vertex spacing
    rep = shapely.point_on_surface(units.geometry.iloc[1])
    want = GEOD.inv(rep.x, rep.y, 110.25, rep.y)[2] / 1000.0
    assert out.loc["E", "expressway_km"] == pytest.approx(want, abs=0.5)
    s = roads.expressway_summary(units, out.reset_index()).set_index(["grouping", "group"])
    assert s.loc[("corridor", "inside"), "n_units"] == 1 and s.loc[("corridor", "inside"), "n_shrinking"] == 1
    assert s.loc[("all", "all"), "pop_2020"] == 210 and "mean_expressway_km" in s.columns


def test_expressway_layer_errors() -> None:
    with pytest.raises(CRSError, match="EPSG:4326"):
        roads.prepare_expressways(_roads().to_crs("EPSG:32649"))
    with pytest.raises(InputError, match="no features"):
        roads.prepare_expressways(_roads().iloc[:0])
    with pytest.raises(InputError, match="geometry"):
        roads.prepare_expressways(gpd.GeoDataFrame({"name": ["x"]}, geometry=[box(0, 0, 1, 1)],
                                                   crs="EPSG:4326"))


def test_cli_expressways_option(tmp_path) -> None:  # noqa: ANN001 - pytest fixture
    cfg = _workdir(tmp_path, _small_units(), "network = false\n")
    layer = tmp_path / "g2.gpkg"  # a road from Beijing towards Shanghai through both city units
    write_gpkg(layer, {"roads": gpd.GeoDataFrame(
        {"name": ["G2"]}, geometry=[LineString([(116.40, 39.90), (118.8, 32.0), (121.48, 31.22)])],
        crs="EPSG:4326")})
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure", "--expressways", str(layer)],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "data_processed" / "infrastructure.gpkg"
    assert {"expressways", "expressway_summary"} <= set(list_layers(gpkg))
    units = read_layer(gpkg, "units").set_index("unit_id")
    assert units.loc["110101", "expressway_crosses"] and units.loc["310101", "in_expressway_corridor"]
    assert units.loc["542523", "expressway_km"] > 1500 and not units.loc["542523", "in_expressway_corridor"]
    summary = read_table(gpkg, "expressway_summary").set_index(["grouping", "group"])
    assert summary.loc[("corridor", "inside"), "n_units"] == 2
    assert (tmp_path / "data_processed" / "expressway_summary.csv").is_file()
    bad = tmp_path / "utm.gpkg"
    write_gpkg(bad, {"roads": gpd.read_file(layer).to_crs("EPSG:32650")})
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure", "--overwrite", "--expressways",
                                       str(bad)])
    assert result.exit_code == CRSError.exit_code and "EPSG:4326" in result.output
