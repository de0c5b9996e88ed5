"""Dask scaling: raster windows and the LISA / Gi* permutations on a LocalCluster.

They must give the same results as the single-process path, bit for bit. One
LocalCluster (two worker processes) is shared by the module: starting it is the
slow part.
"""

from __future__ import annotations

import contextlib
import json
import operator
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import geopandas as gpd
import numpy as np
import pandas as pd
import pygeoda
import pytest
from click.testing import CliRunner
from pygeoda.libgeoda import gda_load_gal
from pygeoda.weights.weight import Weight
from rasterio.transform import from_origin
from shapely.geometry import box
from test_autocorrelation import _config, _population_gpkg, write_gal
from test_raster import _cli_workdir, units_utm, write_tif

from geo_pipeline import ConfigError
from geo_pipeline._io import read_layer, read_table
from geo_pipeline.autocorrelation import (
    PERMUTATION_BLOCK,
    conditional_pvalues,
    local_statistics,
    permutation_block,
    spatial_autocorrelation,
)
from geo_pipeline.cli import main
from geo_pipeline.config import load_settings
from geo_pipeline.parallel import dask_client, map_blocks
from geo_pipeline.raster import zonal_population
from geo_pipeline.weights import UnitWeights, build_weights

distributed = pytest.importorskip("distributed")

pytestmark = pytest.mark.filterwarnings(  # rasterio's from_origin multiplies Affine objects with `*`
    "ignore:Use `@` matmul instead of `\\*` mul operator:PendingDeprecationWarning"
)


@contextlib.contextmanager
def _quiet_shutdown() -> Iterator[None]:
    """Ignore what distributed may warn while a cluster stops (workers still closing); not results."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=ResourceWarning)  # sockets/processes closed late
        warnings.filterwarnings("ignore", message=".*[Ww]orker.*", category=UserWarning)
        yield


@pytest.fixture(scope="module")
def client() -> Iterator[object]:
    """Start one two-process LocalCluster for the module; close it at the end."""
    stack = contextlib.ExitStack()
    c = stack.enter_context(dask_client(n_workers=2, threads_per_worker=1, processes=True))
    try:
        yield c
    finally:
        with _quiet_shutdown():
            stack.close()


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
    with open(cfg, "a", encoding="utf-8") as fh:  # the file ends in its [raster] section
        fh.write("window_rows = 16\n[dask]\nworkers = 1\n")
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


def lattice(nrows: int = 30, ncols: int = 40, seed: int = 7) -> gpd.GeoDataFrame:
    """Make a lattice of 10 km squares (UTM 50N), noise with a hot spot in one corner; ``w`` has gaps."""
    rng = np.random.default_rng(seed)
    grid = rng.normal(size=(nrows, ncols))
    grid[:8, :8] += 2.5
    units = gpd.GeoDataFrame(
        {
            "unit_id": [f"u{r:02d}_{c:02d}" for r in range(nrows) for c in range(ncols)],
            "v": grid.ravel(),
            "w": rng.gamma(2.0, 1.0, size=nrows * ncols),
        },
        geometry=[
            box(500_000 + c * 1e4, 3_300_000 + r * 1e4, 500_000 + (c + 1) * 1e4, 3_300_000 + (r + 1) * 1e4)
            for r in range(nrows)
            for c in range(ncols)
        ],
        crs="EPSG:32650",
    )
    units.loc[units.index.isin([5, 41, 900]), "w"] = np.nan  # no data: left out, weights subset
    return units


@pytest.fixture(scope="module")
def lattice_weights() -> tuple[np.ndarray, UnitWeights]:
    units = lattice()
    w = build_weights(units)
    y = units["v"].to_numpy()
    assert len(y) > 4 * PERMUTATION_BLOCK and len(y) % PERMUTATION_BLOCK  # several blocks, a short last one
    return y, w


def test_stage_on_dask_equals_in_process_exactly(client: object) -> None:
    units = lattice()
    opts = {"variables": ["v", "w"], "permutations": 199, "seed": 20201101}
    local = spatial_autocorrelation(units, **opts)
    remote = spatial_autocorrelation(units, **opts, client=client)
    pd.testing.assert_frame_equal(remote.units, local.units, check_exact=True)
    pd.testing.assert_frame_equal(remote.global_moran, local.global_moran, check_exact=True)
    out = local.units
    assert (out.loc[[5, 41, 900], "gi_w_class"] == "no data").all()  # the no-data units kept their label
    for var in ("v", "w"):  # the p-values are real permutation p-values (multiples of 1/200), not NaN
        for col in (f"lisa_{var}_p", f"gi_{var}_p"):
            k = out[col].dropna().to_numpy() * 200
            assert len(k) >= 1197 and np.allclose(k, np.round(k), rtol=0, atol=1e-9), col
    # the planted hot spot (rows and columns 1-6) is found, on Dask as in-process
    inner = [f"u{r:02d}_{c:02d}" for r in range(1, 7) for c in range(1, 7)]
    lab = remote.units.set_index("unit_id").loc[inner]
    assert (lab["lisa_v_cluster"] == "HH").mean() > 0.9 and (lab["gi_v_class"] == "hot spot").mean() > 0.9


def test_gi_and_lisa_pvalues_on_dask_equal_in_process(client: object, lattice_weights) -> None:  # type: ignore[no-untyped-def]
    y, w = lattice_weights
    local = local_statistics(y, w, permutations=299, seed=5, alpha=0.05, fdr=False)
    remote = local_statistics(y, w, permutations=299, seed=5, alpha=0.05, fdr=False, client=client)
    for col in ("p", "gi_p", "q", "cluster", "gi_class"):
        np.testing.assert_array_equal(remote[col].to_numpy(), local[col].to_numpy(), err_msg=col)
    assert local["gi_p"].min() < 0.01 and local["p"].min() < 0.01


def test_kernel_same_whatever_the_chunks_and_workers(client: object, lattice_weights) -> None:  # type: ignore[no-untyped-def]
    y, w = lattice_weights
    ref = conditional_pvalues(y, w, permutations=199, seed=11, direction=y)
    for chunks in (None, 1, 2, 5, 50):  # one task ... more tasks than blocks, over 2 workers
        remote = conditional_pvalues(
            y, w, permutations=199, seed=11, direction=y, client=client, chunks=chunks
        )
        np.testing.assert_array_equal(remote, ref, err_msg=f"chunks={chunks}")
    # another cluster layout: one worker with two threads in this process
    with _quiet_shutdown(), dask_client(n_workers=1, threads_per_worker=2, processes=False) as single:
        np.testing.assert_array_equal(
            conditional_pvalues(y, w, permutations=199, seed=11, direction=y, client=single), ref
        )
    # results come back in block order, whatever the grouping into tasks
    expected = [10 + b for b in range(7)]
    assert (
        map_blocks(operator.add, 7, 10, client=client, chunks=3)
        == expected
        == map_blocks(operator.add, 7, 10)
    )
    # each block on its own, in any order, gives the same counts: the seed is the block's
    n_blocks = -(-len(y) // PERMUTATION_BLOCK)
    v = np.asarray(y, dtype=float)
    from scipy import sparse

    adj = sparse.csr_array((np.ones(len(w.focal)), (w.focal, w.neighbor)), shape=(w.n, w.n))
    shared = (v, w.cardinalities.astype(np.int64), adj @ v, np.sign(v), 199, 11, float(np.abs(v).max()))
    parts = {b: permutation_block(b, *shared) for b in reversed(range(n_blocks))}
    larger = np.concatenate([parts[b] for b in range(n_blocks)])
    np.testing.assert_array_equal((larger + 1.0) / 200.0, ref)
    assert not np.array_equal(conditional_pvalues(y, w, permutations=199, seed=12, direction=y), ref)


def test_pvalues_match_geoda_on_several_blocks(lattice_weights, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    # GeoDa's C++ conditional permutations (pygeoda) are an independent implementation: same null
    # distribution, other random draws; sd of a difference sqrt(2 p (1 - p) / 1000) < 0.023
    y, w = lattice_weights
    ours = local_statistics(y, w, permutations=999, seed=20201101, alpha=0.05, fdr=False)
    ids = write_gal(w, tmp_path / "lattice.gal")
    gw = Weight(gda_load_gal(str(tmp_path / "lattice.gal"), ids))
    lisa = pygeoda.local_moran(gw, list(y), permutations=999, seed=1, cpu_threads=1)
    gstar = pygeoda.local_gstar(gw, list(y - y.min()), permutations=999, seed=1, cpu_threads=1)
    np.testing.assert_allclose(ours["I"], np.asarray(lisa.lisa_values()), rtol=0, atol=1e-9)
    for col, ref in (("p", np.asarray(lisa.lisa_pvalues())), ("gi_p", np.asarray(gstar.lisa_pvalues()))):
        a = ours[col].to_numpy()
        p = (a + ref) / 2
        tol = 5 * np.sqrt(2 * p * (1 - p) / 1000) + 2 / 1000
        assert np.all(np.abs(a - ref) <= tol), col
        assert np.mean(np.abs(a - ref)) < 0.02, col
        for b in range(-(-len(y) // PERMUTATION_BLOCK)):  # no block is off
            sl = slice(b * PERMUTATION_BLOCK, (b + 1) * PERMUTATION_BLOCK)
            assert np.mean(np.abs(a[sl] - ref[sl])) < 0.03, (col, b)


def test_dask_needs_the_numpy_engine(client: object) -> None:
    from geo_pipeline import InputError

    with pytest.raises(InputError, match="engine 'esda' cannot run on Dask"):
        spatial_autocorrelation(lattice(6, 6), variables=["v"], permutations=9, engine="esda", client=client)


def test_cli_autocorrelation_dask_gives_the_same_file(tmp_path: Path) -> None:
    cfg = _config(tmp_path, "[autocorrelation]\npermutations = 99\n[dask]\nworkers = 1\n")
    _population_gpkg(tmp_path)
    runner = CliRunner()
    plain = runner.invoke(main, ["-c", str(cfg), "autocorrelation"], catch_exceptions=False)
    assert plain.exit_code == 0, plain.output
    gpkg = tmp_path / "processed" / "autocorrelation.gpkg"
    first, gm1 = read_layer(gpkg, "units"), read_table(gpkg, "global_moran")
    with _quiet_shutdown():
        on_dask = runner.invoke(main, ["-c", str(cfg), "autocorrelation", "--dask", "--overwrite"])
    assert on_dask.exit_code == 0, on_dask.output
    second, gm2 = read_layer(gpkg, "units"), read_table(gpkg, "global_moran")
    pd.testing.assert_frame_equal(second, first, check_exact=True)
    pd.testing.assert_frame_equal(gm2, gm1, check_exact=True)
    manifest = json.loads((tmp_path / "processed" / "manifest.json").read_text(encoding="utf-8"))
    params = manifest["stages"]["autocorrelation"]["parameters"]
    assert params["dask"] is True and params["dask_settings"]["workers"] == 1
    bad = runner.invoke(
        main, ["-c", str(cfg), "autocorrelation", "--dask", "--engine", "esda", "--overwrite"]
    )
    assert bad.exit_code != 0 and "--dask needs the numpy engine" in bad.output


def test_dask_config_section(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(
        '[dask]\nscheduler = "tcp://127.0.0.1:8786"\nworkers = 3\n[autocorrelation]\ndask = true\n'
    )
    s = load_settings(cfg)
    assert (
        s.dask.scheduler == "tcp://127.0.0.1:8786" and s.dask.workers == 3 and s.dask.threads_per_worker == 1
    )
    assert s.autocorrelation.dask is True and s.raster.dask is False
    cfg.write_text("[raster]\nworkers = 2\n")
    with pytest.raises(ConfigError, match=r"\[raster\] workers \(moved to \[dask\] workers\)"):
        load_settings(cfg)
    cfg.write_text("[dask]\nworkers = 0\n")
    with pytest.raises(ConfigError, match="workers >= 1"):
        load_settings(cfg)
    cfg.write_text('[autocorrelation]\ndask = true\nengine = "esda"\n')
    with pytest.raises(ConfigError, match='dask = true needs engine = "numpy"'):
        load_settings(cfg)


@pytest.mark.slow
@pytest.mark.filterwarnings("default::geo_pipeline._errors.DataQualityWarning")  # upstream stages' data notes
def test_real_units_on_dask_equal_in_process(client: object, run_stage: Callable[[str], Path]) -> None:
    processed = run_stage("population")
    units = read_layer(processed / "population.gpkg", "units")
    weights = build_weights(units[units["comparable"].astype(bool)])  # Sansha is not in the weights
    assert weights.n > 10 * PERMUTATION_BLOCK  # the 2,733 comparable county units: 11 blocks
    opts = {"variables": ["change_pct", "net_outflow_ratio"], "weights": weights, "seed": 20201101}
    local = spatial_autocorrelation(units, **opts)
    remote = spatial_autocorrelation(units, **opts, client=client)
    pd.testing.assert_frame_equal(remote.units, local.units, check_exact=True)
    pd.testing.assert_frame_equal(remote.global_moran, local.global_moran, check_exact=True)
    # the Northeast (Liaoning, Jilin, Heilongjiang) is Low-Low in population change, as in census 2020
    ne = units["province_code"].astype(str).str[:2].isin(["21", "22", "23"])
    ll = remote.units["lisa_change_pct_cluster"] == "LL"
    assert ll[ne].mean() > 4 * ll[~ne].mean()
