"""Tests of the rail network and door-to-core travel times (geo_pipeline.rail_network)."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
from conftest import MIRROR
from shapely.geometry import LineString, Point, box

from geo_pipeline import DataQualityWarning, InputError, rail
from geo_pipeline import rail_geometry as rg
from geo_pipeline import rail_network as rn

RAIL = MIRROR / "rail"
GEOD = pyproj.Geod(ellps="WGS84")
DEG_EQ_KM = 6378137.0 * np.pi / 180.0 / 1000.0  # one degree of longitude along the WGS84 equator


def _km(a: tuple[float, float], b: tuple[float, float]) -> float:
    return float(GEOD.inv(a[0], a[1], b[0], b[1])[2]) / 1000.0


def _net_lines() -> gpd.GeoDataFrame:
    """Line A (high-speed 300 km/h, 2008): 甲 (0,0) - 乙 (1,0) - 丙 (2,0) along the equator.

    Line B (conventional 100 km/h, 2015): 乙 (1,0) - 丁 (1,1).
    """
    return gpd.GeoDataFrame(
        {
            "line_id": ["A", "B"],
            "name": ["A", "B"],
            "class": ["high-speed", "conventional"],
            "design_speed_kmh": [300.0, 100.0],
            "open_year": pd.array([2008, 2015], dtype="Int64"),
            "stations": ["甲-乙-丙", "乙-丁"],
            "station_ids": ["key:甲|key:乙|key:丙", "key:乙|key:丁"],
        },
        geometry=[LineString([(0, 0), (1, 0), (2, 0)]), LineString([(1, 0), (1, 1)])],
        crs="EPSG:4326",
    )


def test_synthetic_station_minutes_equal_hand_values() -> None:
    g = rn.build_network(_net_lines(), speed_factor=0.8, dwell_min=2.0, transfer_min=15.0)
    # A: 2 degrees of equator at 300 x 0.8 km/h, one stop (乙) passed through
    assert DEG_EQ_KM == pytest.approx(111.3194908)
    ab = 60 * DEG_EQ_KM / 240.0  # 27.82987 min
    assert rn.station_minutes(g, "甲", "丙") == pytest.approx(2 * ab + 2.0, abs=1e-9)
    assert rn.station_minutes(g, "丙", "甲") == pytest.approx(2 * ab + 2.0, abs=1e-9)
    # 甲 -> 丁: A to 乙, change (15 min), B north one degree at 100 x 0.8 km/h
    bd = 60 * _km((1, 0), (1, 1)) / 80.0
    assert _km((1, 0), (1, 1)) == pytest.approx(110.574, abs=1e-3)
    assert rn.station_minutes(g, "甲", "丁") == pytest.approx(ab + 15.0 + bd, abs=1e-9)
    assert rn.station_minutes(g, "乙", "乙") == 0.0
    # a stop set without 乙... key stations always stop; an intermediate OSM station does not
    lines = _net_lines()
    lines.loc[0, "station_ids"] = "key:甲|osm:7|key:丙"
    lines.loc[0, "stations"] = "甲-?-丙"
    g2 = rn.build_network(lines, speed_factor=0.8, dwell_min=2.0, transfer_min=15.0, stops=set())
    assert rn.station_minutes(g2, "甲", "丙") == pytest.approx(2 * ab, abs=1e-9)
    g3 = rn.build_network(lines, speed_factor=0.8, dwell_min=2.0, transfer_min=15.0, stops={"osm:7"})
    assert rn.station_minutes(g3, "甲", "丙") == pytest.approx(2 * ab + 2.0, abs=1e-9)
    with pytest.raises(InputError, match="not on any line"):
        rn.station_minutes(g, "甲", "戊")
    with pytest.raises(InputError, match="speed_factor"):
        rn.build_network(_net_lines(), speed_factor=0)


def test_synthetic_core_access_equals_hand_values() -> None:
    lines = _net_lines()
    cores = gpd.GeoDataFrame({"name": ["C"]}, geometry=[Point(0, 0)], crs="EPSG:4326")  # at station 甲
    eps = 1e-6
    units = gpd.GeoDataFrame(
        {"unit_id": ["near丁", "near丙", "core"]},
        geometry=[box(1 - eps, 1 - eps, 1 + eps, 1 + eps), box(2 - eps, -eps, 2 + eps, eps),
                  box(0.05 - eps, -eps, 0.05 + eps, eps)],
        crs="EPSG:4326",
    )
    out = rn.core_access(units, lines, cores, speed_factor=0.8, dwell_min=2.0, transfer_min=15.0,
                         road_kmh=50.0, detour=1.3, access_radius_km=0.0).set_index("unit_id")
    ab = 60 * DEG_EQ_KM / 240.0
    # unit at 丁: access ~0, A 甲-乙, change, B 乙-丁; the core enters at 甲 with 0 access
    want = ab + 15.0 + 60 * _km((1, 0), (1, 1)) / 80.0
    assert out.loc["near丁", "rail_minutes_to_core"] == pytest.approx(want, abs=0.01)
    assert out.loc["near丁", "rail_route"] == "rail" and out.loc["near丁", "rail_station"] == "丁"
    assert out.loc["near丁", "rail_core"] == "C"
    assert out.loc["near丙", "rail_minutes_to_core"] == pytest.approx(2 * ab + 2.0, abs=0.01)
    # the unit 0.05 degree from the core goes by road: 5.566 km x 1.3 at 50 km/h
    road = 60 * 0.05 * DEG_EQ_KM * 1.3 / 50.0
    assert out.loc["core", "rail_minutes_to_core"] == pytest.approx(road, abs=0.01)
    assert out.loc["core", "rail_route"] == "road" and np.isnan(out.loc["core", "rail_access_minutes"])
    assert list(out["rail_time_band"]) == ["120-180 min", "< 60 min", "< 60 min"]
    # the 2010 network has line A only: 丁 is reached from 乙 by road (110.574 km x 1.3 at 50 km/h)
    both = rn.access_then_and_now(units, lines, cores, speed_factor=0.8, dwell_min=2.0, transfer_min=15.0,
                                  road_kmh=50.0, detour=1.3, access_radius_km=200.0).set_index("unit_id")
    then = ab + 60 * _km((1, 1), (1, 0)) * 1.3 / 50.0
    assert both.loc["near丁", "rail_minutes_to_core_2010"] == pytest.approx(then, abs=0.01)
    assert both.loc["near丁", "rail_minutes_saved"] == pytest.approx(then - want, abs=0.02)
    assert both.loc["near丙", "rail_minutes_saved"] == pytest.approx(0.0, abs=1e-9)


def test_time_bands_and_errors() -> None:
    assert rn.time_band_labels() == ["< 60 min", "60-120 min", "120-180 min", "180+ min"]
    got = rn.time_bands(np.array([0.0, 59.99, 60.0, 179.9, 180.0, 1000.0]))
    assert list(got) == ["< 60 min", "< 60 min", "60-120 min", "120-180 min", "180+ min", "180+ min"]
    assert list(rn.time_bands([30.0, 45.0], breaks_min=[45])) == ["< 45 min", "45+ min"]
    with pytest.raises(InputError, match="increasing"):
        rn.time_bands([1.0], breaks_min=[60, 30])
    with pytest.raises(InputError, match="finite"):
        rn.time_bands([np.nan])


def test_time_band_and_access_change_summaries() -> None:
    units = pd.DataFrame({
        "unit_id": list("abcd"),
        "rail_minutes_to_core": [30.0, 90.0, 200.0, 61.0],
        "rail_minutes_to_core_2010": [30.0, 200.0, 240.0, 61.5],
        "pop_2010": [100, 200, 300, 400],
        "pop_2020": [110, 180, 300, 380],
        "change_pct": [10.0, -10.0, 0.0, -5.0],
        "shrinking": [False, True, False, True],
    })
    s = rn.time_band_summary(units).set_index("band")
    assert list(s.index) == ["< 60 min", "60-120 min", "120-180 min", "180+ min", "all"]
    assert s.loc["60-120 min", "n_units"] == 2 and s.loc["60-120 min", "shrinking_share"] == 1.0
    assert s.loc["60-120 min", "pop_weighted_change_pct"] == pytest.approx(100 * (560 - 600) / 600)
    assert s.loc["120-180 min", "n_units"] == 0 and s.loc["all", "pop_2020"] == 970
    c = rn.access_change_summary(units).set_index("group")
    assert c.loc["saved 60+ min", "n_units"] == 1 and c.loc["saved 30-60 min", "n_units"] == 1
    assert c.loc["under 1 min", "n_units"] == 2 and c.loc["all", "median_saved_min"] == pytest.approx(20.25)


# -- real data -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_network() -> tuple[gpd.GeoDataFrame, set[str]]:
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    cat = rail.prepare_catalogue(pd.read_csv(RAIL / "railways_lines.csv"))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        lines = rail.lines_from_corridors(raw)
    st = rail.stations_from_points(gpd.read_file(RAIL / "osm_railway_stations.zip"))
    pools = rg.threading_pools(st, train_counts=pd.read_csv(RAIL / "derived_station_train_counts.csv"))
    unmatched = dict(zip(raw["line"], raw["unmatched"], strict=True))
    threaded = rg.thread_lines(lines.assign(unmatched=lines["name"].map(unmatched)), pools)
    assert len(cat) == 249
    stops = {str(i) for p in pools.values() for i in p.loc[p["hub"], "station_id"]}
    return threaded, stops


def test_real_network_known_pairs(real_network: tuple[gpd.GeoDataFrame, set[str]]) -> None:
    lines, stops = real_network
    g = rn.build_network(lines, stops=stops)
    check = rn.reference_check(g).set_index("origin")
    # timetable: 北京南-上海虹桥 258 min (4 h 18), 武汉-广州南 230 min (3 h 50); margin +-25 %
    assert check.loc["北京南", "reference_min"] == 258 and check.loc["武汉", "reference_min"] == 230
    assert check["within_margin"].all() and (check["margin"] == 0.25).all()
    # measured with the defaults (factor 0.8, 2 min per stop): 289.7 and 203.4 min
    assert check.loc["北京南", "network_min"] == pytest.approx(289.7, abs=0.5)
    assert check.loc["武汉", "network_min"] == pytest.approx(203.4, abs=0.5)
    assert abs(check.loc["北京南", "ratio"] - 1) <= 0.25 and abs(check.loc["武汉", "ratio"] - 1) <= 0.25


def test_real_2010_network_has_no_later_line(real_network: tuple[gpd.GeoDataFrame, set[str]]) -> None:
    lines, stops = real_network
    old = rn.lines_open_before(lines, 2010)
    assert len(old) == 129 and old["open_year"].max() <= 2009 and old["open_year"].notna().all()
    g = rn.build_network(old, stops=stops)
    in_graph = {n[0] for n in g.nodes if isinstance(n, tuple)}
    assert in_graph == set(old["line_id"])
    late = set(lines.loc[pd.to_numeric(lines["open_year"]) >= 2010, "line_id"])
    assert late and not (in_graph & late)
    # 京沪高铁 (2011) and 沪宁城际 (2010) are not in it; Shanghai Hongqiao is served only by 沪昆高铁-沪杭段,
    # whose catalogue date 2009.2.26 is its construction start (opened 2010-10-26, still before the census)
    assert {"京沪高铁", "沪宁城际"} <= late
    assert {n[0] for n in g.successors("name:上海虹桥") if isinstance(n, tuple)} == {"沪昆高铁-沪杭段"}


def test_core_search_reused_for_other_units_is_identical(
    real_network: tuple[gpd.GeoDataFrame, set[str]],
) -> None:
    """The cores' network search made once and reused for other units gives the same frames.

    As the infrastructure stage's second level does; real lines, cores and polygons.
    """
    from geo_pipeline.boundaries import read_cnmaps
    from geo_pipeline.distance import default_cores

    lines, stops = real_network
    cores = default_cores()
    raw = read_cnmaps()
    levels = []
    for level, keep in (("区县", raw["adcode"].str[:2].isin(["21", "22", "23", "42"])), ("市", True)):
        part = raw.loc[(raw["level"] == level) & keep].drop_duplicates("adcode")
        levels.append(gpd.GeoDataFrame({"unit_id": part["adcode"].to_numpy()},
                                       geometry=part.geometry.to_numpy(), crs="EPSG:4326"))
    assert len(levels[0]) > 300 and len(levels[1]) > 300
    searches: dict[str, rn.CoreSearch] = {}
    opts = {"stops": stops, "access_radius_km": 50.0}
    for units in levels:
        shared = rn.access_then_and_now(units, lines, cores, year=2010, searches=searches, **opts)
        alone = rn.access_then_and_now(units, lines, cores, year=2010, **opts)
        pd.testing.assert_frame_equal(shared, alone, check_exact=True)
        assert (shared["rail_route"] == "rail").sum() > 100
        pd.testing.assert_frame_equal(rn.core_access(units, lines, cores, search=searches["now"], **opts),
                                      rn.core_access(units, lines, cores, **opts), check_exact=True)
    assert set(searches) == {"now", "then"} and len(searches["now"].minutes) > len(searches["then"].minutes)
    with pytest.raises(InputError, match="no cores"):
        rn.access_then_and_now(levels[1], lines, cores.iloc[:0], searches={}, **opts)
