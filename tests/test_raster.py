"""Tests of the raster stage: zonal population sums, means and weighted centroids."""

from __future__ import annotations

import warnings
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import pytest
import rasterio
import shapely
from click.testing import CliRunner
from conftest import write_config
from rasterio.transform import from_origin
from shapely.geometry import MultiPolygon, Polygon, box

from geo_pipeline import CRSError, DataQualityWarning, GeometryError, InputError, MissingInputError
from geo_pipeline._io import read_layer, write_gpkg
from geo_pipeline.cli import main
from geo_pipeline.raster import RASTER_COLUMNS, zonal_population

# rasterio 1.4 still multiplies Affine objects with `*` internally (from_origin, windows)
pytestmark = pytest.mark.filterwarnings(
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)

UTM = "EPSG:32650"
X0, Y0, CELL = 500_000.0, 4_000_000.0, 100.0


def write_tif(
    path: Path,
    arr: np.ndarray,
    *,
    transform: object = None,
    crs: str | None = UTM,
    nodata: float | None = None,
) -> Path:
    """Write a one-band GeoTIFF (tiled, compressed like real population rasters)."""
    h, w = arr.shape
    profile = {
        "driver": "GTiff",
        "height": h,
        "width": w,
        "count": 1,
        "dtype": arr.dtype.name,
        "transform": transform if transform is not None else from_origin(X0, Y0, CELL, CELL),
        "nodata": nodata,
        "compress": "deflate",
    }
    if crs is not None:
        profile["crs"] = crs
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
        with rasterio.open(path, "w", **profile) as dst:
            dst.write(arr, 1)
    return path


def centres(shape: tuple[int, int], transform: object) -> tuple[np.ndarray, np.ndarray]:
    """Cell-centre coordinates (x, y) of a grid, computed independently of the stage."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]]
    xs, ys = rasterio.transform.xy(transform, rows.ravel(), cols.ravel(), offset="center")
    return np.asarray(xs).reshape(shape), np.asarray(ys).reshape(shape)


def units_utm() -> gpd.GeoDataFrame:
    """Non-overlapping units in UTM 50N over a 60 x 80 cell raster.

    Boxes, a triangle, a polygon with a hole, a multipolygon and a tiny square
    inside one cell.
    """

    def b(c0: float, r0: float, c1: float, r1: float) -> Polygon:
        return box(X0 + c0 * CELL, Y0 - r1 * CELL, X0 + c1 * CELL, Y0 - r0 * CELL)

    outer = b(30.3, 2.7, 52.6, 20.2)
    hole = b(36.1, 7.4, 44.8, 14.9)
    geoms = [
        b(0.3, 0.2, 10.4, 10.4),
        b(10.7, 0.2, 25.35, 12.8),
        Polygon(
            [
                (X0 + 2 * CELL, Y0 - 30 * CELL),
                (X0 + 28 * CELL, Y0 - 22 * CELL),
                (X0 + 20 * CELL, Y0 - 55 * CELL),
            ]
        ),
        Polygon(outer.exterior.coords, [hole.exterior.coords]),
        MultiPolygon([b(62.2, 3.3, 70.9, 9.6), b(64.1, 30.6, 79.2, 58.7)]),
        b(40.6, 40.1, 40.9, 40.4),  # 0.3 x 0.3 of one cell: contains no cell centre
    ]
    return gpd.GeoDataFrame({"unit_id": [f"u{i}" for i in range(len(geoms))]}, geometry=geoms, crs=UTM)


@pytest.fixture
def random_counts() -> np.ndarray:
    rng = np.random.default_rng(42)
    return rng.integers(0, 500, size=(60, 80)).astype("float32")


# -- cell-centre method ------------------------------------------------------


def test_constant_raster_sum_is_cells_whose_centre_is_inside(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "ones.tif", np.ones((60, 80), "float32"))
    units = units_utm()
    out = zonal_population(units.iloc[:5], tif, method="centre")
    xs, ys = centres((60, 80), from_origin(X0, Y0, CELL, CELL))
    expected = [int(shapely.contains_xy(g, xs, ys).sum()) for g in units.geometry.iloc[:5]]
    assert out["pop_raster_sum"].tolist() == expected
    assert out["n_cells"].tolist() == expected
    assert expected == [100, 182, 397, 319, 9 * 7 + 15 * 28]  # hand counts of the boxes
    assert (out["pop_raster_mean"] == 1.0).all()
    assert expected[0] == 10 * 10  # the first box spans centres 0.5 .. 9.5 in both directions


def test_centre_sums_match_rasterstats(tmp_path: Path, random_counts: np.ndarray) -> None:
    rasterstats = pytest.importorskip("rasterstats")
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    units = units_utm().iloc[:5]
    out = zonal_population(units, tif, method="centre")
    ref = rasterstats.zonal_stats(list(units.geometry), str(tif), stats=["sum", "count", "mean"], nodata=-1)
    assert out["pop_raster_sum"].tolist() == [r["sum"] for r in ref]
    assert out["n_cells"].tolist() == [r["count"] for r in ref]
    np.testing.assert_allclose(out["pop_raster_mean"], [r["mean"] for r in ref], rtol=1e-12)
    assert (out["zonal_method"] == "centre").all()


def test_checkerboard_and_nodata(tmp_path: Path) -> None:
    arr = (np.indices((60, 80)).sum(axis=0) % 2).astype("int16") * 3  # 0/3 checkerboard
    arr[0:5, 0:5] = -1  # nodata block inside unit u0
    tif = write_tif(tmp_path / "cb.tif", arr, nodata=-1)
    units = units_utm().iloc[:1]  # centres (0..9) x (0..9)
    out = zonal_population(units, tif, method="centre")
    # 100 cells minus 25 nodata; checkerboard of 10 x 10 has 50 threes, the 5 x 5 block held 12 of them
    assert out["n_cells"].iloc[0] == 75
    assert out["pop_raster_sum"].iloc[0] == 3 * (50 - 12)


def test_nan_cells_are_ignored_without_nodata(tmp_path: Path) -> None:
    arr = np.full((60, 80), 2.0, "float64")
    arr[0, :] = np.nan
    tif = write_tif(tmp_path / "nan.tif", arr)
    out = zonal_population(units_utm().iloc[:1], tif, method="centre")
    assert out["n_cells"].iloc[0] == 90 and out["pop_raster_sum"].iloc[0] == 180.0


def test_centre_on_shared_edge_counted_once(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "ones.tif", np.ones((60, 80), "float32"))
    # the shared edge x = 10.5 cells runs through a column of cell centres, as does y = 20.5
    left = box(X0 + 2 * CELL, Y0 - 20.5 * CELL, X0 + 10.5 * CELL, Y0 - 4 * CELL)
    right = box(X0 + 10.5 * CELL, Y0 - 20.5 * CELL, X0 + 19 * CELL, Y0 - 4 * CELL)
    below = box(X0 + 2 * CELL, Y0 - 30 * CELL, X0 + 19 * CELL, Y0 - 20.5 * CELL)
    units = gpd.GeoDataFrame({"unit_id": ["l", "r", "b"]}, geometry=[left, right, below], crs=UTM)
    out = zonal_population(units, tif, method="centre")
    # union: columns 2..18 (17) x rows 4..29 (26); every centre in exactly one unit
    assert out["n_cells"].sum() == 17 * 26
    # half-open rule: the centre column x = 10.5 goes right, the centre row y = 20.5 goes below
    assert out["n_cells"].tolist() == [8 * 16, 9 * 16, 17 * 10]


@pytest.mark.parametrize("window", [(1, 1), (7, 13), (16, 0), (1024, 16384)])
def test_windowed_equals_one_shot_exactly(tmp_path: Path, random_counts: np.ndarray, window: tuple) -> None:
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    units = units_utm().iloc[:5]
    one = zonal_population(units, tif, method="centre", window_rows=60, window_cols=0)
    win = zonal_population(units, tif, method="centre", window_rows=window[0], window_cols=window[1])
    cols = ["pop_raster_sum", "pop_raster_mean", "pop_centroid_lon", "pop_centroid_lat", "n_cells"]
    for c in cols:
        np.testing.assert_array_equal(win[c].to_numpy(), one[c].to_numpy(), err_msg=c)


# -- exact coverage ------------------------------------------------------------


def test_tiny_unit_gets_exact_fraction_in_auto(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    units = units_utm()
    with pytest.warns(DataQualityWarning, match="1 unit"):
        centre = zonal_population(units, tif, method="centre")
    assert centre["zonal_method"].iloc[5] == "none" and np.isnan(centre["pop_raster_sum"].iloc[5])
    auto = zonal_population(units, tif, method="auto", min_cells=50)
    tiny = auto.iloc[5]
    # the square covers 0.3 x 0.3 = 0.09 of cell (row 40, col 40)
    assert tiny["zonal_method"] == "exact"
    assert tiny["pop_raster_sum"] == pytest.approx(0.09 * float(random_counts[40, 40]), rel=1e-6)
    assert tiny["n_cells"] == pytest.approx(0.09, rel=1e-6)
    # units with fewer than min_cells centres were recomputed exactly, the others kept
    big = centre["n_cells"].iloc[:5] >= 50
    assert (auto["zonal_method"].iloc[:5][big] == "centre").all()
    assert (auto["zonal_method"].iloc[:5][~big] == "exact").all()


def test_exact_sums_equal_analytic_areas(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "ones.tif", np.ones((60, 80), "float32"))
    units = units_utm()
    out = zonal_population(units, tif, method="exact")
    cell_area = CELL * CELL
    # analytic areas in cells: boxes w*h, triangle by the shoelace formula, box minus hole
    tri = 0.5 * abs(2 * (22 - 55) + 28 * (55 - 30) + 20 * (30 - 22))
    expected = [
        10.1 * 10.2,
        14.65 * 12.6,
        tri,
        22.3 * 17.5 - 8.7 * 7.5,
        8.7 * 6.3 + 15.1 * 28.1,
        0.09,
    ]
    # exactextract's coverage fractions are float32: 1e-7 relative
    np.testing.assert_allclose(out["pop_raster_sum"], expected, rtol=1e-6)
    np.testing.assert_allclose(out["n_cells"], expected, rtol=1e-6)
    assert (out["zonal_method"] == "exact").all()
    assert shapely.area(units.geometry.iloc[2]) / cell_area == pytest.approx(tri)


# -- population-weighted centroid -------------------------------------------------


def test_weighted_centroid_symmetric_projected(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    quarter = rng.integers(1, 100, size=(10, 10)).astype("float32")
    block = np.block(
        [[quarter, quarter[:, ::-1]], [quarter[::-1, :], quarter[::-1, ::-1]]]
    )  # mirror-symmetric
    arr = np.zeros((60, 80), "float32")
    arr[10:30, 20:40] = block
    tif = write_tif(tmp_path / "sym.tif", arr)
    unit = gpd.GeoDataFrame(
        {"unit_id": ["s"]},
        geometry=[box(X0 + 20 * CELL, Y0 - 30 * CELL, X0 + 40 * CELL, Y0 - 10 * CELL)],
        crs=UTM,
    )
    out = zonal_population(unit.to_crs(4326), tif, method="centre")
    lon, lat = pyproj.Transformer.from_crs(UTM, 4326, always_xy=True).transform(
        X0 + 30 * CELL, Y0 - 20 * CELL
    )
    assert out["pop_centroid_lon"].iloc[0] == pytest.approx(lon, abs=1e-9)
    assert out["pop_centroid_lat"].iloc[0] == pytest.approx(lat, abs=1e-9)
    # all people in one cell: the centroid is that cell's centre
    one = np.zeros((60, 80), "float32")
    one[12, 33] = 7.0
    out1 = zonal_population(unit, write_tif(tmp_path / "one.tif", one), method="centre")
    lon1, lat1 = pyproj.Transformer.from_crs(UTM, 4326, always_xy=True).transform(
        X0 + 33.5 * CELL, Y0 - 12.5 * CELL
    )
    assert (out1["pop_centroid_lon"].iloc[0], out1["pop_centroid_lat"].iloc[0]) == pytest.approx((lon1, lat1))


def test_geographic_raster_sums_and_spherical_centroid(tmp_path: Path) -> None:
    res = 0.5
    transform = from_origin(90.0, 30.0, res, res)  # 90E..130E, 30N..-30S
    rng = np.random.default_rng(9)
    arr = rng.integers(0, 20, size=(120, 80)).astype("float32")
    tif = write_tif(tmp_path / "geo.tif", arr, transform=transform, crs="EPSG:4326")
    units = gpd.GeoDataFrame(
        {"unit_id": ["eq", "north"]},
        geometry=[box(95.1, -10.1, 105.1, 10.1), Polygon([(106.2, 5.3), (125.7, 28.6), (112.1, 29.4)])],
        crs="EPSG:4326",
    )
    out = zonal_population(units, tif, method="centre")
    xs, ys = centres(arr.shape, transform)
    for k, g in enumerate(units.geometry):
        inside = shapely.contains_xy(g, xs, ys)
        assert out["pop_raster_sum"].iloc[k] == arr[inside].sum()
        # independent spherical centroid: mean unit vector of the cell centres
        lam, phi = np.radians(xs[inside]), np.radians(ys[inside])
        v = arr[inside].astype(float)
        vec = np.array(
            [
                np.sum(v * np.cos(phi) * np.cos(lam)),
                np.sum(v * np.cos(phi) * np.sin(lam)),
                np.sum(v * np.sin(phi)),
            ]
        )
        lon = np.degrees(np.arctan2(vec[1], vec[0]))
        lat = np.degrees(np.arctan2(vec[2], np.hypot(vec[0], vec[1])))
        assert out["pop_centroid_lon"].iloc[k] == pytest.approx(lon, abs=1e-9)
        assert out["pop_centroid_lat"].iloc[k] == pytest.approx(lat, abs=1e-9)
    # symmetric about (100E, 0N) with constant values -> exactly that point
    const = write_tif(tmp_path / "c.tif", np.ones((120, 80), "float32"), transform=transform, crs="EPSG:4326")
    sym = zonal_population(
        units.iloc[:1].set_geometry([box(95.1, -10.1, 105.1, 10.1)]), const, method="centre"
    )
    assert sym["pop_centroid_lon"].iloc[0] == pytest.approx(100.0, abs=1e-9)
    assert sym["pop_centroid_lat"].iloc[0] == pytest.approx(0.0, abs=1e-9)


def test_exact_centroid_of_symmetric_unit(tmp_path: Path) -> None:
    tif = write_tif(tmp_path / "ones.tif", np.ones((60, 80), "float32"))
    # a box centred on cell (10.5, 20.5) whose partly covered edge cells mirror each other
    # (0.7 of columns 8 and 12, 0.2 of rows 18 and 22): coverage-weighted centres meet there
    unit = gpd.GeoDataFrame(
        {"unit_id": ["e"]},
        geometry=[box(X0 + 8.3 * CELL, Y0 - 22.2 * CELL, X0 + 12.7 * CELL, Y0 - 18.8 * CELL)],
        crs=UTM,
    )
    out = zonal_population(unit, tif, method="exact")
    assert out["n_cells"].iloc[0] == pytest.approx(4.4 * 3.4, rel=1e-6)
    lon, lat = pyproj.Transformer.from_crs(UTM, 4326, always_xy=True).transform(
        X0 + 10.5 * CELL, Y0 - 20.5 * CELL
    )
    assert out["pop_centroid_lon"].iloc[0] == pytest.approx(lon, abs=1e-9)
    assert out["pop_centroid_lat"].iloc[0] == pytest.approx(lat, abs=1e-9)


# -- contract, bad input ---------------------------------------------------------


def test_schema_order_and_input_not_mutated(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    units = units_utm().iloc[:5].to_crs(4326)
    units.index = [10, 3, 7, 1, 0]
    before = units.copy()
    out = zonal_population(units, tif)
    pd.testing.assert_frame_equal(units, before)
    assert list(out.columns) == RASTER_COLUMNS
    assert list(out.index) == [10, 3, 7, 1, 0] and out.crs == units.crs
    assert out["unit_id"].tolist() == units["unit_id"].tolist()


def test_empty_units_give_empty_result(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    out = zonal_population(units_utm().iloc[:0], tif)
    assert len(out) == 0 and list(out.columns) == RASTER_COLUMNS


def test_raster_without_crs_is_crs_error(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "nocrs.tif", random_counts, crs=None)
    with pytest.raises(CRSError, match="no CRS"):
        zonal_population(units_utm(), tif)


def test_unreadable_and_missing_raster(tmp_path: Path) -> None:
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    with pytest.raises(InputError, match="cannot read the raster"):
        zonal_population(units_utm(), bad)
    with pytest.raises(MissingInputError, match="not found"):
        zonal_population(units_utm(), tmp_path / "absent.tif")


def test_bad_units(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    with pytest.raises(InputError, match="missing column"):
        zonal_population(units_utm().rename(columns={"unit_id": "id"}), tif)
    bowtie = Polygon([(X0, Y0), (X0 + 500, Y0 - 500), (X0 + 500, Y0), (X0, Y0 - 500)])
    with pytest.raises(GeometryError, match="invalid"):
        zonal_population(gpd.GeoDataFrame({"unit_id": ["x"]}, geometry=[bowtie], crs=UTM), tif)
    with pytest.raises(CRSError, match="no CRS"):
        zonal_population(units_utm().set_crs(None, allow_override=True), tif)
    with pytest.raises(InputError, match="method"):
        zonal_population(units_utm(), tif, method="nearest")


# -- CLI ---------------------------------------------------------------------------


def _cli_workdir(tmp_path: Path, raster: Path | None) -> Path:
    extra = f'[raster]\npath = "{raster.as_posix()}"\n' if raster is not None else ""
    cfg = write_config(tmp_path, tmp_path / "mirror", extra)
    units = units_utm().iloc[:5].to_crs(4326)
    units["name"] = units["unit_id"]
    write_gpkg(tmp_path / "data_processed" / "population.gpkg", {"units": units})
    return cfg


def test_cli_writes_raster_gpkg_and_refuses_overwrite(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "counts.tif", random_counts)
    cfg = _cli_workdir(tmp_path, tif)
    result = CliRunner().invoke(main, ["-c", str(cfg), "raster"])
    assert result.exit_code == 0, result.output
    out = read_layer(tmp_path / "data_processed" / "raster.gpkg", "units")
    assert list(out.columns) == [c for c in RASTER_COLUMNS if c != "geometry"]
    assert "geometry" not in out.columns  # an attribute table: the polygons are in population.gpkg
    direct = zonal_population(units_utm().iloc[:5].to_crs(4326), tif)
    np.testing.assert_array_equal(out["pop_raster_sum"], direct["pop_raster_sum"])
    assert out["zonal_method"].tolist() == direct["zonal_method"].tolist()
    again = CliRunner().invoke(main, ["-c", str(cfg), "raster"])
    assert again.exit_code == 4 and "--overwrite" in again.output


def test_cli_skips_without_raster(tmp_path: Path) -> None:
    cfg = _cli_workdir(tmp_path, None)
    result = CliRunner().invoke(main, ["-c", str(cfg), "raster"])
    assert result.exit_code == 0, result.output
    assert not (tmp_path / "data_processed" / "raster.gpkg").exists()


def test_cli_raster_without_crs_exits_cleanly(tmp_path: Path, random_counts: np.ndarray) -> None:
    tif = write_tif(tmp_path / "nocrs.tif", random_counts, crs=None)
    cfg = _cli_workdir(tmp_path, tif)
    result = CliRunner().invoke(main, ["-c", str(cfg), "raster"])
    assert result.exit_code == 2 and "no CRS" in result.output


# -- real data -------------------------------------------------------------------------


@pytest.mark.slow
def test_real_units_on_synthetic_national_raster(run_stage, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    """Real county units over a 0.05 deg raster of China.

    Centre sums match rasterstats, every unit gets a value, tiny urban
    districts fall back to exact coverage.
    """
    rasterstats = pytest.importorskip("rasterstats")
    processed = run_stage("population")
    units = read_layer(processed / "population.gpkg", "units")
    res = 0.05
    transform = from_origin(73.0, 54.0, res, res)  # 73..135E, 3..54N: every unit incl. the Nansha islands
    rng = np.random.default_rng(2020)
    arr = rng.integers(0, 1000, size=(int(51 / res), int(62 / res))).astype("float32")
    tif = write_tif(tmp_path / "china.tif", arr, transform=transform, crs="EPSG:4326", nodata=-99999)
    out = zonal_population(units, tif, method="auto", min_cells=4)
    assert len(out) == len(units) and out["unit_id"].tolist() == units["unit_id"].tolist()
    assert out["pop_raster_sum"].notna().all() and (out["n_cells"] > 0).all()
    exact = out["zonal_method"] == "exact"
    assert exact.any()  # urban districts smaller than four 5 km cells exist
    centre = out.index[(out["zonal_method"] == "centre").to_numpy()][:200]
    ref = rasterstats.zonal_stats(list(units.geometry.loc[centre]), str(tif), stats=["sum"])
    # rasterstats sums in float32: equal to 1e-6
    np.testing.assert_allclose(out.loc[centre, "pop_raster_sum"], [r["sum"] for r in ref], rtol=1e-6)
