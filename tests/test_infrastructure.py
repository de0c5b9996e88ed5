"""Tests of the infrastructure stage: rail sources, utilisation, corridor overlay, summary, CLI."""

from __future__ import annotations

import json
import math
import re
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import pyproj
import pytest
import shapely
from click.testing import CliRunner
from conftest import MIRROR, write_config
from shapely.geometry import LineString, Point, box

from geo_pipeline import CRSError, DataQualityWarning, InputError, OutputExistsError, rail
from geo_pipeline import infrastructure as inf
from geo_pipeline._io import list_layers, read_layer, read_table, write_gpkg
from geo_pipeline.cli import main
from geo_pipeline.distance import default_cores

RAIL = MIRROR / "rail"
GUIXI = MIRROR / "osm" / "guixi_jiangxi.osm"
UTM50 = "EPSG:32650"
KM = 1000.0
X0 = 300_000.0  # false-easting offset of the synthetic layout (metres)
GEOD = pyproj.Geod(ellps="WGS84")


# -- helpers ---------------------------------------------------------------------------------------


def _lines(rows: list[tuple[str, str, float | None, object]], crs: str) -> gpd.GeoDataFrame:
    """Build standard lines from (name, class, open_year, geometry) tuples."""
    frame = gpd.GeoDataFrame(
        {
            "line_id": [r[0] for r in rows],
            "name": [r[0] for r in rows],
            "class": [r[1] for r in rows],
            "open_year": pd.array([r[2] for r in rows], dtype="Int64"),
        },
        geometry=[r[3] for r in rows],
        crs=crs,
    )
    return frame


def _stations(rows: list[tuple[str, bool, float, float]], crs: str) -> gpd.GeoDataFrame:
    return gpd.GeoDataFrame(
        {"name": [r[0] for r in rows], "high_speed": [r[1] for r in rows]},
        geometry=[Point(r[2], r[3]) for r in rows],
        crs=crs,
    )


def _vline(x_km: float) -> LineString:
    """Return a north-south line at x (km from X0) running well beyond the unit row."""
    return LineString([(X0 + x_km * KM, -500 * KM), (X0 + x_km * KM, 600 * KM)])


def _square(x0_km: float) -> shapely.Polygon:
    return box(X0 + x0_km * KM, 0, X0 + (x0_km + 100) * KM, 100 * KM)


@pytest.fixture()
def layout() -> tuple[gpd.GeoDataFrame, gpd.GeoDataFrame, gpd.GeoDataFrame]:
    """Four 100 km squares in UTM 50N with straight high-speed lines.

    U1 [0,100]:   lines A x=50 (2015) and C x=70 (2008) -> covered x in [20,100]: share 0.8, crossed
    U2 [300,400]: line B x=380 (2012) -> [350,410]: share 0.5, crossed
    U3 [600,700]: D x=595 (2009) -> [565,625] 0.25; E x=705 (2016) -> [675,735] 0.25; union 0.5, not crossed
    U4 [900,1000]: only a conventional line at x=950: share 0, not crossed
    """
    units = gpd.GeoDataFrame(
        {"unit_id": ["U1", "U2", "U3", "U4"]},
        geometry=[_square(0), _square(300), _square(600), _square(900)],
        crs=UTM50,
    )
    lines = _lines(
        [
            ("A", "high-speed", 2015, _vline(50)),
            ("C", "high-speed", 2008, _vline(70)),
            ("B", "high-speed", 2012, _vline(380)),
            ("D", "high-speed", 2009, _vline(595)),
            ("E", "high-speed", 2016, _vline(705)),
            ("K", "conventional", 1950, _vline(950)),
        ],
        UTM50,
    )
    stations = _stations(
        [("hs1", True, X0 + 50 * KM, 50 * KM), ("slow", False, X0 + 950 * KM, 50 * KM)], UTM50
    )
    return units, lines, stations


# -- names and catalogue ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b"),
    [("广州南站", "广州南"), (" 北京西 ", "北京西"), ("重庆北火车站", "重庆北"), ("ＡＢ站", "AB")],
)
def test_station_key_normalises(a: str, b: str) -> None:
    assert rail.station_key(a) == rail.station_key(b) == b


def test_line_key_normalises() -> None:
    assert rail.line_key("沪昆铁路") == rail.line_key("沪昆线") == "沪昆"
    assert rail.line_key("京沪高速铁路") == rail.line_key("京沪高铁")
    assert rail.line_key("沪昆线-浙赣段") == "沪昆-浙赣段"
    assert rail.line_key("兰新客运专线") != rail.line_key("兰新铁路")


def test_catalogue_real_counts() -> None:
    raw = pd.read_csv(RAIL / "railways_lines.csv")
    cat = rail.prepare_catalogue(raw)
    assert len(cat) == len(raw) == 249
    expected = raw["线路类型"].value_counts()
    assert (cat["class"] == "high-speed").sum() == expected["高速铁路"]
    assert (cat["class"] == "fast").sum() == expected["快速铁路"]
    assert (cat["class"] == "conventional").sum() == expected["普速铁路"]
    row = cat.loc[cat["line"] == "京沪高铁"].iloc[0]
    assert row["open_year"] == 2011 and row["design_speed_kmh"] == 350.0
    assert row["key_stations"].startswith("北京南-") and row["key_stations"].endswith("-上海虹桥")


def test_catalogue_missing_column_and_bad_type() -> None:
    raw = pd.read_csv(RAIL / "railways_lines.csv").drop(columns=["现设计时速"])
    with pytest.raises(InputError, match=r"missing column\(s\) \['现设计时速'\]"):
        rail.prepare_catalogue(raw)
    bad = pd.DataFrame({"线路": ["x"], "线路类型": ["磁悬浮"], "现设计时速": [430], "建成年份": ["2003"]})
    with pytest.raises(InputError, match="unknown line type"):
        rail.prepare_catalogue(bad)


def test_corridor_lines_real_counts() -> None:
    """High-speed corridor lines = 高速铁路 features with geometry, counted straight from the JSON."""
    data = json.loads((RAIL / "approx_corridors_keystations.geojson").read_text(encoding="utf-8"))
    feats = data["features"]
    with_geom = [f for f in feats if f["geometry"] is not None]
    expected_hs = sum(f["properties"]["type"] == "高速铁路" for f in with_geom)
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    with pytest.warns(
        DataQualityWarning, match=f"{len(feats) - len(with_geom)} line\\(s\\) have no geometry"
    ):
        lines = rail.lines_from_corridors(raw)
    assert len(lines) == len(with_geom)
    assert (lines["class"] == "high-speed").sum() == expected_hs
    assert lines["approximate"].all() and lines["note"].str.contains("tens of km").all()
    assert lines.crs.equals("EPSG:4326")
    assert list(lines.columns[: len(rail.LINE_COLUMNS)]) == list(rail.LINE_COLUMNS)


# -- OSM (osmnx, offline) --------------------------------------------------------------------------


def _osm_rail_ways() -> dict[str, int]:
    """Named railway=rail ways in the Guixi extract, parsed with ElementTree (independent of osmnx)."""
    names: Counter[str] = Counter()
    for way in ET.parse(GUIXI).getroot().iter("way"):
        tags = {t.get("k"): t.get("v") for t in way.iter("tag")}
        if tags.get("railway") == "rail" and tags.get("name"):
            names[tags["name"]] += 1
    return dict(names)


def test_guixi_osm_lines_through_osmnx() -> None:
    import osmnx as ox

    expected = _osm_rail_ways()
    assert {"沪昆线", "皖赣线"} <= set(expected)
    features = ox.features_from_xml(GUIXI, tags={"railway": "rail"})
    cat = rail.prepare_catalogue(pd.read_csv(RAIL / "railways_lines.csv"))
    ref = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    lines = rail.lines_from_osm(features, catalogue=cat, reference=ref.loc[ref.geometry.notna()])
    assert set(lines["name"]) == set(expected)
    assert dict(zip(lines["name"], lines["n_ways"], strict=True)) == expected
    assert lines.geom_type.isin(["LineString", "MultiLineString"]).all()
    # merged geometry keeps all of the ways' length
    ways = features.loc[features["railway"] == "rail"]
    for name in ("沪昆线", "皖赣线"):
        total = sum(GEOD.geometry_length(g) for g in ways.loc[ways["name"] == name].geometry)
        merged = GEOD.geometry_length(lines.loc[lines["name"] == name].geometry.iloc[0])
        assert merged == pytest.approx(total, rel=1e-9) and total > 1000  # metres
    # catalogue join: Guixi lies on the Zhejiang-Jiangxi section of 沪昆线 and on the Xuancheng-Guixi
    # section of 皖赣线 (宣贵 = 宣城-贵溪); both are conventional (普速) lines
    row = lines.set_index("name")
    assert row.loc["沪昆线", "catalogue_line"] == "沪昆线-浙赣段"
    assert row.loc["皖赣线", "catalogue_line"] == "皖赣线-宣贵段"
    assert row.loc["沪昆线", "class"] == row.loc["皖赣线", "class"] == "conventional"
    assert row.loc["沪昆线", "maxspeed_kmh"] == 160.0  # OSM maxspeed tag of those ways


def test_osm_class_from_tags() -> None:
    feats = gpd.GeoDataFrame(
        {
            "railway": ["rail", "rail", "rail", "rail", "station"],
            "name": ["HS by tag", "HS by speed", "fast by speed", None, "a station"],
            "highspeed": ["yes", None, None, "yes", None],
            "maxspeed": [None, "300", "200 km/h", None, None],
        },
        geometry=[
            LineString([(0, 0), (1, 0)]),
            LineString([(0, 1), (1, 1)]),
            LineString([(0, 2), (1, 2)]),
            LineString([(0, 3), (1, 3)]),
            Point(0, 0),
        ],
        crs="EPSG:4326",
    )
    lines = rail.lines_from_osm(feats).set_index("name")
    assert list(lines.index) == ["HS by speed", "HS by tag", "fast by speed"]  # unnamed way left out
    assert lines.loc["HS by tag", "class"] == "high-speed"
    assert lines.loc["HS by speed", "class"] == "high-speed"
    assert lines.loc["fast by speed", "class"] == "fast"


# -- stations --------------------------------------------------------------------------------------


def test_real_high_speed_stations_count() -> None:
    """Flagged = OSM train points whose name (minus 站) has G/D/C trains or is an HSR key station."""
    pts = pyogrio.read_dataframe(
        f"/vsizip/{(RAIL / 'osm_railway_stations.zip').as_posix()}/Railway-station_oData.shp"
    )
    train = pts.loc[pts["station"] == "train"]
    counts = pd.read_csv(RAIL / "derived_station_train_counts.csv")
    corridors = json.loads((RAIL / "approx_corridors_keystations.geojson").read_text(encoding="utf-8"))
    hs_key: set[str] = set()
    for f in corridors["features"]:
        p = f["properties"]
        if f["geometry"] is None or p["type"] != "高速铁路":
            continue
        skip = set((p.get("unmatched") or "").split("|"))
        hs_key |= {s for s in (p["stations"] or f"{p['start']}-{p['end']}").split("-") if s not in skip}
    hs_names = set(counts.loc[counts["hsr_GDC"] > 0, "station"]) | hs_key
    osm_names = train["name"].fillna("").str.strip().str.removesuffix("站")
    expected_osm = int(osm_names.isin(hs_names).sum())
    expected_added = len(hs_key - set(osm_names))

    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    st = rail.flag_high_speed(
        rail.stations_from_points(pts), train_counts=counts, key=rail.key_stations(raw), min_hsr_trains=1
    )
    assert len(st) == len(train) + expected_added
    assert int(st.loc[st["source"] == "osm", "high_speed"].sum()) == expected_osm
    assert int(st.loc[st["source"] == "corridor_key_station", "high_speed"].sum()) == expected_added
    gz = st.loc[st["name"] == "广州南"].iloc[0]
    assert gz["high_speed"] and gz["hsr_trains_per_day"] == 884 and "train_counts" in gz["high_speed_basis"]
    assert list(st.columns[:-1]) == list(rail.STATION_COLUMNS)


def test_flag_high_speed_threshold_and_names() -> None:
    st = rail.stations_from_points(
        gpd.GeoDataFrame(
            {"name": ["甲站", "乙", "丙"], "station": "train"},
            geometry=[Point(0, 0), Point(1, 0), Point(2, 0)],
            crs="EPSG:4326",
        )
    )
    counts = pd.DataFrame({"station": ["甲", "乙", "丙"], "total": [50, 40, 30], "hsr_GDC": [20, 5, 0]})
    out = rail.flag_high_speed(st, train_counts=counts, min_hsr_trains=10)
    assert out["high_speed"].tolist() == [True, False, False]
    assert out["trains_per_day"].tolist() == [50, 40, 30]
    assert st["high_speed"].tolist() == [False, False, False]  # input not mutated


# -- utilisation -----------------------------------------------------------------------------------


def test_utilisation_proxy_and_user_table() -> None:
    geom = [LineString([(0, i), (1, i)]) for i in range(4)]
    lines = gpd.GeoDataFrame(
        {
            "line_id": list("abcd"),
            "name": ["HS1", "HS2", "HS3", "Slow"],
            "class": ["high-speed", "high-speed", "high-speed", "conventional"],
            "key_stations": ["P-Q", "Q-R", "R-Z", "P-R"],
            "catalogue_line": "",
        },
        geometry=geom,
        crs="EPSG:4326",
    )
    counts = pd.DataFrame({"station": ["P站", "Q", "R"], "total": [100, 60, 20], "hsr_GDC": [80, 40, 10]})
    out = rail.line_utilisation(lines, train_counts=counts, threshold=0.4, reference_quantile=0.9)
    tpd = [(80 + 40) / 2, (40 + 10) / 2, 10.0]  # Z has no count: mean over the matched station only
    assert out["trains_per_day"].tolist()[:3] == pytest.approx(tpd)
    assert out["trains_per_day"].iloc[3] == pytest.approx((100 + 20) / 2)  # all trains for other classes
    ref = np.quantile(tpd, 0.9)  # numpy's linear quantile = pandas' default
    assert out["utilisation"].tolist()[:3] == pytest.approx([t / ref for t in tpd])
    assert out["utilisation"].iloc[3] == pytest.approx(1.0)  # alone in its class
    assert out["underused"].tolist() == [False, False, True, False]
    # a user table gives the real ratio where it matches, by normalised name
    table = pd.DataFrame({"line": ["HS3", "Slow铁路"], "ridership": [90, 10], "design_capacity": [100, 100]})
    out2 = rail.line_utilisation(lines, train_counts=counts, line_table=table, threshold=0.4)
    assert (
        out2["utilisation"].iloc[2] == pytest.approx(0.9)
        and out2["utilisation_basis"].iloc[2] == "user table"
    )
    assert out2["utilisation"].iloc[3] == pytest.approx(0.1) and bool(out2["underused"].iloc[3])
    # no data: utilisation and underused missing
    none = rail.line_utilisation(lines)
    assert none["utilisation"].isna().all() and none["underused"].isna().all()
    with pytest.raises(InputError, match="design_capacity"):
        rail.line_utilisation(lines, line_table=pd.DataFrame({"line": ["HS1"], "ridership": [1]}))


# -- overlay: exact synthetic shares ---------------------------------------------------------------


def test_synthetic_corridor_shares_are_exact(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    out = inf.unit_overlay(units, lines, stations, buffer_km=30, min_share=0.5)
    assert out["unit_id"].tolist() == ["U1", "U2", "U3", "U4"]
    assert out["corridor_share"].tolist() == pytest.approx([0.8, 0.5, 0.5, 0.0], abs=1e-9)
    assert out["hsr_crosses"].tolist() == [True, True, False, False]
    assert out["in_corridor"].tolist() == [True, True, True, False]
    # U1: earliest crossing line C (2008); U2: B (2012); U3 reaches 0.5 only when E opens (2016)
    assert out["hsr_first_open_year"].tolist()[:3] == [2008, 2012, 2016]
    assert pd.isna(out["hsr_first_open_year"].iloc[3])
    assert out["hsr_period"].tolist() == ["before 2010", "2010-2020", "2010-2020", "none"]
    assert out.crs.equals(UTM50) and units.columns.tolist() == ["unit_id", "geometry"]  # not mutated


def test_synthetic_share_threshold_and_buffer(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    out = inf.unit_overlay(units, lines, stations, buffer_km=10, min_share=0.3)
    # 10 km: U1 [40,60]+[60,80] = 0.4; U2 [370,390] = 0.2; U3 [600,605]+[695,700] = 0.1
    assert out["corridor_share"].tolist() == pytest.approx([0.4, 0.2, 0.1, 0.0], abs=1e-9)
    assert out["in_corridor"].tolist() == [True, True, False, False]  # U2 is crossed


def test_synthetic_station_distance_is_geodesic(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    out = inf.unit_overlay(units, lines, stations)
    # every unit's nearest high-speed station is hs1 (the conventional 'slow' station is ignored)
    assert (out["hsr_station"] == "hs1").all()
    to_ll = pyproj.Transformer.from_crs(UTM50, "EPSG:4326", always_xy=True)
    rep = shapely.get_coordinates(shapely.point_on_surface(units.geometry.values))
    lon, lat = to_ll.transform(rep[:, 0], rep[:, 1])
    slon, slat = to_ll.transform(X0 + 50 * KM, 50 * KM)
    _, _, d = GEOD.inv(lon, lat, np.full(4, slon), np.full(4, slat))
    assert out["hsr_station_km"].to_numpy() == pytest.approx(d / 1000, abs=1e-9)


def test_nearest_station_matches_brute_force_geod() -> None:
    rng = np.random.default_rng(20201101)
    plon, plat = rng.uniform(75, 134, 300), rng.uniform(18, 53, 300)
    slon, slat = rng.uniform(75, 134, 120), rng.uniform(18, 53, 120)
    pts = gpd.GeoSeries(gpd.points_from_xy(plon, plat), crs="EPSG:4326")
    st = gpd.GeoDataFrame(geometry=gpd.points_from_xy(slon, slat), crs="EPSG:4326")
    dist, idx = inf.nearest_station_km(pts, st)
    _, _, d = GEOD.inv(np.repeat(plon, 120), np.repeat(plat, 120), np.tile(slon, 300), np.tile(slat, 300))
    d = d.reshape(300, 120) / 1000
    assert dist == pytest.approx(d.min(axis=1), abs=1e-9)
    assert (idx == d.argmin(axis=1)).all()


def test_geographic_buffer_width_close_to_geodesic() -> None:
    """An east-west line over 10 degrees of longitude: the TM buffer edge lies 30 km (geodesic) away."""
    line = LineString([(110, 30), (120, 30)])
    lines = _lines([("L", "high-speed", 2010, line)], "EPSG:4326")
    buf = inf.corridor_buffers(lines, buffer_km=30)
    err = float(buf["max_scale_error"].iloc[0])
    assert 0 < err < 0.01
    edge = shapely.get_coordinates(buf.geometry.iloc[0].exterior)
    edge = edge[(edge[:, 0] > 110.5) & (edge[:, 0] < 119.5)]  # leave out the round caps
    dense = shapely.get_coordinates(shapely.segmentize(shapely.segmentize(line, 0.05), 0.002))
    # distance from each edge vertex to the line: nearest of the densely sampled line points
    d = np.array(
        [
            GEOD.inv(np.full(len(dense), x), np.full(len(dense), y), dense[:, 0], dense[:, 1])[2].min() / 1000
            for x, y in edge[::10]
        ]
    )
    assert d.max() <= 30.0 * (1 + 1e-3)  # never wider than 30 km
    assert d.min() >= 30.0 * (1 - err) - 0.05  # narrower by at most the reported TM scale error
    # dissolved corridor: equal-area size ~ 2 x 30 km x length + caps (pi 30^2)
    length = GEOD.geometry_length(shapely.segmentize(line, 0.01)) / 1000
    area = float(inf.dissolve_corridors(buf)["area_km2"].iloc[0])
    assert area == pytest.approx(60 * length + math.pi * 900, rel=err + 2e-3)


def test_fast_tm_transformers_give_the_from_crs_buffers(monkeypatch: pytest.MonkeyPatch) -> None:
    """Transformers made from the pipeline text: exactly the buffers of Transformer.from_crs per line."""
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson")
    with pytest.warns(DataQualityWarning):
        lines = rail.lines_from_corridors(raw)
    lines = lines[lines["class"] == "high-speed"].iloc[:12]
    fast = inf.corridor_buffers(lines, buffer_km=30)
    seen = []
    init = inf._TMTransformers.__init__

    def slow_init(self: inf._TMTransformers, geod_crs: pyproj.CRS) -> None:
        init(self, geod_crs)
        self.fast = False  # every line through Transformer.from_crs
        seen.append(self)

    monkeypatch.setattr(inf._TMTransformers, "__init__", slow_init)
    slow = inf.corridor_buffers(lines, buffer_km=30)
    assert seen and len(fast) == len(slow) == 12
    assert bool(shapely.equals_exact(fast.geometry.values, slow.geometry.values, tolerance=0).all())
    np.testing.assert_array_equal(fast["max_scale_error"], slow["max_scale_error"])
    monkeypatch.undo()
    make = inf._TMTransformers(pyproj.CRS("EPSG:4326"))
    make(lines.geometry.iloc[0])
    assert make.fast is True  # the pipeline text is what from_crs finds for WGS84
    other = inf._TMTransformers(pyproj.CRS("EPSG:4214"))  # Beijing 1954 (Krassowsky): from_crs per line
    other(lines.geometry.iloc[0])
    assert other.fast is False


def test_threaded_overlay_equals_one_thread(monkeypatch: pytest.MonkeyPatch) -> None:
    """The overlay's GEOS work split over threads gives exactly the one-thread result (real polygons)."""
    from geo_pipeline.boundaries import read_cnmaps

    raw = read_cnmaps()
    raw = raw[(raw["level"] == "区县") & raw["adcode"].str[:2].isin(["42", "43", "36"])]
    units = gpd.GeoDataFrame({"unit_id": raw["adcode"].to_numpy()}, geometry=raw.geometry.to_numpy(),
                             crs="EPSG:4326").drop_duplicates("unit_id").reset_index(drop=True)
    assert len(units) > 250
    with pytest.warns(DataQualityWarning):
        lines = rail.lines_from_corridors(gpd.read_file(RAIL / "approx_corridors_keystations.geojson"))
    stations = rail.key_stations(gpd.read_file(RAIL / "approx_corridors_keystations.geojson"))
    stations = stations.assign(high_speed=True)[["name", "high_speed", "geometry"]]
    results = []
    for threads in (1, 2, 3):
        monkeypatch.setattr(inf, "_THREADS", threads)
        results.append(inf.unit_overlay(units, lines, stations, buffer_km=30, min_share=0.5))
    assert 0 < results[0]["in_corridor"].sum() < len(units)
    assert results[0]["hsr_first_open_year"].notna().sum() > 50
    for other in results[1:]:
        pd.testing.assert_frame_equal(other, results[0])
    # the units projected once (area_geometry, passed as units_area) give the same frame, for
    # another line set too (the CLI overlays the straight and the threaded lines with one projection)
    monkeypatch.setattr(inf, "_THREADS", 2)
    area = inf.area_geometry(units)
    assert list(shapely.to_wkb(area)) == list(shapely.to_wkb(inf._to_area_crs(units.geometry).values))
    pd.testing.assert_frame_equal(
        inf.unit_overlay(units, lines, stations, buffer_km=30, min_share=0.5, units_area=area), results[0])
    short = lines.iloc[::2]
    pd.testing.assert_frame_equal(
        inf.unit_overlay(units, short, stations, buffer_km=20, min_share=0.5, units_area=area),
        inf.unit_overlay(units, short, stations, buffer_km=20, min_share=0.5))
    with pytest.raises(InputError, match="units_area must hold one geometry per unit"):
        inf.unit_overlay(units, lines, stations, units_area=area[:-1])


# -- overlay: bad input ----------------------------------------------------------------------------


def test_crs_mismatch_is_an_error(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    with pytest.raises(CRSError, match="GCJ-02"):
        inf.unit_overlay(units, lines.to_crs("EPSG:3857"), stations)
    fake_gcj02 = pyproj.CRS.from_wkt(
        'GEOGCRS["GCJ-02 (fake)",DATUM["fake datum",ELLIPSOID["Krassowsky 1940",6378245,298.3]],'
        'CS[ellipsoidal,2],AXIS["longitude",east,ANGLEUNIT["degree",0.0174532925199433]],'
        'AXIS["latitude",north,ANGLEUNIT["degree",0.0174532925199433]]]'
    )
    u4326 = units.to_crs("EPSG:4326")
    with pytest.raises(CRSError, match=r"rail stations is in .*GCJ-02 \(fake\)"):
        inf.unit_overlay(
            u4326,
            lines.to_crs("EPSG:4326"),
            stations.to_crs("EPSG:4326").set_crs(fake_gcj02, allow_override=True),
        )


def test_missing_columns_and_bad_geometry(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    with pytest.raises(InputError, match=r"missing column\(s\) \['unit_id'\]") as err:
        inf.unit_overlay(units.rename(columns={"unit_id": "id"}), lines.drop(columns=["class"]), stations)
    assert "['class']" in str(err.value)  # every problem listed in one error
    dup = pd.concat([units, units.iloc[:1]], ignore_index=True)
    with pytest.raises(InputError, match="must be unique"):
        inf.unit_overlay(dup, lines, stations)
    with pytest.raises(InputError, match="Polygon"):
        inf.unit_overlay(stations.assign(unit_id="x"), lines, stations)
    with pytest.raises(InputError, match=r"missing column\(s\) \['pop_2020'"):
        inf.corridor_summary(units.assign(pop_2010=1, change_pct=0.0, shrinking=False), units)


def test_empty_units_give_empty_schema(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    out = inf.unit_overlay(units.iloc[:0], lines, stations)
    assert out.empty and list(out.columns) == [*inf.UNIT_COLUMNS, "geometry"] and out.crs.equals(UTM50)
    empty_lines = rail.lines_from_corridors(
        gpd.read_file(RAIL / "approx_corridors_keystations.geojson").iloc[:0]
    )
    assert empty_lines.empty and list(empty_lines.columns) == [*rail.LINE_COLUMNS, "geometry"]


def test_no_high_speed_lines_warns(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    with pytest.warns(DataQualityWarning, match="no high-speed lines"):
        out = inf.unit_overlay(units, lines.loc[lines["class"] != "high-speed"], stations)
    assert not out["in_corridor"].any() and (out["corridor_share"] == 0).all()


# -- summary ---------------------------------------------------------------------------------------


def test_corridor_summary_values(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    out = inf.unit_overlay(units, lines, stations)
    pop = pd.DataFrame(
        {
            "unit_id": ["U1", "U2", "U3", "U4"],
            "pop_2010": [100, 200, 300, 400],
            "pop_2020": [110, 180, 300, 300],
        }
    )
    pop["change_pct"] = 100 * (pop["pop_2020"] / pop["pop_2010"] - 1)
    pop["shrinking"] = pop["change_pct"] < 0
    s = inf.corridor_summary(pop, out).set_index(["grouping", "group"])
    inside = s.loc[("corridor", "inside")]
    assert inside["n_units"] == 3 and inside["n_shrinking"] == 1
    assert inside["shrinking_share"] == pytest.approx(1 / 3)
    assert inside["pop_change_pct"] == pytest.approx(100 * (590 - 600) / 600)
    assert inside["median_change_pct"] == pytest.approx(0.0)  # median of 10, -10, 0
    outside = s.loc[("corridor", "outside")]
    assert outside["n_units"] == 1 and outside["pop_change_pct"] == pytest.approx(-25.0)
    assert s.loc[("first_hsr", "before 2010"), "n_units"] == 1
    assert s.loc[("first_hsr", "2010-2020"), "n_units"] == 2
    assert s.loc[("first_hsr", "none"), "n_units"] == 1
    assert s.loc[("all", "all"), "pop_2020"] == 890
    assert list(inf.corridor_summary(pop, out).columns) == list(inf.SUMMARY_COLUMNS)


# -- CLI -------------------------------------------------------------------------------------------


def _workdir(tmp_path: Path, units: gpd.GeoDataFrame, extra: str = "") -> Path:
    raw = tmp_path / "data_raw"
    raw.mkdir()
    (raw / "rail").symlink_to(RAIL, target_is_directory=True)
    (raw / "osm").symlink_to(MIRROR / "osm", target_is_directory=True)
    write_gpkg(tmp_path / "data_processed" / "population.gpkg", {"units": units})
    write_gpkg(tmp_path / "data_processed" / "distance.gpkg", {"cores": default_cores()})
    return write_config(tmp_path, MIRROR, "[infrastructure]\n" + extra if extra else "")


def _small_units() -> gpd.GeoDataFrame:
    """Dongcheng (Beijing), Huangpu (Shanghai) and a remote square in western Tibet, WGS84."""
    units = gpd.GeoDataFrame(
        {
            "unit_id": ["110101", "310101", "542523"],
            "name": ["东城区", "黄浦区", "remote"],
            "pop_2010": [919253, 678670, 10000],
            "pop_2020": [708829, 662030, 11000],
        },
        geometry=[
            box(116.38, 39.86, 116.45, 39.97),
            box(121.46, 31.19, 121.51, 31.25),
            box(80.0, 32.0, 80.5, 32.5),
        ],
        crs="EPSG:4326",
    )
    units["change_pct"] = 100 * (units["pop_2020"] / units["pop_2010"] - 1)
    units["shrinking"] = units["change_pct"] < 0
    return units


def test_cli_writes_layers_and_refuses_overwrite(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path, _small_units())
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(cfg), "infrastructure"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "data_processed" / "infrastructure.gpkg"
    assert set(list_layers(gpkg)) == {
        "rail_lines", "rail_stations", "corridors", "units", "corridor_summary", "geometry_check",
        "time_band_summary", "access_change_summary", "network_check", "underused_lines"}
    units = read_layer(gpkg, "units").set_index("unit_id")
    # door to core: central Beijing and Shanghai within an hour (by road to the core), western Tibet 180+
    assert units.loc["110101", "rail_minutes_to_core"] < 30 and units.loc["110101", "rail_core"] == "北京"
    assert units.loc["310101", "rail_time_band"] == "< 60 min"
    assert units.loc["542523", "rail_time_band"] == "180+ min"
    assert (units["rail_minutes_to_core"] <= units["rail_minutes_to_core_2010"]).all()
    bands = read_table(gpkg, "time_band_summary").set_index("band")
    assert bands.loc["all", "n_units"] == 3 and bands.loc["< 60 min", "n_units"] == 2
    assert read_table(gpkg, "network_check")["within_margin"].all()
    assert units["in_corridor"].equals(units["in_corridor_threaded"])  # threaded is the default
    check = read_table(gpkg, "geometry_check")
    offsets = check.loc[(check["track"] == "all") & (check["measure"] == "mean_m")].set_index("geometry")
    assert offsets.loc["threaded", "value"] < 0.75 * offsets.loc["straight", "value"]
    assert units.loc["110101", "in_corridor"] and units.loc["310101", "in_corridor"]
    assert not units.loc["542523", "in_corridor"] and units.loc["542523", "hsr_station_km"] > 500
    assert units.loc["310101", "hsr_station_km"] < 20  # Shanghai station/Hongqiao are close
    summary = read_table(gpkg, "corridor_summary").set_index(["grouping", "group"])
    assert summary.loc[("corridor", "inside"), "n_units"] == 2
    csv = pd.read_csv(tmp_path / "data_processed" / "corridor_summary.csv", encoding="utf-8-sig")
    assert len(csv) == len(summary)
    lines = read_layer(gpkg, "rail_lines")
    assert lines["approximate"].all() and (lines["geometry_source"] == "threaded").all()
    for layer in ("corridors", "underused_lines"):
        assert (read_layer(gpkg, layer)["geometry_source"] == "threaded").all()
    import sqlite3

    with sqlite3.connect(gpkg) as con:
        desc = dict(con.execute("SELECT table_name, description FROM gpkg_contents").fetchall())
    assert "tens of km" in desc["rail_lines"] and "tens of km" in desc["corridors"]
    manifest = json.loads((tmp_path / "data_processed" / "manifest.json").read_text(encoding="utf-8"))
    assert manifest["stages"]["infrastructure"]["summary"]["units"] == 3
    again = runner.invoke(main, ["-c", str(cfg), "infrastructure"])
    assert again.exit_code == OutputExistsError.exit_code and "--overwrite" in again.output


def test_cli_osm_lines_and_options(tmp_path: Path) -> None:
    guixi = gpd.GeoDataFrame(
        {
            "unit_id": ["360681"],
            "pop_2010": [560000],
            "pop_2020": [540000],
            "change_pct": [-3.57],
            "shrinking": [True],
        },
        geometry=[box(117.0, 28.1, 117.5, 28.5)],
        crs="EPSG:4326",
    )
    cfg = _workdir(tmp_path, guixi)
    result = CliRunner().invoke(
        main,
        ["-c", str(cfg), "infrastructure", "--lines", "osm", "--osm-file", str(GUIXI), "--buffer-km", "5"],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "data_processed" / "infrastructure.gpkg"
    lines = read_layer(gpkg, "rail_lines")
    assert {"沪昆线", "皖赣线"} <= set(lines["name"]) and not lines["approximate"].any()
    units = read_layer(gpkg, "units")
    assert not units["hsr_crosses"].any()  # the OSM lines here are conventional
    corridors = read_layer(gpkg, "corridors")
    assert corridors.empty


def test_cli_straight_geometry_option(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path, _small_units(), 'geometry = "straight"\n')
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "data_processed" / "infrastructure.gpkg"
    lines = read_layer(gpkg, "rail_lines")
    assert (lines["geometry_source"] == "straight").all()
    raw = gpd.read_file(RAIL / "approx_corridors_keystations.geojson").set_index("line")
    row = lines.set_index("name").loc["京沪高铁"]
    assert shapely.equals_exact(row.geometry, raw.loc["京沪高铁", "geometry"], tolerance=0)
    units = read_layer(gpkg, "units")
    assert units["in_corridor"].equals(units["in_corridor_straight"])
    (tmp_path / "bad").mkdir()
    bad = _workdir(tmp_path / "bad", _small_units(), 'geometry = "curvy"\n')
    res = CliRunner().invoke(main, ["-c", str(bad), "infrastructure"])
    assert res.exit_code == 2 and "threaded" in res.output


def test_cli_osm_without_file_is_config_error(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path, _small_units(), 'lines = "osm"\n')
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure"])
    assert result.exit_code == 2 and "osm_file" in result.output


# -- real data through the pipeline ----------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_units_overlay(run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("infrastructure")
    gpkg = processed / "infrastructure.gpkg"
    units = read_layer(gpkg, "units")
    pop = read_layer(processed / "population.gpkg", "units")
    assert len(units) == len(pop) and set(units["unit_id"]) == set(pop["unit_id"])
    assert units["corridor_share"].between(0, 1).all()
    # attribute table keyed by unit_id: the polygons are in population.gpkg
    assert "geometry" not in units.columns
    units = pop[["unit_id", "geometry"]].merge(units, on="unit_id", validate="1:1")
    # units holding central Beijing (Tiananmen), Shanghai (People's Square) and Guangzhou (Yuexiu): fully
    # inside corridors, a high-speed station within a few km, served since the first lines (2008-2011)
    for lon, lat in ((116.3975, 39.9087), (121.4737, 31.2304), (113.2644, 23.1291)):
        row = units.loc[units.contains(Point(lon, lat))].iloc[0]
        assert row["in_corridor"] and row["corridor_share"] == pytest.approx(1.0)
        assert row["hsr_station_km"] < 25 and row["hsr_first_open_year"] <= 2011
    # remote counties of western Tibet (Gerze, Gar/Shiquanhe, Rutog): no high-speed line within hundreds of km
    for lon, lat in ((84.06, 32.30), (80.10, 32.50), (79.72, 33.38)):
        row = units.loc[units.contains(Point(lon, lat))].iloc[0]
        assert not row["in_corridor"] and row["corridor_share"] == 0 and row["hsr_station_km"] > 400
        assert row["hsr_period"] == "none"
    # summary agrees with the units layer
    summary = read_table(gpkg, "corridor_summary").set_index(["grouping", "group"])
    assert summary.loc[("corridor", "inside"), "n_units"] == int(units["in_corridor"].sum())
    assert summary.loc[("all", "all"), "n_units"] == len(units)
    assert summary.loc[("all", "all"), "pop_2010"] == int(pop["pop_2010"].sum())
    n_in, n_out = (
        summary.loc[("corridor", "inside"), "n_units"],
        summary.loc[("corridor", "outside"), "n_units"],
    )
    assert n_in + n_out == len(units) and n_in > 0 and n_out > 0
    lines = read_layer(gpkg, "rail_lines")
    raw = json.loads((RAIL / "approx_corridors_keystations.geojson").read_text(encoding="utf-8"))
    expected_hs = sum(
        f["geometry"] is not None and f["properties"]["type"] == "高速铁路" for f in raw["features"]
    )
    assert int((lines["class"] == "high-speed").sum()) == expected_hs
    assert re.search("tens of km", read_layer(gpkg, "corridors")["note"].iloc[0])


def test_user_lines_join_catalogue_by_name() -> None:
    user = gpd.GeoDataFrame(
        {"name": ["京沪高速铁路", "my line"], "class": [None, "快速铁路"]},
        geometry=[LineString([(116.4, 39.9), (121.3, 31.2)]), LineString([(0, 0), (1, 1)])],
        crs="EPSG:4326",
    )
    cat = rail.prepare_catalogue(pd.read_csv(RAIL / "railways_lines.csv"))
    out = rail.lines_from_user(user, catalogue=cat).set_index("name")
    assert out.loc["京沪高速铁路", "catalogue_line"] == "京沪高铁"
    assert out.loc["京沪高速铁路", "class"] == "high-speed" and out.loc["京沪高速铁路", "open_year"] == 2011
    assert out.loc["my line", "class"] == "fast" and out.loc["my line", "catalogue_match"] == ""
    with pytest.raises(InputError, match=r"missing column\(s\) \['name'\]"):
        rail.lines_from_user(user.drop(columns=["name"]))
    with pytest.raises(InputError, match="unknown value"):
        rail.lines_from_user(user.assign(**{"class": "maglev"}))


def test_cli_user_layers_and_utilisation_table(tmp_path: Path) -> None:
    units = gpd.GeoDataFrame(
        {
            "unit_id": ["a", "b"],
            "pop_2010": [100, 100],
            "pop_2020": [90, 120],
            "change_pct": [-10.0, 20.0],
            "shrinking": [True, False],
        },
        geometry=[box(100.0, 30.0, 100.2, 30.2), box(101.0, 30.0, 101.2, 30.2)],
        crs="EPSG:4326",
    )
    cfg = _workdir(tmp_path, units)
    lines = gpd.GeoDataFrame(
        {"name": ["Test HSR"], "class": ["high-speed"], "open_year": [2015]},
        geometry=[LineString([(100.1, 29.0), (100.1, 31.0)])],
        crs="EPSG:4326",
    )
    lines.to_file(tmp_path / "lines.geojson", driver="GeoJSON")
    stations = gpd.GeoDataFrame(
        {"name": ["S1"], "high_speed": [True]}, geometry=[Point(100.1, 30.1)], crs="EPSG:4326"
    )
    write_gpkg(tmp_path / "stations.gpkg", {"stations": stations})
    pd.DataFrame({"line": ["Test HSR"], "trains_per_day": [30], "design_capacity": [100]}).to_csv(
        tmp_path / "util.csv", index=False
    )
    cfg.write_text(
        cfg.read_text(encoding="utf-8")
        + f'[infrastructure]\nlines = "{(tmp_path / "lines.geojson").as_posix()}"\n'
        f'stations = "{(tmp_path / "stations.gpkg").as_posix()}"\nadd_key_stations = false\n',
        encoding="utf-8",
    )
    result = CliRunner().invoke(
        main,
        ["-c", str(cfg), "infrastructure", "--utilisation-file", str(tmp_path / "util.csv")],
        catch_exceptions=False,
    )
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "data_processed" / "infrastructure.gpkg"
    out_lines = read_layer(gpkg, "rail_lines")
    assert out_lines["utilisation"].tolist() == pytest.approx([0.3]) and bool(out_lines["underused"].iloc[0])
    out_st = read_layer(gpkg, "rail_stations")
    assert out_st["name"].tolist() == ["S1"] and bool(out_st["high_speed"].iloc[0])
    u = read_layer(gpkg, "units").set_index("unit_id")
    assert u.loc["a", "hsr_crosses"] and u.loc["a", "corridor_share"] == pytest.approx(1.0)
    assert u.loc["a", "hsr_first_open_year"] == 2015 and u.loc["a", "hsr_period"] == "2010-2020"
    assert not u.loc["b", "in_corridor"]  # about 87 km east of the line
    _, _, d = GEOD.inv(101.1, 30.1, 100.1, 30.1)
    assert u.loc["b", "hsr_station_km"] == pytest.approx(d / 1000, abs=0.5)  # representative point ~ centre


def test_config_rejects_bad_sources(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, MIRROR, '[infrastructure]\nlines = "openrailwaymap"\n')
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure"])
    assert result.exit_code == 2 and "expected 'corridors', 'osm' or a path" in result.output


def test_shuffled_index_and_string_ids(layout: tuple[gpd.GeoDataFrame, ...]) -> None:
    units, lines, stations = layout
    base = inf.unit_overlay(units, lines, stations).set_index("unit_id")
    shuffled = units.iloc[[2, 0, 3, 1]].set_index(pd.Index([10, 7, 99, 3]))
    out = inf.unit_overlay(shuffled, lines.iloc[::-1], stations)
    assert list(out.index) == [10, 7, 99, 3]
    got = out.set_index("unit_id").loc[base.index]
    pd.testing.assert_frame_equal(
        pd.DataFrame(got.drop(columns="geometry")), pd.DataFrame(base.drop(columns="geometry"))
    )


def test_cli_network_needs_the_cores(tmp_path: Path) -> None:
    cfg = _workdir(tmp_path, _small_units())
    (tmp_path / "data_processed" / "distance.gpkg").unlink()
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure"])
    assert result.exit_code == 3 and "network = false" in result.output
    cfg.write_text(cfg.read_text(encoding="utf-8") + "[infrastructure]\nnetwork = false\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["-c", str(cfg), "infrastructure"], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    units = read_layer(tmp_path / "data_processed" / "infrastructure.gpkg", "units")
    assert "rail_minutes_to_core" not in units.columns


def _per_piece_overlay_reference(ua: np.ndarray, ba: np.ndarray, byear: np.ndarray, cross_year: np.ndarray,
                                 min_share: float) -> tuple[np.ndarray, np.ndarray]:
    """The overlay's shares and first years as computed before 1 Dec 2026.

    Every piece unit & buffer, then per unit the union of its pieces (and of the pieces of the
    lines opened by each year).
    """
    n = len(ua)
    share, share_year = np.zeros(n), np.full(n, np.inf)
    unit_area = shapely.area(ua)
    bi, bj = shapely.STRtree(ba).query(ua, predicate="intersects")
    order = np.argsort(bi, kind="stable")
    bi, bj = bi[order], bj[order]
    pieces = shapely.intersection(ua[bi], ba[bj])
    starts = np.flatnonzero(np.r_[True, bi[1:] != bi[:-1]])
    for a, b in zip(starts, np.r_[starts[1:], len(bi)], strict=True):
        ii = int(bi[a])
        pcs, yrs = pieces[a:b], byear[bj[a:b]]
        total = float(shapely.area(pcs[0] if len(pcs) == 1 else shapely.union_all(pcs)))
        share[ii] = min(total / unit_area[ii], 1.0)
        if share[ii] < min_share - 1e-12:
            continue
        for y in np.unique(yrs[~np.isnan(yrs)]):
            sel = pcs[yrs <= y]
            part = sel[0] if len(sel) == 1 else shapely.union_all(sel)
            if shapely.area(part) / unit_area[ii] >= min_share - 1e-12:
                share_year[ii] = y
                break
    return share, np.minimum(cross_year, share_year)


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_overlay_equals_per_piece_union_on_real_units(run_stage: Callable[[str], Path]) -> None:
    """The fast overlay against the union of the pieces unit & buffer (the old computation).

    Union of the buffers, then one intersection per unit: the same booleans and years, shares
    within 1e-12, on the real counties and prefectures with the real straight and threaded lines.
    """
    processed = run_stage("infrastructure")
    gpkg = processed / "infrastructure.gpkg"
    threaded = read_layer(gpkg, "rail_lines")
    stations = read_layer(gpkg, "rail_stations")
    with pytest.warns(DataQualityWarning):
        straight = rail.lines_from_corridors(gpd.read_file(RAIL / "approx_corridors_keystations.geojson"))
    assert (threaded["geometry_source"] == "threaded").all()
    checked = 0
    for layer in ("units", "prefectures"):
        units = read_layer(processed / "population.gpkg", layer)
        area = inf.area_geometry(units)
        for lines in (straight, threaded):
            out = inf.unit_overlay(units, lines, stations, units_area=area)
            buffers = inf.corridor_buffers(lines)
            hs = inf._high_speed(lines)
            u, li = shapely.STRtree(hs.geometry.values).query(units.geometry.values, predicate="intersects")
            years = hs["open_year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            cross_year = np.full(len(units), np.inf)
            np.minimum.at(cross_year, u, np.where(np.isnan(years[li]), np.inf, years[li]))
            ba = np.asarray(inf._to_area_crs(buffers.geometry).values, dtype=object)
            byear = buffers["open_year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
            share, first = _per_piece_overlay_reference(np.asarray(area, dtype=object), ba, byear,
                                                        cross_year, 0.5)
            got = out["corridor_share"].to_numpy()
            assert np.abs(got - share).max() <= 1e-12 * share.max()
            assert np.all(np.abs(got - share) <= 1e-12 * share)  # relative, zero where the reference is zero
            crosses = np.zeros(len(units), dtype=bool)
            crosses[u] = True
            assert out["hsr_crosses"].tolist() == crosses.tolist()
            assert out["in_corridor"].tolist() == ((share >= 0.5 - 1e-12) | out["hsr_crosses"]).tolist()
            expected_year = pd.array(np.where(np.isfinite(first), first, np.nan),
                                     dtype="Float64").astype("Int64")
            pd.testing.assert_extension_array_equal(out["hsr_first_open_year"].array, expected_year)
            assert out["hsr_first_open_year"].notna().sum() > 100 and out["in_corridor"].sum() > 100
            # the corridor-only overlay gives exactly the same three columns
            only = inf.unit_overlay(units, lines, stations, units_area=area, corridor_only=True)
            assert list(only.columns) == ["unit_id", "hsr_crosses", "corridor_share", "in_corridor",
                                          "geometry"]
            for col in ("unit_id", "hsr_crosses", "corridor_share", "in_corridor"):
                assert only[col].equals(out[col]), col
            checked += 1
    assert checked == 4


def _stage_outputs(processed: Path, suffix: str) -> dict[str, object]:
    """Every layer (attributes and WKB) and CSV of the infrastructure stage at one level."""
    out: dict[str, object] = {}
    gpkg = processed / f"infrastructure{suffix}.gpkg"
    for layer in list_layers(gpkg):
        frame = pyogrio.read_dataframe(gpkg, layer=layer)
        if isinstance(frame, gpd.GeoDataFrame):
            frame = pd.DataFrame(frame).assign(geometry=shapely.to_wkb(frame.geometry.values))
        out[layer] = frame
    for name in ("corridor_summary", "geometry_check", "time_band_summary", "access_change_summary",
                 "network_check", "underused_lines"):
        out[name + ".csv"] = (processed / f"{name}{suffix}.csv").read_bytes()
    return out


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_rail_prep_reused_at_the_second_level_is_identical(
    run_stage: Callable[[str], Path], real_workdir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The rail preparation reused at the second level gives the outputs made without it.

    The prefecture level run after the county level in one process (like `run`) writes exactly
    what it writes alone (real data).
    """
    from geo_pipeline.cli import _infrastructure as cli_inf

    source = run_stage("distance")
    processed = tmp_path / "data_processed"
    processed.mkdir()
    for name in ("population.gpkg", "distance.gpkg", "distance_prefecture.gpkg", "manifest.json"):
        (processed / name).hardlink_to(source / name)  # outputs are replaced, never edited in place
    (tmp_path / "data_raw").symlink_to(real_workdir / "data_raw", target_is_directory=True)
    cfg = write_config(tmp_path, MIRROR)
    made: list[int] = []
    make = cli_inf._make_rail_prep
    monkeypatch.setattr(cli_inf, "_make_rail_prep", lambda *a, **k: made.append(1) or make(*a, **k))

    def stage(*args: str) -> None:
        result = CliRunner().invoke(main, ["-c", str(cfg), "-q", "infrastructure", "--overwrite", *args],
                                    catch_exceptions=False)
        assert result.exit_code == 0, result.output

    cli_inf._PREP_MEMO.clear()
    stage()  # both levels in one process
    assert len(made) == 1  # made at the county level, reused at the prefecture level
    reused = _stage_outputs(processed, "_prefecture")
    county = _stage_outputs(processed, "")
    cli_inf._PREP_MEMO.clear()
    stage("--level", "prefecture")
    assert len(made) == 2
    alone = _stage_outputs(processed, "_prefecture")
    assert reused.keys() == alone.keys() and len(alone) >= 14
    for name, value in alone.items():
        if isinstance(value, bytes):
            assert reused[name] == value, name
        else:
            pd.testing.assert_frame_equal(reused[name], value, check_exact=True, obj=name)
    # a changed setting makes the preparation again
    stage("--level", "county", "--underused-threshold", "0.5")
    assert len(made) == 3
    assert not county["underused_lines.csv"] == _stage_outputs(processed, "")["underused_lines.csv"]
