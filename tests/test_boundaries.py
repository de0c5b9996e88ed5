"""Tests of the boundaries stage and of the GCJ-02 -> WGS84 conversion.

Independent references: ``prcoords`` (per-point pure-Python GCJ-02, a test
dependency) for the conversion; the cnmaps sqlite index queried directly for
the counts; OpenStreetMap (WGS84) around Guixi for the alignment.
"""

from __future__ import annotations

import logging
import sqlite3
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import prcoords
import pyproj
import pytest
import shapely
from click.testing import CliRunner
from shapely.geometry import MultiPolygon, Polygon, box

from geo_pipeline import CRSError, GeometryError, InputError
from geo_pipeline._gcj02 import (
    gcj02_to_wgs84,
    gcj02_to_wgs84_xy,
    in_gcj02_area,
    unique_points,
    wgs84_to_gcj02,
)
from geo_pipeline._io import list_layers, read_layer
from geo_pipeline.boundaries import (
    _GEOJSON_TYPE,
    BOUNDARY_COLUMNS,
    _arrow_geometries,
    _simdjson_geometries,
    build_boundaries,
    cnmaps_index_path,
    parse_geojson_geometries,
    read_cnmaps,
    repair_polygons,
)
from geo_pipeline.cli import main

GEOD = pyproj.Geod(ellps="WGS84")
RAW_COLUMNS = ["adcode", "province", "city", "district", "level"]


def _metres(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    return np.asarray(GEOD.inv(lon1, lat1, lon2, lat2)[2])


# --------------------------------------------------------------------------- GCJ-02
def _random_china(n: int, seed: int = 20201101) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    return rng.uniform(73.5, 135.0, n), rng.uniform(18.0, 53.5, n)


def test_forward_matches_prcoords() -> None:
    lon, lat = _random_china(2000)
    glon, glat = wgs84_to_gcj02(lon, lat)
    ref = np.array([prcoords.wgs_gcj((la, lo)) for lo, la in zip(lon, lat, strict=True)])  # (lat, lon)
    assert np.abs(glat - ref[:, 0]).max() < 1e-12
    assert np.abs(glon - ref[:, 1]).max() < 1e-12


def test_inverse_matches_prcoords_on_many_points() -> None:
    """Our inverse vs prcoords' iterative inverse, and a round trip through prcoords' forward."""
    glon, glat = _random_china(5000, seed=7)
    wlon, wlat = gcj02_to_wgs84_xy(glon, glat)
    ref = np.array([prcoords.gcj_wgs_bored((la, lo)) for lo, la in zip(glon, glat, strict=True)])
    # prcoords stops at a 1e-5 degree residual, i.e. about 1 cm: that is its accuracy, not ours.
    assert _metres(wlon, wlat, ref[:, 1], ref[:, 0]).max() < 0.05
    back = np.array([prcoords.wgs_gcj((la, lo)) for lo, la in zip(wlon, wlat, strict=True)])
    # Round trip through the independent forward: sub-millimetre (1e-7 deg is ~1 cm).
    assert np.abs(back[:, 1] - glon).max() < 1e-8
    assert np.abs(back[:, 0] - glat).max() < 1e-8
    assert _metres(back[:, 1], back[:, 0], glon, glat).max() < 1e-3


@pytest.mark.parametrize(
    ("name", "lon", "lat"),
    [
        ("Tiananmen, Beijing", 116.391275, 39.906217),
        ("The Bund, Shanghai", 121.490317, 31.236305),
        ("Guixi station (OSM)", 117.2095653, 28.2932173),
        ("Canton Tower, Guangzhou", 113.324520, 23.106414),
    ],
)
def test_known_points_round_trip_and_offset_size(name: str, lon: float, lat: float) -> None:
    """WGS84 reference points, GCJ-02 from prcoords' forward, recovered by our inverse."""
    g = prcoords.wgs_gcj((lat, lon))
    wlon, wlat = gcj02_to_wgs84_xy(np.array([g.lon]), np.array([g.lat]))
    assert _metres(wlon, wlat, np.array([lon]), np.array([lat]))[0] < 0.001, name
    offset = _metres(np.array([lon]), np.array([lat]), np.array([g.lon]), np.array([g.lat]))[0]
    assert 100 < offset < 700, f"{name}: GCJ-02 offset {offset:.0f} m"


def test_offset_magnitude_in_eastern_china() -> None:
    lon, lat = np.meshgrid(np.linspace(110, 122, 40), np.linspace(20, 42, 40))
    glon, glat = wgs84_to_gcj02(lon.ravel(), lat.ravel())
    d = _metres(lon.ravel(), lat.ravel(), glon, glat)
    assert d.min() > 100 and d.max() < 700


def test_points_outside_china_unchanged() -> None:
    lon = np.array([0.0, 139.69, -74.0, 100.0])
    lat = np.array([0.0, 35.69, 40.7, 60.0])  # Null Island, Tokyo, New York, Siberia
    assert not in_gcj02_area(lon, lat).any()
    wlon, wlat = gcj02_to_wgs84_xy(lon, lat)
    np.testing.assert_array_equal(wlon, lon)
    np.testing.assert_array_equal(wlat, lat)


def test_empty_and_nan_coordinates() -> None:
    wlon, wlat = gcj02_to_wgs84_xy(np.array([]), np.array([]))
    assert wlon.shape == (0,) and wlat.shape == (0,)
    wlon, wlat = gcj02_to_wgs84_xy(np.array([np.nan, 116.4]), np.array([np.nan, 39.9]))
    assert np.isnan(wlon[0]) and np.isfinite(wlon[1])


def test_threaded_conversion_is_bit_identical(monkeypatch: pytest.MonkeyPatch) -> None:
    """Chunks converted in two threads give exactly the single-thread result; errors still raise."""
    from geo_pipeline import _gcj02

    glon, glat = _random_china(100_003, seed=11)  # 7 chunks, the last one partial
    monkeypatch.setattr(_gcj02, "_THREADS", 1)
    one = gcj02_to_wgs84_xy(glon, glat)
    monkeypatch.setattr(_gcj02, "_THREADS", 2)
    two = gcj02_to_wgs84_xy(glon, glat)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    with pytest.raises(InputError, match="did not converge"):
        gcj02_to_wgs84_xy(glon, glat, max_iter=1)


def test_geometry_conversion_keeps_rings_closed_and_input() -> None:
    """Equal input vertices give bit-identical output even across chunk borders."""
    lon, lat = _random_china(40_000, seed=3)
    ring = np.column_stack([lon, lat])
    ring = np.vstack([ring, ring[:1]])  # first and last vertex 40,000 apart: different chunks
    line = shapely.LineString(ring)
    poly = box(116.3, 39.8, 116.5, 40.0)
    before = shapely.get_coordinates(poly).copy()
    out = gcj02_to_wgs84(np.array([line, poly], dtype=object))
    c = shapely.get_coordinates(out[0])
    assert np.array_equal(c[0], c[-1])
    assert out[1].is_valid and out[1].geom_type == "Polygon"
    np.testing.assert_array_equal(shapely.get_coordinates(poly), before)  # input untouched
    ref = [prcoords.gcj_wgs_bored((y, x)) for x, y in before]
    got = shapely.get_coordinates(out[1])
    ref_lon, ref_lat = np.array([r.lon for r in ref]), np.array([r.lat for r in ref])
    assert _metres(got[:, 0], got[:, 1], ref_lon, ref_lat).max() < 0.05


# --------------------------------------------------------------------------- synthetic
def _raw() -> gpd.GeoDataFrame:
    """Build a tiny cnmaps-like frame in GCJ-02.

    One province with a prefecture, a county-level city directly under the
    province, and Hong Kong.
    """
    rows = [
        ("360000", "江西省", "", "", "省", box(116.0, 27.0, 118.0, 29.0)),
        ("360600", "江西省", "鹰潭市", "", "市", box(116.5, 28.0, 117.5, 28.6)),
        ("360681", "江西省", "鹰潭市", "贵溪市", "区县", box(117.0, 28.0, 117.5, 28.6)),
        ("360602", "江西省", "鹰潭市", "月湖区", "区县", box(116.5, 28.0, 117.0, 28.6)),
        ("369001", "江西省", "样例市", "", "市", box(116.0, 27.0, 116.5, 27.5)),
        ("369001", "江西省", "样例市", "样例市", "区县", box(116.0, 27.0, 116.5, 27.5)),
        ("810000", "香港特别行政区", "", "", "省", box(113.8, 22.2, 114.4, 22.6)),
        ("810000", "香港特别行政区", "香港特别行政区", "", "市", box(113.8, 22.2, 114.4, 22.6)),
        ("810001", "香港特别行政区", "香港特别行政区", "中西区", "区县", box(114.1, 22.25, 114.2, 22.3)),
    ]
    frame = pd.DataFrame([r[:5] for r in rows], columns=RAW_COLUMNS)
    return gpd.GeoDataFrame(frame, geometry=[r[5] for r in rows], crs=None)


def test_build_synthetic_layers_and_codes() -> None:
    raw = _raw()
    copy = raw.copy()
    layers = build_boundaries(raw, exclude_no_census=True)
    pd.testing.assert_frame_equal(pd.DataFrame(raw), pd.DataFrame(copy))  # input not mutated
    assert list(layers) == ["counties", "prefectures", "provinces"]
    c, p, v = layers["counties"], layers["prefectures"], layers["provinces"]
    for layer in layers.values():
        assert list(layer.columns) == BOUNDARY_COLUMNS
        assert layer.crs.to_epsg() == 4326
        assert (layer.geom_type == "MultiPolygon").all()
    assert c["adcode"].tolist() == ["360602", "360681", "369001"]
    assert p["adcode"].tolist() == ["360600", "369001"]
    assert v["adcode"].tolist() == ["360000", "810000"]  # provinces keep HK, flagged
    assert v["in_census"].tolist() == [True, False]
    gx = c.set_index("adcode")
    assert gx.loc["360681", ["name", "province_code", "prefecture", "prefecture_code", "level"]].tolist() == [
        "贵溪市", "360000", "鹰潭市", "360600", "county",
    ]
    assert gx.loc["369001", "prefecture_code"] == "369001"  # its own prefecture
    assert p.set_index("adcode").loc["360600", "prefecture_code"] == "360600"
    assert v["prefecture_code"].isna().all() and v["prefecture"].isna().all()
    # geometry converted: the SW corner of 贵溪市 moved by prcoords' inverse
    ref = prcoords.gcj_wgs_bored((28.0, 117.0))
    xy = shapely.get_coordinates(gx.loc["360681", "geometry"])
    n = len(xy)
    assert _metres(xy[:, 0], xy[:, 1], np.full(n, ref.lon), np.full(n, ref.lat)).min() < 0.05


def test_keep_no_census_flags_hong_kong() -> None:
    layers = build_boundaries(_raw(), exclude_no_census=False)
    c = layers["counties"].set_index("adcode")
    assert "810001" in c.index and not c.loc["810001", "in_census"]
    assert c.loc["810001", "prefecture_code"] == "810000"
    assert layers["prefectures"].set_index("adcode").loc["810000", "in_census"] == False  # noqa: E712


def test_empty_input_gives_empty_layers() -> None:
    layers = build_boundaries(_raw().iloc[:0])
    for layer in layers.values():
        assert layer.empty and list(layer.columns) == BOUNDARY_COLUMNS and layer.crs.to_epsg() == 4326


def test_missing_column_is_input_error() -> None:
    with pytest.raises(InputError, match=r"missing column\(s\) \['district'\]"):
        build_boundaries(_raw().drop(columns="district"))


def test_crs_set_on_gcj_input_is_crs_error() -> None:
    with pytest.raises(CRSError, match="expected GCJ-02 coordinates with no CRS set"):
        build_boundaries(_raw().set_crs("EPSG:4326"))
    with pytest.raises(CRSError, match="with convert_gcj02=False expected EPSG:4326, found no CRS"):
        build_boundaries(_raw(), convert_gcj02=False)


def test_wgs84_input_without_conversion_is_unchanged() -> None:
    raw = _raw().set_crs("EPSG:4326")
    layers = build_boundaries(raw, convert_gcj02=False)
    got = layers["counties"].set_index("adcode").loc["360681", "geometry"]
    assert got.equals(MultiPolygon([box(117.0, 28.0, 117.5, 28.6)]))


def test_bad_geometry_and_codes_are_reported() -> None:
    raw = _raw()
    raw.loc[0, "adcode"] = "36"
    raw.loc[1, "level"] = "乡镇"
    with pytest.raises(InputError) as err:
        build_boundaries(raw)
    assert "6-digit codes, found ['36']" in str(err.value) and "found ['乡镇']" in str(err.value)
    raw = _raw()
    raw.loc[2, "geometry"] = shapely.LineString([(0, 0), (1, 1)])
    with pytest.raises(GeometryError, match="found \\['LineString'\\]"):
        build_boundaries(raw)


def test_county_without_prefecture_polygon_is_input_error() -> None:
    raw = _raw()
    raw = raw[raw["adcode"] != "360600"]
    with pytest.raises(InputError, match=r"2 unit\(s\) whose prefecture .* e.g. \['360681', '360602'\]"):
        build_boundaries(raw)


def test_invalid_geometry_is_repaired_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    raw = _raw()
    bowtie = Polygon([(117.0, 28.0), (117.5, 28.6), (117.5, 28.0), (117.0, 28.6)])
    raw.loc[2, "geometry"] = bowtie
    with caplog.at_level(logging.INFO, logger="geo_pipeline.boundaries"):
        layers = build_boundaries(raw)
    g = layers["counties"].set_index("adcode").loc["360681", "geometry"]
    assert g.is_valid and g.geom_type == "MultiPolygon" and len(g.geoms) == 2
    assert "repaired 1 invalid polygon(s)" in caplog.text
    fixed, n = repair_polygons(np.array([bowtie, box(0, 0, 1, 1)], dtype=object))
    assert n == 1 and all(f.is_valid and f.geom_type == "MultiPolygon" for f in fixed)
    assert fixed[0].area == pytest.approx(2 * 0.5 * 0.5 * 0.3)  # two triangles


def test_repair_that_stays_invalid_is_an_error(monkeypatch: pytest.MonkeyPatch) -> None:
    """repair_polygons returns valid polygons only (the stage does not check its layers' validity again)."""
    bowtie = Polygon([(117.0, 28.0), (117.5, 28.6), (117.5, 28.0), (117.0, 28.6)])
    overlapping = shapely.GeometryCollection([box(0, 0, 2, 2), box(1, 1, 3, 3)])  # parts overlap
    monkeypatch.setattr(shapely, "make_valid", lambda g: np.array([overlapping] * len(g), dtype=object))
    msg = r"1 polygon\(s\) still invalid after shapely.make_valid \(first, item 1:"
    with pytest.raises(GeometryError, match=msg):
        repair_polygons(np.array([box(0, 0, 1, 1), bowtie], dtype=object))


def test_check_frame_known_valid_skips_validity_only() -> None:
    from geo_pipeline._validate import check_frame

    bowtie = Polygon([(0, 0), (1, 1), (1, 0), (0, 1)])
    frame = gpd.GeoDataFrame({"a": [1, 2]}, geometry=[bowtie, None], crs="EPSG:4326")
    found = check_frame(frame, name="t", geometry=True, geom_types=("MultiPolygon",)).items
    assert [m for _, m in found] == [
        "1 missing and 0 empty geometries; drop or repair them",
        "1 invalid geometries (rows [0]; first: Self-intersection[0.5 0.5]); repair with shapely.make_valid",
        "expected geometry types ['MultiPolygon'], found ['Polygon']",
    ]
    found = check_frame(frame, name="t", geometry=True, geom_types=("MultiPolygon",), known_valid=True).items
    assert [m for _, m in found] == [
        "1 missing and 0 empty geometries; drop or repair them",
        "expected geometry types ['MultiPolygon'], found ['Polygon']",
    ]


# --------------------------------------------------------------------------- real data
def _index_counts() -> dict[str, int]:
    """Count rows straight from the cnmaps sqlite index (independent of our reader)."""
    with sqlite3.connect(cnmaps_index_path()) as con:
        rows = con.execute(
            "SELECT level, count(*) FROM ADMINISTRATIVE WHERE source='高德' AND kind='陆地' GROUP BY level"
        ).fetchall()
        no_census = con.execute(
            "SELECT level, count(*) FROM ADMINISTRATIVE WHERE source='高德' AND kind='陆地' AND province IN "
            "('台湾省', '香港特别行政区', '澳门特别行政区') GROUP BY level"
        ).fetchall()
    con.close()
    return {**{k: v for k, v in rows}, **{f"no_census_{k}": v for k, v in no_census}}


@pytest.fixture(scope="module")
def raw_cnmaps() -> gpd.GeoDataFrame:
    return read_cnmaps()


@pytest.fixture(scope="module")
def all_layers(raw_cnmaps: gpd.GeoDataFrame) -> dict[str, gpd.GeoDataFrame]:
    return build_boundaries(raw_cnmaps, exclude_no_census=False)


def _cnmaps_texts() -> tuple[list[str], list[bytes]]:
    root = cnmaps_index_path().parent.parent / "datasets"
    with sqlite3.connect(cnmaps_index_path()) as con:
        paths = [r[0] for r in con.execute(
            "SELECT DISTINCT path FROM ADMINISTRATIVE WHERE source = '高德' AND kind = '陆地' "
            "AND level IN ('省', '市', '区县') ORDER BY path")]
    return paths, [(root / p).read_bytes() for p in paths]


def _kinds(texts: list[bytes]) -> list[bytes | None]:
    return [m.group(1) if (m := _GEOJSON_TYPE.match(t)) else None for t in texts]


def _pyarrow_then_shapely(texts: list[str | bytes]) -> np.ndarray:
    """parse_geojson_geometries as it was before the simdjson reader (main bd0ff97)."""
    raw = [t.encode() if isinstance(t, str) else t for t in texts]
    kinds = _kinds(raw)
    out = np.empty(len(raw), dtype=object)
    todo = [i for i, k in enumerate(kinds) if k is not None]
    done, geoms = _arrow_geometries([raw[i] for i in todo], [kinds[i] for i in todo])
    out[[todo[j] for j in done]] = geoms
    rest = [i for i in range(len(raw)) if out[i] is None]
    if rest:
        out[rest] = shapely.from_geojson([raw[i] for i in rest])
    return out


def test_real_geojson_parsed_as_shapely_does(raw_cnmaps: gpd.GeoDataFrame) -> None:
    """Every cnmaps file: simdjson reader == pyarrow reader == shapely.from_geojson (WKB)."""
    paths, texts = _cnmaps_texts()
    assert len(texts) == 3240
    kinds = _kinds(texts)
    expected = shapely.to_wkb(shapely.from_geojson(texts))
    done, fast = _simdjson_geometries(texts, kinds)
    assert sorted(done) == list(range(len(texts)))  # every file is in the plain form
    fast_wkb = np.empty(len(texts), dtype=object)
    fast_wkb[done] = shapely.to_wkb(fast)
    done_arrow, arrow = _arrow_geometries(texts, kinds)
    arrow_wkb = np.empty(len(texts), dtype=object)
    arrow_wkb[done_arrow] = shapely.to_wkb(arrow)
    assert sorted(done_arrow) == list(range(len(texts)))
    assert all(a == b for a, b in zip(expected, fast_wkb, strict=True))
    assert all(a == b for a, b in zip(expected, arrow_wkb, strict=True))
    got = shapely.to_wkb(parse_geojson_geometries(texts))
    assert all(a == b for a, b in zip(expected, got, strict=True))
    # and read_cnmaps hands them out unchanged, one per index row
    first = raw_cnmaps.drop_duplicates("adcode").iloc[:50]
    for adcode, geom in zip(first["adcode"], first.geometry, strict=True):
        i = next(k for k, p in enumerate(paths) if p.endswith(f"{adcode}.geojson"))
        assert shapely.to_wkb(geom) == expected[i]


_RING = "[[0.0, 0.0], [4.0, 0.0], [4.0, 4.0], [0.0, 0.0]]"
_HOLE = "[[1.0, 1.0], [2.0, 1.0], [2.0, 2.0], [1.0, 1.0]]"
#: (text, read by simdjson?) Every number that simdjson reads has a decimal point.
_EDGE_CASES = [
    (f'{{"type": "Polygon", "coordinates": [{_RING}, {_HOLE}]}}', True),  # with a hole
    ('{"type":"MultiPolygon","coordinates":[[[[1.0e-3,-2.5E1],[0.1,-25.0],[0.2,-24.999999999999996],'
     '[1.0e-3,-2.5E1]]],[[[100.123456789012345,30.0],[101.0,30.0],\n[101.0,31.0],\t'
     '[100.123456789012345,30.0]]]]}', True),  # exponents, 17+ digits, no spaces, newline, tab
    ('{"type": "Polygon", "coordinates": [[[-0.0, 0.0], [1.0, -0.0], [1.0, 1.0], [-0.0, 0.0]]]}',
     True),  # negative zero keeps its sign
    ('  {\n "type" : "Polygon" ,\r\n "coordinates" :\n[ [ [ 0.5 , 0.5 ] , [ 1.5 , 0.5 ] , '
     '[ 1.5 , 1.5 ] , [ 0.5 , 0.5 ] ] ]\n}\n', True),  # whitespace everywhere
    ('{"type": "Polygon", "coordinates": [[[0.1, 9007199254740993.0], [2.4703282292062328e-324, 0.0], '
     '[1.7976931348623157e308, 3.14159265358979323846264338327950288], [0.1, 9007199254740993.0]]]}',
     True),  # ties to even, subnormal halfway, largest double, a long mantissa
    (f'{{"type": "Polygon", "coordinates": [{_RING}], "properties": {{"adcode": "100000"}}}}', True),
    (f'{{"type": "Polygon", "coordinates": [{_RING}], "bbox": [0.0, 0.0, 4.0, 4.0]}}', True),
    ('{"type": "Polygon", "coordinates": [[[1.0e-400, 0.5], [1.0, 0.5], [1.0, 1.0], [1.0e-400, 0.5]]]}',
     True),  # underflows to 0
    ('{"type": "Polygon", "coordinates": [[[-0, 0], [1, 0], [1, 1], [-0, 0]]]}', False),  # integers
    ('{"type": "Polygon", "coordinates": [[[1e-5, 0.5], [1.0, 0.5], [1.0, 1.0], [1e-5, 0.5]]]}', False),
    ('{"type": "Polygon", "coordinates": [[[0.0, 0.0, 5.0], [1.0, 0.0, 5.0], [1.0, 1.0, 5.0], '
     '[0.0, 0.0, 5.0]]]}', False),  # 3-D
    (f'{{"coordinates": [{_RING}], "type": "Polygon"}}', False),  # type not first
    (f'{{"type": "Polygon", "coordinates": [{_RING}], "coordinates": [{_HOLE}]}}', False),  # twice
    (f'{{"type": "Polygon", "type": "Polygon", "coordinates": [{_RING}]}}', False),
    ('{"type": "Polygon", "coordinates": [[]]}', False),  # an empty ring
    ('{"type": "MultiPolygon", "coordinates": []}', False),
    ('{"type": "Point", "coordinates": [116.4, 39.9]}', False),
    (f'{{"type": "GeometryCollection", "geometries": [{{"type": "Polygon", "coordinates": [{_RING}]}}]}}',
     False),
]
_INTEGERS = next(i for i, (t, _) in enumerate(_EDGE_CASES) if "[-0, 0]" in t)


def test_geojson_parser_edge_cases_match_pyarrow_and_shapely() -> None:
    texts = [t for t, _ in _EDGE_CASES]
    raw = [t.encode() for t in texts]
    done, fast = _simdjson_geometries(raw, _kinds(raw))
    assert sorted(done) == [i for i, (_, plain) in enumerate(_EDGE_CASES) if plain]
    got = parse_geojson_geometries(texts)
    before = _pyarrow_then_shapely(texts)
    assert list(shapely.to_wkb(got)) == list(shapely.to_wkb(before))
    assert list(shapely.to_wkb(got[done])) == list(shapely.to_wkb(fast))
    # the 3-D text sends the other non-plain Polygons to GEOS too, so shapely agrees on all
    assert list(shapely.to_wkb(got)) == list(shapely.to_wkb(shapely.from_geojson(texts)))
    assert np.signbit(shapely.get_coordinates(got[2])).sum() == 3  # -0.0 three times
    assert [g.geom_type for g in got[-2:]] == ["Point", "GeometryCollection"]
    # each text alone, as before too (alone, the pyarrow reader reads the integer -0 as -0.0, GEOS as +0)
    for t in texts:
        alone = parse_geojson_geometries([t])[0]
        assert shapely.to_wkb(alone) == shapely.to_wkb(_pyarrow_then_shapely([t])[0])
    assert np.signbit(shapely.get_coordinates(parse_geojson_geometries([texts[_INTEGERS]])[0])).sum() == 2
    assert len(parse_geojson_geometries([])) == 0


def test_simdjson_numbers_are_correctly_rounded() -> None:
    """Random and hard decimal strings: simdjson == Python's float (correctly rounded) == pyarrow."""
    rng = np.random.default_rng(16)
    tokens = [
        "2.2250738585072011e-308", "2.2250738585072012e-308", "4.9406564584124654e-324",
        "1.00000000000000011102230246251565404236316680908203125",  # halfway: ties to even
        "1.00000000000000011102230246251565404236316680908203124",
        "1.00000000000000011102230246251565404236316680908203126",
        "7.2057594037927933e16", "9007199254740993.0", "0.30000000000000004", "123456789012345678.9",
    ]
    for _ in range(20_000):
        digits = "".join(rng.choice(list("0123456789"), size=int(rng.integers(1, 26))))
        digits = digits.lstrip("0") or "0"
        cut = int(rng.integers(1, len(digits) + 1))
        number = f"{digits[:cut]}.{digits[cut:] or '0'}"
        if rng.random() < 0.5:
            number += f"e{int(rng.integers(-320, 280))}"
        tokens.append(("-" if rng.random() < 0.3 else "") + number)
    tokens += tokens[:2]  # close the ring
    points = ", ".join(f"[{x}, {y}]" for x, y in zip(tokens[0::2], tokens[1::2], strict=True))
    text = f'{{"type": "Polygon", "coordinates": [[{points}]]}}'.encode()
    done, fast = _simdjson_geometries([text], [b"Polygon"])
    assert done == [0]
    expected = np.array([float(t) for t in tokens]).view(np.int64)
    assert np.array_equal(shapely.get_coordinates(fast[0]).ravel().view(np.int64), expected)
    _, arrow = _arrow_geometries([text], [b"Polygon"])
    assert np.array_equal(shapely.get_coordinates(arrow[0]).ravel().view(np.int64), expected)


def test_unclosed_ring_is_left_to_the_pyarrow_reader() -> None:
    """Alone, the pyarrow reader closes it; GEOS refuses it, and so does a group that goes to GEOS."""
    unclosed = '{"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0], [1.0, 1.0], [0.5, 0.0]]]}'
    ring = f'{{"type": "Polygon", "coordinates": [{_RING}]}}'
    assert _simdjson_geometries([unclosed.encode(), ring.encode()], [b"Polygon"] * 2)[0] == [1]
    got = parse_geojson_geometries([unclosed, ring])
    assert list(shapely.to_wkb(got)) == list(shapely.to_wkb(_pyarrow_then_shapely([unclosed, ring])))
    assert shapely.get_coordinates(got[0]).tolist() == [[0, 0], [1, 0], [1, 1], [0.5, 0], [0, 0]]
    with pytest.raises(shapely.errors.GEOSException, match="closed"):
        shapely.from_geojson(unclosed)
    three_d = '{"type": "Polygon", "coordinates": [[[0, 0, 1], [1, 0, 1], [1, 1, 1], [0, 0, 1]]]}'
    for parse in (_pyarrow_then_shapely, parse_geojson_geometries):
        with pytest.raises(shapely.errors.GEOSException, match="closed"):
            parse([unclosed, ring, three_d])


@pytest.mark.parametrize("text", [
    '{"type": "Polygon", "coordinates": [[[0, 0], [1, 0]',  # truncated
    '{"type": "Polygon", "coordinates": [[[01.5, 0.0], [1.0, 0.0], [1.0, 1.0], [01.5, 0.0]]]}',
    '{"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0]5.0, [1.0, 1.0], [0.0, 0.0]]]}',
    '{"type": "Polygon", "coordinates": [[[.5, 0.0], [1.0, 0.0], [1.0, 1.0], [.5, 0.0]]]}',
    f'{{"type": "MultiPolygon", "coordinates": [{_RING}]}}',  # depth of a Polygon
    f'{{"type": "Polygon", "coordinates": [{_RING}], "properties": {{"name": "\\ud800"}}}}',
    # 8 numbers in 4 points, but not 2 each
    '{"type": "Polygon", "coordinates": [[[0.0, 0.0], [1.0, 0.0, 2.0], [1.0], [0.0, 0.0]]]}',
    '{"type": "Polygon", "coordinates": [[[1.0e400, 0.0], [1.0, 0.0], [1.0, 1.0], [1.0e400, 0.0]]]}',
])
def test_geojson_parser_rejects_what_it_rejected(text: str) -> None:
    assert _simdjson_geometries([text.encode()], _kinds([text.encode()]))[0] == []
    with pytest.raises(shapely.errors.GEOSException):
        _pyarrow_then_shapely([text])
    with pytest.raises(shapely.errors.GEOSException):
        parse_geojson_geometries([text])


def test_real_counts_before_exclusion(all_layers: dict[str, gpd.GeoDataFrame]) -> None:
    idx = _index_counts()
    assert (idx["区县"], idx["市"], idx["省"]) == (2875, 370, 34)  # PROVENANCE.md
    assert len(all_layers["counties"]) == 2875
    assert len(all_layers["prefectures"]) == 370
    assert len(all_layers["provinces"]) == 34
    assert int((~all_layers["counties"]["in_census"]).sum()) == idx["no_census_区县"] == 27


def test_real_layers_after_exclusion(run_stage: Callable[[str], Path]) -> None:
    """The stage run through the CLI on real data (default: exclude_no_census = true)."""
    gpkg = run_stage("boundaries") / "boundaries.gpkg"
    assert list_layers(gpkg) == ["counties", "prefectures", "provinces"]
    layers = {name: read_layer(gpkg, name) for name in ("counties", "prefectures", "provinces")}
    idx = _index_counts()
    c, p, v = layers["counties"], layers["prefectures"], layers["provinces"]
    assert len(c) == 2875 - idx["no_census_区县"] == 2848
    assert len(p) == 370 - idx["no_census_市"] == 367
    assert len(v) == 34 and sorted(v.loc[~v["in_census"], "adcode"]) == ["710000", "810000", "820000"]
    assert c["in_census"].all() and p["in_census"].all()
    for name, layer in layers.items():
        assert list(layer.columns) == BOUNDARY_COLUMNS, name
        assert layer.crs.to_epsg() == 4326, name
        assert layer["adcode"].is_unique, name
        assert layer["adcode"].str.fullmatch(r"\d{6}").all(), name
        assert shapely.is_valid(layer.geometry.values).all(), name
        assert (layer.geom_type == "MultiPolygon").all(), name
    assert set(c["province_code"]) <= set(v["adcode"])
    assert set(c["prefecture_code"]) <= set(p["adcode"])
    assert set(p["province_code"]) <= set(v["adcode"])
    assert (c["adcode"].str[:2] == c["province_code"].str[:2]).all()
    ci = c.set_index("adcode")
    xiantao = ci.loc["429004", ["name", "prefecture_code", "province_code"]].tolist()
    assert xiantao == ["仙桃市", "429004", "420000"]
    assert ci.loc["419001", "prefecture_code"] == "419001"
    assert ci.loc["469001", "prefecture_code"] == "469001"
    assert ci.loc["500101", "prefecture_code"] == "500000"  # Chongqing
    guixi = ci.loc["360681", ["name", "prefecture", "prefecture_code"]].tolist()
    assert guixi == ["贵溪市", "鹰潭市", "360600"]
    # direct-administered units are both county and prefecture
    both = set(c["adcode"]) & set(p["adcode"])
    assert {"429004", "441900", "442000", "460400", "620200", "659001"} <= both


def test_hong_kong_shares_border_with_shenzhen_in_raw_data(raw_cnmaps: gpd.GeoDataFrame) -> None:
    """Evidence that Amap's Hong Kong is GCJ-02 like Shenzhen (see _gcj02 docstring)."""
    g = raw_cnmaps.drop_duplicates("adcode").set_index("adcode").geometry
    hk = {tuple(xy) for xy in shapely.get_coordinates(g["810000"]).round(6)}
    sz = {tuple(xy) for xy in shapely.get_coordinates(g["440300"]).round(6)}
    assert len(hk & sz) > 100


def _guixi_osm(path: Path) -> tuple[list[shapely.LineString], shapely.Point]:
    root = ET.parse(path).getroot()
    nodes = {n.get("id"): (float(n.get("lon", "nan")), float(n.get("lat", "nan"))) for n in root.iter("node")}
    lines, station = [], None
    for way in root.iter("way"):
        tags = {t.get("k"): t.get("v") for t in way.iter("tag")}
        if tags.get("boundary") == "administrative" and tags.get("admin_level") in ("5", "6"):
            lines.append(shapely.LineString([nodes[nd.get("ref")] for nd in way.iter("nd")]))
    for node in root.iter("node"):
        tags = {t.get("k"): t.get("v") for t in node.iter("tag")}
        if tags.get("railway") == "station" and tags.get("name") == "贵溪":
            station = shapely.Point(nodes[node.get("id")])
    assert station is not None and lines
    return lines, station


def test_guixi_osm_lines_up_after_conversion(mirror: Path) -> None:
    """OSM (WGS84) county border of 贵溪市 vs the cnmaps polygon, with and without conversion.

    The OSM extract holds two ways of the 贵溪市/弋阳县 border (admin_level 5/6).
    Without conversion the Amap border lies ~600 m off; converted, the median
    gap is what remains between two independent surveys (tens of metres).
    """
    lines, station = _guixi_osm(mirror / "osm" / "guixi_jiangxi.osm")
    raw = read_cnmaps(adcodes=["360681"]).geometry.iloc[0]
    conv = gcj02_to_wgs84(np.array([raw], dtype=object))[0]
    utm = "EPSG:32650"
    pts = shapely.points(shapely.get_coordinates(gpd.GeoSeries(lines, crs=4326).to_crs(utm).values))
    border = {
        k: gpd.GeoSeries([g.boundary], crs=4326).to_crs(utm).iloc[0] for k, g in (("raw", raw), ("wgs", conv))
    }
    d_raw = np.median(shapely.distance(pts, border["raw"]))
    d_wgs = np.median(shapely.distance(pts, border["wgs"]))
    assert len(pts) > 100
    assert d_raw > 250, d_raw
    assert d_wgs < 100, d_wgs
    assert d_wgs < d_raw / 3
    assert conv.contains(station)
    shift = _metres(*shapely.get_coordinates(raw).T, *shapely.get_coordinates(conv).T)
    assert 550 < shift.min() and shift.max() < 700  # GCJ-02 offset at Guixi


# --------------------------------------------------------------------------- CLI
@pytest.fixture()
def small_cnmaps(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the CLI read only Jiangxi's 鹰潭市 and Hong Kong (fast)."""
    codes = ["360000", "360600", "360602", "360603", "360681", "810000", "810001", "810002"]
    import geo_pipeline.cli._boundaries as wrapper

    monkeypatch.setattr(wrapper, "read_cnmaps", lambda: read_cnmaps(adcodes=codes))


def _config(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "geo_pipeline.toml"
    cfg.write_text(
        f'[paths]\ndata_raw = "{(tmp_path / "raw").as_posix()}"\n'
        f'data_processed = "{(tmp_path / "out").as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return cfg


def test_cli_overwrite_rules(tmp_path: Path, small_cnmaps: None) -> None:
    cfg = _config(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(cfg), "boundaries"])
    assert result.exit_code == 0, result.output
    gpkg = tmp_path / "out" / "boundaries.gpkg"
    counties = read_layer(gpkg, "counties")
    assert sorted(counties["adcode"]) == ["360602", "360603", "360681"]
    assert len(read_layer(gpkg, "provinces")) == 2
    stamp = gpkg.stat().st_mtime_ns
    result = runner.invoke(main, ["-c", str(cfg), "boundaries", "--keep-no-census"])
    assert result.exit_code == 4
    assert "exists; pass --overwrite" in result.output
    assert gpkg.stat().st_mtime_ns == stamp
    result = runner.invoke(main, ["-c", str(cfg), "boundaries", "--keep-no-census", "--overwrite"])
    assert result.exit_code == 0, result.output
    codes = sorted(read_layer(gpkg, "counties")["adcode"])
    assert codes == ["360602", "360603", "360681", "810001", "810002"]
    manifest = (tmp_path / "out" / "manifest.json").read_text(encoding="utf-8")
    assert '"exclude_no_census": false' in manifest and '"counties": 5' in manifest


def test_cli_config_key_keeps_no_census(tmp_path: Path, small_cnmaps: None) -> None:
    cfg = _config(tmp_path, "[boundaries]\nexclude_no_census = false\n")
    result = CliRunner().invoke(main, ["-c", str(cfg), "boundaries"])
    assert result.exit_code == 0, result.output
    counties = read_layer(tmp_path / "out" / "boundaries.gpkg", "counties")
    assert (~counties["in_census"]).sum() == 2


def _masked_inverse(glon: np.ndarray, glat: np.ndarray, tol_deg: float = 1e-7) -> tuple[np.ndarray, ...]:
    """The inverse as first written: every point of the array takes every step, inactive ones masked."""
    from geo_pipeline._gcj02 import _offset_deg

    wx, wy = glon.copy(), glat.copy()
    active = np.ones(glon.shape, dtype=bool)
    for _ in range(20):
        dx, dy = _offset_deg(wx, wy)
        rx, ry = wx + dx - glon, wy + dy - glat
        wx -= np.where(active, rx, 0.0)
        wy -= np.where(active, ry, 0.0)
        active &= (np.abs(rx) >= tol_deg) | (np.abs(ry) >= tol_deg)
        if not active.any():
            break
    return wx, wy


def test_inverse_on_active_points_only_is_bit_identical(raw_cnmaps: gpd.GeoDataFrame) -> None:
    """Computing only the points still active gives the masked whole-array result, on every cnmaps vertex."""
    xy = shapely.get_coordinates(raw_cnmaps.geometry.values[~raw_cnmaps["adcode"].duplicated().to_numpy()])
    assert len(xy) > 6_000_000
    glon, glat = np.ascontiguousarray(xy[:, 0]), np.ascontiguousarray(xy[:, 1])
    got = gcj02_to_wgs84_xy(glon, glat)
    ref = _masked_inverse(glon, glat)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])
    lon, lat = _random_china(50_001, seed=5)  # and on random points, with a NaN
    lon[7] = np.nan
    got, ref = gcj02_to_wgs84_xy(lon, lat), _masked_inverse(lon, lat)
    np.testing.assert_array_equal(got[0], ref[0])
    np.testing.assert_array_equal(got[1], ref[1])


def test_conversion_of_distinct_vertices_is_bit_identical(raw_cnmaps: gpd.GeoDataFrame) -> None:
    """gcj02_to_wgs84 converts each distinct vertex once: the same WKB as converting every vertex."""
    first = ~raw_cnmaps["adcode"].duplicated().to_numpy()
    geoms = np.asarray(raw_cnmaps.geometry.values[first], dtype=object)
    xy = shapely.get_coordinates(geoms)
    uniq, inverse = unique_points(xy)
    assert (len(xy), len(uniq)) == (6_823_176, 2_161_646)  # 32 % of the vertices are distinct
    np.testing.assert_array_equal(uniq[inverse].view(np.uint64), xy.view(np.uint64))

    def every_vertex(c: np.ndarray) -> np.ndarray:
        return np.column_stack(gcj02_to_wgs84_xy(c[:, 0], c[:, 1]))

    got = shapely.to_wkb(gcj02_to_wgs84(geoms))
    ref = shapely.to_wkb(shapely.transform(geoms, every_vertex))
    assert bool(np.all(got == ref))


def test_unique_points_compare_bits() -> None:
    nan2 = np.frombuffer(np.uint64(0x7FF8000000000001).tobytes(), dtype=np.float64)[0]  # another NaN payload
    xy = np.array([[1.0, 2.0], [0.0, 0.0], [-0.0, 0.0], [np.nan, 1.0], [1.0, 2.0], [nan2, 1.0],
                   [np.nan, 1.0], [0.0, 0.0]])
    uniq, inverse = unique_points(xy)
    np.testing.assert_array_equal(uniq[inverse].view(np.uint64), xy.view(np.uint64))
    assert len(uniq) == 5 and inverse.tolist() == [0, 1, 2, 3, 0, 4, 3, 1]
    uniq, inverse = unique_points(xy[::2])  # strided input
    np.testing.assert_array_equal(uniq[inverse].view(np.uint64), xy[::2].view(np.uint64))
    uniq, inverse = unique_points(np.empty((0, 2)))
    assert uniq.shape == (0, 2) and len(inverse) == 0
    with pytest.raises(ValueError, match="expected an"):
        unique_points(np.zeros((3, 3)))
