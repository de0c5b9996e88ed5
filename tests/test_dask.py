"""Dask scaling: raster windows and LISA permutations on a LocalCluster.

They must give the same results as the single-process path, bit for bit.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pytest
from click.testing import CliRunner
from rasterio.transform import from_origin
from shapely.geometry import box
from test_raster import _cli_workdir, units_utm, write_tif

from geo_pipeline import InputError
from geo_pipeline._io import read_layer
from geo_pipeline.cli import main
from geo_pipeline.parallel import PERMUTATION_BLOCK, dask_client, permutation_pvalues_local
from geo_pipeline.raster import zonal_population

distributed = pytest.importorskip("distributed")
libpysal = pytest.importorskip("libpysal")

pytestmark = [
    pytest.mark.filterwarnings(
        "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
    ),
    # esda warns that its default alternative will change; the test compares with that default on purpose
    pytest.mark.filterwarnings(
        "ignore:The alternative hypothesis for conditional randomization:DeprecationWarning"
    ),
]


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """Start a two-process LocalCluster, closed at the end of the module."""
    with warnings.catch_warnings():
        # distributed may warn about ports or slow shutdown; those are not results
        warnings.simplefilter("ignore", ResourceWarning)
        warnings.simplefilter("ignore", UserWarning)
        with dask_client(n_workers=2, threads_per_worker=1) as c:
            yield c


def lattice_data(nrows: int = 30, ncols: int = 40, seed: int = 7) -> tuple[np.ndarray, object]:
    """Values with a clear hot spot in one corner on a queen lattice."""
    w = libpysal.weights.lat2W(nrows, ncols, rook=False)
    rng = np.random.default_rng(seed)
    y = rng.normal(size=nrows * ncols)
    grid = y.reshape(nrows, ncols)
    grid[:8, :8] += 2.5
    return grid.ravel(), w


# -- raster ------------------------------------------------------------------------


def test_raster_on_dask_equals_in_process_bit_for_bit(client: object, tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    arr = rng.gamma(0.7, 30.0, size=(60, 80)).astype("float32")  # non-integer: rounding would show
    arr[rng.random(arr.shape) < 0.05] = -1
    tif = write_tif(tmp_path / "pop.tif", arr, nodata=-1)
    units = units_utm().to_crs(4326)
    opts = {"method": "auto", "min_cells": 20, "window_rows": 9, "window_cols": 17}
    local = zonal_population(units, tif, **opts)
    remote = zonal_population(units, tif, **opts, client=client)
    for col in ["pop_raster_sum", "pop_raster_mean", "pop_centroid_lon", "pop_centroid_lat", "n_cells"]:
        np.testing.assert_array_equal(remote[col].to_numpy(), local[col].to_numpy(), err_msg=col)
    assert remote["zonal_method"].tolist() == local["zonal_method"].tolist()
    assert local["zonal_method"].tolist() == ["centre"] * 5 + ["exact"]
    block = arr[:10, :10]  # the cells whose centres are in unit u0
    assert local["pop_raster_sum"].iloc[0] == pytest.approx(float(block[block >= 0].sum()), rel=1e-6)


def test_raster_on_dask_geographic(client: object, tmp_path: Path) -> None:
    arr = np.arange(120 * 80, dtype="float64").reshape(120, 80) % 17 + 0.25
    tif = write_tif(tmp_path / "geo.tif", arr, transform=from_origin(90.0, 30.0, 0.5, 0.5), crs="EPSG:4326")
    units = gpd.GeoDataFrame(
        {"unit_id": [f"g{i}" for i in range(6)]},
        geometry=[box(90.2 + 6 * i, -20.1 + 5 * i, 95.9 + 6 * i, -11.3 + 7 * i) for i in range(6)],
        crs="EPSG:4326",
    )
    local = zonal_population(units, tif, method="centre", window_rows=11)
    remote = zonal_population(units, tif, method="centre", window_rows=11, client=client)
    np.testing.assert_array_equal(remote["pop_centroid_lat"].to_numpy(), local["pop_centroid_lat"].to_numpy())
    np.testing.assert_array_equal(remote["pop_raster_sum"].to_numpy(), local["pop_raster_sum"].to_numpy())


def test_cli_dask_option_gives_the_same_file(tmp_path: Path) -> None:
    arr = np.random.default_rng(8).gamma(0.5, 40.0, size=(60, 80)).astype("float32")
    tif = write_tif(tmp_path / "pop.tif", arr)
    cfg = _cli_workdir(tmp_path, tif)
    with open(cfg, "a", encoding="utf-8") as fh:
        fh.write("workers = 1\nwindow_rows = 16\n")
    runner = CliRunner()
    plain = runner.invoke(main, ["-c", str(cfg), "raster"])
    assert plain.exit_code == 0, plain.output
    first = read_layer(tmp_path / "data_processed" / "raster.gpkg", "units")
    on_dask = runner.invoke(main, ["-c", str(cfg), "raster", "--dask", "--overwrite"])
    assert on_dask.exit_code == 0, on_dask.output
    second = read_layer(tmp_path / "data_processed" / "raster.gpkg", "units")
    np.testing.assert_array_equal(second["pop_raster_sum"], first["pop_raster_sum"])
    np.testing.assert_array_equal(second["pop_centroid_lon"], first["pop_centroid_lon"])


# -- permutations -------------------------------------------------------------------


def test_permutations_same_whatever_the_chunks_in_process() -> None:
    y, w = lattice_data()
    assert len(y) > 4 * PERMUTATION_BLOCK  # several seeding blocks
    ref = permutation_pvalues_local(y, w, permutations=199, seed=11)
    for chunks in (1, 2, 5):
        other = permutation_pvalues_local(y, w, permutations=199, seed=11, chunks=chunks)
        np.testing.assert_array_equal(other.p_sim, ref.p_sim)
    different = permutation_pvalues_local(y, w, permutations=199, seed=12)
    assert not np.array_equal(different.p_sim, ref.p_sim)  # the seed matters


def test_permutations_on_dask_equal_in_process(client: object) -> None:
    y, w = lattice_data()
    local = permutation_pvalues_local(y, w, permutations=299, seed=5)
    for chunks in (None, 3):
        remote = permutation_pvalues_local(y, w, permutations=299, seed=5, client=client, chunks=chunks)
        np.testing.assert_array_equal(remote.p_sim, local.p_sim)
        np.testing.assert_array_equal(remote.Is, local.Is)


def test_local_moran_matches_esda() -> None:
    esda = pytest.importorskip("esda")
    y, w = lattice_data()
    ours = permutation_pvalues_local(y, w, permutations=999, seed=20201101)
    assert w.transform == "O"  # not transformed in place
    ref = esda.Moran_Local(y, w, permutations=999, seed=1)
    np.testing.assert_allclose(ours.Is, ref.Is, rtol=1e-10, atol=1e-12)
    # pseudo p-values from independent random draws: equal up to Monte-Carlo error,
    # sd of a difference sqrt(2 p (1 - p) / 1000) < 0.023; allow 5 sd plus the grid step
    p = (ours.p_sim + ref.p_sim) / 2
    tol = 5 * np.sqrt(2 * p * (1 - p) / 1000) + 2 / 1000
    assert np.all(np.abs(ours.p_sim - ref.p_sim) <= tol)
    assert np.mean(np.abs(ours.p_sim - ref.p_sim)) < 0.02
    # the planted hot spot is significant in both
    hot = np.zeros((30, 40), bool)
    hot[1:7, 1:7] = True
    assert (ours.p_sim[hot.ravel()] < 0.05).mean() > 0.9 and (ref.p_sim[hot.ravel()] < 0.05).mean() > 0.9


def test_islands_get_nan_and_bad_input() -> None:
    y, w = lattice_data(6, 6)
    neighbours = {k: list(v) for k, v in w.neighbors.items()}
    for j in neighbours.pop(0):
        neighbours[j] = [k for k in neighbours[j] if k != 0]
    neighbours[0] = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # libpysal warns about the island
        wi = libpysal.weights.W(neighbours)
    res = permutation_pvalues_local(y, wi, permutations=99, seed=1)
    assert np.isnan(res.p_sim[0]) and res.Is[0] == 0 and np.isfinite(res.p_sim[1:]).all()
    y_bad = y.copy()
    y_bad[3] = np.nan
    with pytest.raises(InputError, match="missing"):
        permutation_pvalues_local(y_bad, w, permutations=9, seed=1)
    with pytest.raises(InputError, match="must match"):
        permutation_pvalues_local(y[:-1], w, permutations=9, seed=1)
