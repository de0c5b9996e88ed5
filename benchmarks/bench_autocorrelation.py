"""Timings of the autocorrelation stage: queen builders, numba compile cost, permutation engines, Dask.

Usage (after ``geo-pipeline population``)::

    .venv/bin/python benchmarks/bench_autocorrelation.py [--units data_processed/population.gpkg]

Prints a table and writes ``benchmarks/results/autocorrelation-<time>.json``.

Measured on the project machine (2 cores shared with other jobs), 2,736 harmonised
county units, 4.1 million vertices (first figure: load ~2.5, second: load 3-5):

=========================================  ============  =====================================
step                                       seconds       note
=========================================  ============  =====================================
queen: geo_pipeline.weights.queen_pairs    1.1 / 1.9     7,824 pairs
queen: libpysal.weights.Queen              11.1 / 17.1   7,824 pairs, identical sets
queen: libpysal Graph.build_contiguity     9.6 / 19.7    7,824 pairs, identical sets
queen: STRtree ``intersects`` query        0.9 / 0.85    7,824 pairs (geometric, same here)
build_weights (queen + centroids + links)  1.7 / 3.5     7 links join 8 components
stage: weights key + cache load            0.4-0.5       SHA-256 over ids and WKB, .npz read
esda numba compile, fresh process          21 / 34-45    ``warm_up()``; cannot be cached on
                                                         disk (function-typed argument)
LISA 999 perm., esda warm                  0.07 / 0.12   after the compile
LISA 999 perm., NumPy engine               0.14          block kernel, in-process (2,734 units
                                                         in 11 seeding blocks; was 0.22 with
                                                         one shared draw table)
LISA 999 perm., NumPy engine on Dask       0.26          LocalCluster(2), warm; p identical
local_statistics LISA + Gi*, numpy / esda  0.30 / 0.18   esda warm
spatial_autocorrelation 2 vars, in-process 1.1           cached weights
spatial_autocorrelation 2 vars, on Dask    1.9           units frame identical
stage, esda engine (cached weights)        33-55         27-44 s of it waiting for numba
stage, NumPy engine (cached weights)       3.4-3.6       statistics 1.2-1.4 s for 2 variables
stage, NumPy engine, --dask                10-16         5-8 s starting the LocalCluster (CLI,
                                                         fresh process), statistics 1.7-3.3 s
=========================================  ============  =====================================

Dask pays off only for many more units than the counties (e.g. townships): for 2,736
units the permutations take a fraction of a second and the cluster start dominates.

A background warm-up thread (engine "esda") saved nothing measurable here: numba's
compiler holds the GIL for much of its work and both cores were busy (stage 55.7 s
without vs 71.1 s with the thread when the weights had to be built, 55.5 vs 55.2 s
with cached weights).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
import warnings
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def timed(fn: Callable[[], Any], repeat: int = 1) -> tuple[float, Any]:
    """Return the best time of ``repeat`` runs and the last result."""
    best, out = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def cold_compile_seconds() -> float:
    """Seconds ``warm_up()`` takes in a fresh interpreter (numba compiles esda's kernels)."""
    code = "from geo_pipeline.autocorrelation import warm_up; print(warm_up())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return float(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks and print a table."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--units", type=Path, default=Path("data_processed/population.gpkg"))
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--skip-libpysal", action="store_true", help="skip the slow libpysal builders")
    args = parser.parse_args(argv)

    import shapely
    from libpysal import graph as lgraph
    from libpysal import weights as lweights

    from geo_pipeline._io import read_layer
    from geo_pipeline.autocorrelation import (
        conditional_pvalues,
        local_statistics,
        spatial_autocorrelation,
        warm_up,
    )
    from geo_pipeline.parallel import dask_client
    from geo_pipeline.weights import UnitWeights, build_weights, queen_pairs

    units = read_layer(args.units, "units")
    geoms = units.geometry.values
    rows: list[dict[str, Any]] = []

    def add(step: str, seconds: float, note: str = "") -> None:
        rows.append({"step": step, "seconds": round(seconds, 3), "note": note})
        print(f"{step:<48} {seconds:9.3f} s  {note}", flush=True)

    t, (i, j) = timed(lambda: queen_pairs(geoms), args.repeat)
    ours = set(zip(i.tolist(), j.tolist(), strict=True))
    add("queen: queen_pairs", t, f"{len(ours)} pairs")
    tree_t, pairs = timed(lambda: shapely.STRtree(geoms).query(geoms, predicate="intersects"))
    a, b = pairs
    inter = {(int(x), int(y)) for x, y in zip(a, b, strict=True) if x < y}
    add("queen: STRtree intersects", tree_t, f"{len(inter)} pairs, equal to ours: {inter == ours}")
    if not args.skip_libpysal:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t, w = timed(lambda: lweights.Queen.from_dataframe(units, use_index=False))
            lib = {(min(x, y), max(x, y)) for x, nb in w.neighbors.items() for y in nb}
            add("queen: libpysal.weights.Queen", t, f"{len(lib)} pairs, equal to ours: {lib == ours}")
            t, _ = timed(lambda: lgraph.Graph.build_contiguity(units, rook=False, strict=False))
            add("queen: libpysal Graph.build_contiguity", t)

    t, weights = timed(lambda: build_weights(units), args.repeat)
    add("build_weights (queen, centroids, links)", t, weights.description)
    arrays = weights.to_arrays()
    path = ROOT / "benchmarks" / "results" / ".weights-bench.npz"
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]

    def load() -> UnitWeights:
        with np.load(path, allow_pickle=False) as data:
            return UnitWeights.from_arrays({k: data[k] for k in data.files})

    t, _ = timed(load, args.repeat)
    path.unlink()
    add("weights cache load (.npz)", t)

    add("esda numba compile, fresh process", cold_compile_seconds(), "warm_up() in a new interpreter")
    add("esda numba warm_up() here", warm_up(), "this process")

    y = units["change_pct"].to_numpy(dtype=float)
    ok = np.isfinite(y)
    w_ok = weights.subset(ok)
    y = y[ok]
    import esda

    graph = w_ok.graph()

    def esda_lisa() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            return esda.Moran_Local(
                y, graph, transformation="r", permutations=999, seed=1, n_jobs=1, keep_simulations=False
            )

    t, _ = timed(esda_lisa, args.repeat)
    add("LISA 999 perm., esda warm", t, f"n = {len(y)}")
    zs = (y - y.mean()) / y.std()
    t, _ = timed(lambda: conditional_pvalues(zs, w_ok, permutations=999, seed=1, direction=zs), args.repeat)
    add("LISA 999 perm., NumPy engine (p-values)", t)
    for engine in ("numpy", "esda"):
        t, _ = timed(
            lambda e=engine: local_statistics(
                y, w_ok, permutations=999, seed=1, alpha=0.05, fdr=False, engine=e
            ),
            args.repeat,
        )
        add(f"local_statistics LISA + Gi*, {engine}", t)

    variables = ["change_pct", "net_outflow_ratio"]
    t, local = timed(
        lambda: spatial_autocorrelation(units, variables=variables, weights=weights, seed=1), args.repeat
    )
    add("spatial_autocorrelation, 2 variables, in-process", t, "cached weights")
    t0 = time.perf_counter()
    with dask_client(n_workers=2) as client:
        add("Dask LocalCluster(2) start", time.perf_counter() - t0, "2 worker processes")
        conditional_pvalues(zs, w_ok, permutations=9, seed=1, client=client)  # warm the workers
        ref = conditional_pvalues(zs, w_ok, permutations=999, seed=1, direction=zs)
        t, remote = timed(
            lambda: conditional_pvalues(zs, w_ok, permutations=999, seed=1, direction=zs, client=client),
            args.repeat,
        )
        add("LISA 999 perm., NumPy engine on Dask", t, f"identical: {np.array_equal(remote, ref)}")
        t, on_dask = timed(
            lambda: spatial_autocorrelation(
                units, variables=variables, weights=weights, seed=1, client=client
            ),
            args.repeat,
        )
        same = on_dask.units.equals(local.units) and on_dask.global_moran.equals(local.global_moran)
        add("spatial_autocorrelation, 2 variables, on Dask", t, f"units frame identical: {same}")

    out = ROOT / "benchmarks" / "results" / f"autocorrelation-{datetime.now():%Y%m%d-%H%M%S}.json"
    out.write_text(
        json.dumps({"units": str(args.units), "n": len(units), "rows": rows}, indent=2), encoding="utf-8"
    )
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
