"""Tests of the threaded rail geometry (geo_pipeline.rail_geometry), synthetic and real."""

from __future__ import annotations

import warnings

import geopandas as gpd
import numpy as np
import osmnx as ox
import pandas as pd
import pytest
import shapely
from conftest import MIRROR
from shapely.geometry import LineString, Point

from geo_pipeline import DataQualityWarning, InputError, rail
from geo_pipeline import infrastructure as inf
from geo_pipeline import rail_geometry as rg

RAIL = MIRROR / "rail"
GUIXI = MIRROR / "osm" / "guixi_jiangxi.osm"


# -- synthetic -------------------------------------------------------------------------------------


def test_thread_segment_order_lateral_and_detour() -> None:
    a, b = np.array([0.0, 0.0]), np.array([100_000.0, 0.0])
    cands = np.array(
        [
            [60_000.0, 2_000.0],  # 0 kept, second
            [40_000.0, -1_000.0],  # 1 kept, first
            [50_000.0, 9_000.0],  # 2 within 10 km but a zig-zag between 1 and 0: detour > 25 %
            [60_000.0, 12_000.0],  # 3 beyond 10 km lateral
            [-5_000.0, 0.0],  # 4 before A
            [99_000.0, 0.0],  # 5 within min_gap of B
            [40_500.0, -1_000.0],  # 6 within min_gap of station 1: merged into it
        ]
    )
    got = rg.thread_segment(a, b, cands, max_lateral=10_000.0, max_detour=0.25, min_gap=2_000.0)
    assert got.tolist() == [1, 0]
    # the detour of station 2 between 1 and 0 is (|1-2| + |2-0|) / |1-0| - 1
    d = (np.hypot(10_000, 10_000) + np.hypot(10_000, 7_000)) / np.hypot(20_000, 3_000) - 1
    assert d == pytest.approx(0.30286, abs=1e-5)
    loose = rg.thread_segment(a, b, cands, max_lateral=10_000.0, max_detour=d + 1e-9, min_gap=2_000.0)
    assert loose.tolist() == [1, 2, 0]
    per_station = np.full(len(cands), 500.0)
    per_station[0] = 10_000.0  # only station 0 may lie 2 km off
    got = rg.thread_segment(a, b, cands, max_lateral=per_station, max_detour=0.25, min_gap=2_000.0)
    assert got.tolist() == [0]


def _synthetic_line() -> tuple[gpd.GeoDataFrame, dict[str, gpd.GeoDataFrame]]:
    lines = gpd.GeoDataFrame(
        {"line_id": ["L"], "name": ["L"], "class": ["high-speed"], "key_stations": ["甲-乙-丙"]},
        geometry=[LineString([(110.0, 30.0), (111.0, 30.0), (111.0, 31.0)])],
        crs="EPSG:4326",
    )
    pts = {"子": (110.3, 30.05), "丑": (110.7, 29.97), "远": (110.5, 30.6), "寅": (111.03, 30.5),
           "乙": (111.0005, 30.0)}  # 乙 is a key station: not added twice
    st = gpd.GeoDataFrame({"name": list(pts)}, geometry=[Point(*p) for p in pts.values()], crs="EPSG:4326")
    counts = pd.DataFrame({"station": list(pts), "total": 10, "hsr_GDC": 10})
    return lines, rg.threading_pools(rail.stations_from_points(st, kinds=None), train_counts=counts)


def test_thread_lines_vertices_are_the_stations() -> None:
    lines, pools = _synthetic_line()
    out = rg.thread_lines(lines, pools, max_lateral_km=20.0)
    row = out.iloc[0]
    assert row["stations"] == "甲-子-丑-乙-寅-丙"
    assert row["station_ids"].split("|") == ["key:甲", "name:子", "name:丑", "key:乙", "name:寅", "key:丙"]
    assert shapely.get_coordinates(row.geometry).tolist() == [
        [110.0, 30.0], [110.3, 30.05], [110.7, 29.97], [111.0, 30.0], [111.03, 30.5], [111.0, 31.0]]
    assert row["geometry_source"] == "threaded" and row["n_stations"] == 6
    assert row["length_ratio"] > 1.0
    straight = rg.thread_lines(lines, pools, max_lateral_km=1.0)
    assert shapely.get_coordinates(straight.geometry.iloc[0]).tolist() == [[110.0, 30.0], [111.0, 30.0],
                                                                           [111.0, 31.0]]
    assert straight["length_ratio"].iloc[0] == pytest.approx(1.0)
    with pytest.raises(InputError, match="EPSG:4326"):
        rg.thread_lines(lines.to_crs("EPSG:32649"), pools)
    with pytest.raises(InputError, match="positive"):
        rg.thread_lines(lines, pools, max_lateral_km=0)


def test_track_offset_exact_on_parallel_lines() -> None:
    # a track 0.01 degree of latitude (1108.6 m at 30 N on WGS84 per Geod) north of our line
    ours = gpd.GeoDataFrame({"name": ["L"]}, geometry=[LineString([(110.0, 30.0), (110.2, 30.0)])],
                            crs="EPSG:4326")
    tracks = gpd.GeoDataFrame({"track": ["T"], "line": ["L"]},
                              geometry=[LineString([(110.05, 30.01), (110.15, 30.01)])], crs="EPSG:4326")
    off = rg.track_offset(ours, tracks).set_index("track")
    assert off.loc["T", "median_m"] == pytest.approx(1108.9, abs=2.0)
    assert off.loc["T", "max_m"] == pytest.approx(1108.9, abs=2.0)
    assert off.loc["all", "n_points"] == off.loc["T", "n_points"] > 90
    with pytest.raises(InputError, match="no line named"):
        rg.track_offset(ours, tracks.assign(line="X"))


# -- real data -------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def real_versions() -> dict[str, gpd.GeoDataFrame]:
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DataQualityWarning)
        lines = rail.lines_from_corridors(raw)
    st = rail.stations_from_points(gpd.read_file(RAIL / "osm_railway_stations.zip"))
    counts = pd.read_csv(RAIL / "derived_station_train_counts.csv")
    pools = rg.threading_pools(st, train_counts=counts)
    unmatched = dict(zip(raw["line"], raw["unmatched"], strict=True))
    threaded = rg.thread_lines(lines.assign(unmatched=lines["name"].map(unmatched)), pools)
    return {"straight": lines, "threaded": threaded, "pools": pools}  # type: ignore[dict-item]


def test_real_threaded_lines_pass_through_their_stations(real_versions: dict[str, gpd.GeoDataFrame]) -> None:
    straight, threaded, pools = (real_versions[k] for k in ("straight", "threaded", "pools"))
    assert len(threaded) == len(straight) == 238
    coords = {}
    for pool in pools.values():  # type: ignore[attr-defined]
        coords.update(zip(pool["station_id"], map(tuple, shapely.get_coordinates(pool.geometry.values)),
                          strict=True))
    n_checked = 0
    for s_geom, row in zip(straight.geometry, threaded.itertuples(), strict=True):
        v = [tuple(c) for c in shapely.get_coordinates(row.geometry)]
        ids = row.station_ids.split("|")
        assert len(v) == len(ids) == row.n_stations
        # every intermediate station is a vertex at its exact pool coordinates, in order
        for vertex, sid in zip(v, ids, strict=True):
            if not sid.startswith("key:"):
                assert vertex == coords[sid]
                n_checked += 1
        # the key stations are vertices too, unchanged and in order
        keys = [tuple(c) for c in shapely.get_coordinates(s_geom)]
        assert [c for c, sid in zip(v, ids, strict=True) if sid.startswith("key:")] == keys
        mid = [i for i in ids if not i.startswith("key:")]
        assert len(set(mid)) == len(mid)  # no intermediate station twice (the catalogue repeats 黄石北 once)
    assert n_checked == int(threaded["n_stations"].sum()) - sum(
        len(shapely.get_coordinates(g)) for g in straight.geometry)
    assert n_checked > 2500
    # no zig-zag beyond the rule: every threaded line is at most 35 % longer than its straight version
    assert threaded["length_ratio"].between(1.0 - 1e-9, 1.35).all()
    hs = threaded.set_index("name")
    assert hs.loc["京沪高铁", "stations"].startswith("北京南-天津西-天津南-德州东-济南西-曲阜东-徐州东")


def test_tm_pipeline_is_bit_identical_to_from_crs(real_versions: dict[str, gpd.GeoDataFrame],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """The transverse Mercator built from pipeline text (fast) is exactly from_crs's, on every real line."""
    assert rg._tm_pipeline_is_exact()
    straight = real_versions["straight"]
    xy = np.concatenate([shapely.get_coordinates(p.geometry.values) for p in real_versions["pools"].values()])
    for geom in straight.geometry.values[:40]:
        k = shapely.get_coordinates(geom)
        lon0 = round(float((k[:, 0].min() + k[:, 0].max()) / 2), 6)
        fast, ref = rg._tm(lon0), rg._tm_from_crs(lon0)
        assert fast.definition == ref.definition
        for a, b in zip(fast.transform(xy[:, 0], xy[:, 1]), ref.transform(xy[:, 0], xy[:, 1]), strict=True):
            assert np.array_equal(a, b)
    # the whole threading, with from_crs for every line, gives the same frame
    monkeypatch.setattr(rg, "_tm", rg._tm_from_crs)
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    unmatched = dict(zip(raw["line"], raw["unmatched"], strict=True))
    slow = rg.thread_lines(straight.assign(unmatched=straight["name"].map(unmatched)), real_versions["pools"])
    threaded = real_versions["threaded"]
    pd.testing.assert_frame_equal(pd.DataFrame(slow.drop(columns="geometry")),
                                  pd.DataFrame(threaded.drop(columns="geometry")), check_exact=True)
    assert list(shapely.to_wkb(slow.geometry.values)) == list(shapely.to_wkb(threaded.geometry.values))


def test_real_guixi_offset_threaded_below_straight(real_versions: dict[str, gpd.GeoDataFrame]) -> None:
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    cat = rail.prepare_catalogue(pd.read_csv(RAIL / "railways_lines.csv"))
    osm = rail.lines_from_osm(ox.features_from_xml(GUIXI, tags={"railway": "rail"}), catalogue=cat,
                              reference=raw.loc[raw.geometry.notna()])
    osm = osm.loc[osm["name"].isin(["沪昆线", "皖赣线"])]
    assert dict(zip(osm["name"], osm["catalogue_line"], strict=True)) == {
        "沪昆线": "沪昆线-浙赣段", "皖赣线": "皖赣线-宣贵段"}
    tracks = gpd.GeoDataFrame({"track": osm["name"].to_numpy(), "line": osm["catalogue_line"].to_numpy()},
                              geometry=osm.geometry.to_numpy(), crs=osm.crs)
    s = rg.track_offset(real_versions["straight"], tracks).set_index("track")
    t = rg.track_offset(real_versions["threaded"], tracks).set_index("track")
    # measured: 沪昆线 mean 2712 -> 517 m, max 6461 -> 909 m; 皖赣线 8036 -> 7705 m; all 4828 -> 3374 m
    assert s.loc["沪昆线", "mean_m"] == pytest.approx(2712, abs=5)
    assert t.loc["沪昆线", "mean_m"] == pytest.approx(517, abs=5)
    assert t.loc["沪昆线", "max_m"] < 1000 < 6000 < s.loc["沪昆线", "max_m"]
    assert t.loc["皖赣线", "mean_m"] < s.loc["皖赣线", "mean_m"]
    assert t.loc["all", "mean_m"] < 0.75 * s.loc["all", "mean_m"]
    assert t.loc["all", "median_m"] < 0.25 * s.loc["all", "median_m"]


def test_membership_change_counts() -> None:
    a = pd.DataFrame({"unit_id": ["1", "2", "3"], "in_corridor": [True, False, True],
                      "corridor_share": [0.6, 0.1, 1.0], "hsr_crosses": [True, False, True]})
    b = a.assign(in_corridor=[False, True, True], corridor_share=[0.4, 0.7, 1.0])
    m = rg.membership_change(a, b).set_index("measure")["value"]
    assert (m["entered"], m["left"], m["in_corridor_straight"], m["in_corridor_threaded"]) == (1, 1, 2, 2)
    assert m["mean_abs_share_change"] == pytest.approx(0.8 / 3)
    assert m["max_abs_share_change"] == pytest.approx(0.6)
    with pytest.raises(InputError, match="same units"):
        rg.membership_change(a, b.iloc[:2])


def test_overlay_accepts_threaded_lines(real_versions: dict[str, gpd.GeoDataFrame]) -> None:
    hs = real_versions["threaded"]
    buf = inf.corridor_buffers(hs, buffer_km=30.0)
    assert len(buf) == int((hs["class"] == "high-speed").sum()) == 60
