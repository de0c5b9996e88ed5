#!/usr/bin/env python
"""Benchmarks of geo_pipeline against what a user would otherwise call.

Usage::

    python benchmarks/bench.py [--quick] [--repeat N] [--out benchmarks/results/bench.json]
                               [--workdir DIR] [--skip-run] [--baseline-rev REV] [--county-only]
                               [--same-work]
                               [--only NAME[,NAME...]]

What it does:

1. Runs ``geo-pipeline run --to export`` and then the atlas stage on the real data (mirror:
   ``GEO_PIPELINE_MIRROR`` or ``../shared/data``) in a work folder, each in a subprocess, and
   reports wall and CPU time (user + sys). With ``--baseline-rev REV`` the same two commands run
   on an older git revision in the same benchmark run (same interpreter and libraries), so the
   CPU ratio compares like with like; ``--county-only`` adds a run with ``[pipeline] levels =
   ["county"]`` (the revisions before the prefecture level ran the county level only), and
   ``--same-work`` one with every later option that can be switched off switched off as well
   (:data:`SAME_WORK_TOML`: the work of ``ddb1726`` as far as the options allow).
2. Times stage functions on those real outputs and on scaled inputs (units x3 and x10: each unit
   cut by a fishnet; population rasters of China's extent at 0.01 and 0.0025 deg), each against
   the library default a user would call, on the same inputs, with the outputs asserted equal:
   GeoPackage I/O (vs geopandas' default engine, pyogrio), distance bands (vs pyproj.Geod over
   all unit-core pairs), Queen weights (vs libpysal.weights.Queen), LISA + Gi* with 999
   permutations (vs esda in a fresh process, with its numba compile; and vs esda warm), raster
   zonal statistics (centre vs rasterstats; exact vs exactextract, the same work), and each
   stage's start-up against importing its libraries alone.
3. Growth: weights, statistics, distance and writing at 1x, 3x and 10x the units, with the
   fitted exponent b of time ~ n**b.
4. Prints a table (step, median s, baseline, baseline median s, ratio = baseline / ours,
   target, pass/fail, peak RSS above the step's start) and writes it as JSON.

Each benchmark is a small function; one that fails is reported as an error row and the others
still run. ``--quick`` (pipeline up to export, one repeat, no 0.0025 deg raster, no x3/x10)
takes a few minutes.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_MIRROR = ROOT.parent / "shared" / "data"
CHINA_BOUNDS = (73.0, 3.0, 135.0, 54.0)  # lon/lat box holding every unit, incl. the Nansha islands

warnings.filterwarnings("ignore", category=DeprecationWarning)
warnings.filterwarnings("ignore", category=PendingDeprecationWarning)
warnings.filterwarnings("ignore", category=FutureWarning)


# -- measuring ------------------------------------------------------------------------


class PeakRSS:
    """Sample this process's resident memory in a thread; report the peak above the start."""

    def __init__(self, interval: float = 0.005) -> None:
        self.interval = interval
        self.peak = 0
        self.start = 0
        try:
            import psutil

            self._proc: Any = psutil.Process()
        except ImportError:  # pragma: no cover
            self._proc = None

    def _rss(self) -> int:
        if self._proc is not None:
            return int(self._proc.memory_info().rss)
        import resource

        return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024

    def __enter__(self) -> PeakRSS:
        self.start = self.peak = self._rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self.peak = max(self.peak, self._rss())

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())

    @property
    def delta_mb(self) -> float:
        """Peak resident memory above the start, in MB."""
        return (self.peak - self.start) / 2**20


def measure(fn: Callable[[], Any], repeat: int) -> tuple[float, float, Any]:
    """Median wall time over ``repeat`` calls, peak RSS increase (MB), last result."""
    times = []
    result = None
    with PeakRSS() as mem:
        for _ in range(max(1, repeat)):
            t0 = time.perf_counter()
            result = fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times), mem.delta_mb, result


@dataclass
class Row:
    """One line of the results table."""

    step: str
    median_s: float | None = None
    baseline: str = ""
    baseline_s: float | None = None
    target_s: float | None = None
    peak_mb: float | None = None
    note: str = ""
    error: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float | None:
        """Baseline time over ours (> 1: ours is faster)."""
        if self.median_s and self.baseline_s:
            return self.baseline_s / self.median_s
        return None

    @property
    def status(self) -> str:
        """pass/FAIL against the target, ERROR, or empty."""
        if self.error:
            return "ERROR"
        if self.target_s is None or self.median_s is None:
            return ""
        return "pass" if self.median_s <= self.target_s else "FAIL"


def compare(
    step: str,
    ours: Callable[[], Any],
    *,
    repeat: int,
    baseline: tuple[str, Callable[[], Any]] | None = None,
    baseline_repeat: int | None = None,
    target_s: float | None = None,
    note: str = "",
) -> Row:
    """Time ``ours`` (and a baseline) and build a row."""
    med, peak, _ = measure(ours, repeat)
    row = Row(step=step, median_s=med, target_s=target_s, peak_mb=peak, note=note)
    if baseline is not None:
        name, fn = baseline
        bmed, bpeak, _ = measure(fn, baseline_repeat or repeat)
        row.baseline, row.baseline_s = name, bmed
        row.extra["baseline_peak_mb"] = bpeak
    return row


# -- context: real outputs and synthetic inputs ---------------------------------------------


@dataclass
class Context:
    """What the benchmarks share."""

    args: argparse.Namespace
    workdir: Path
    mirror: Path
    processed: Path
    units_source: str = ""
    _cache: dict[str, Any] = field(default_factory=dict)

    def cached(self, key: str, make: Callable[[], Any]) -> Any:
        """Compute once, then reuse."""
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    @property
    def repeat(self) -> int:
        """Repeats per timing."""
        return self.args.repeat

    # real units -------------------------------------------------------------------------
    def units(self) -> Any:
        """Return the analysis units (real, or a labelled stand-in)."""
        return self.cached("units", self._load_units)

    def _load_units(self) -> Any:
        from geo_pipeline._io import read_layer

        pop = self.processed / "population.gpkg"
        if pop.is_file():
            self.units_source = f"real county units ({pop})"
            return read_layer(pop, "units")
        bnd = self.processed / "boundaries.gpkg"
        if not bnd.is_file():
            raise RuntimeError(
                f"neither {pop} nor {bnd} exists: the pipeline run failed before the population stage"
            )
        # stand-in while the population stage is not available: the county polygons with
        # a synthetic indicator (clearly labelled in the output)
        units = read_layer(bnd, "counties").rename(columns={"adcode": "unit_id"})
        rng = np.random.default_rng(2020)
        lon = units.geometry.representative_point().x.to_numpy()
        units["change_pct"] = 8.0 * np.tanh((lon - 110.0) / 8.0) + rng.normal(0.0, 6.0, len(units))
        self.units_source = (
            f"STAND-IN: boundaries counties + synthetic change_pct ({bnd}); population.gpkg missing"
        )
        return units

    def units_x10(self) -> Any:
        """Return the units cut about ten times finer by a fishnet."""
        return self.units_xn(10)

    def units_xn(self, factor: int) -> Any:
        """Return the units cut about ``factor`` times finer by a fishnet (cached on disk)."""
        if factor == 1:
            return self.units()
        return self.cached(f"units_x{factor}", lambda: subdivide(self.units(), factor, self.workdir))

    def raster(self, res: float) -> Path:
        """Path of the synthetic raster at ``res`` degrees (made once, read once to warm the OS cache)."""
        return self.cached(f"raster_{res}", lambda: _warm(synthetic_raster(self.workdir / "rasters", res)))


def _warm(path: Path) -> Path:
    """Read a file once so that the first timed step does not pay for the disk."""
    with open(path, "rb") as fh:
        while fh.read(1 << 24):
            pass
    return path


def subdivide(units: Any, factor: int, workdir: Path) -> Any:
    """Cut every unit by a fishnet so that there are about ``factor`` times as many pieces."""
    import geopandas as gpd
    import shapely

    from geo_pipeline._io import read_layer, write_gpkg

    path = workdir / f"units_x{factor}.gpkg"
    if path.is_file():
        return read_layer(path, "units")
    geoms = np.asarray(units.geometry.values, dtype=object)
    minx, miny, maxx, maxy = units.total_bounds
    target = factor * len(units)

    def fishnet(step: float) -> np.ndarray:
        xs = np.arange(minx, maxx + step, step)
        ys = np.arange(miny, maxy + step, step)
        gx, gy = np.meshgrid(xs[:-1], ys[:-1])
        return shapely.box(gx.ravel(), gy.ravel(), gx.ravel() + step, gy.ravel() + step)

    # fishnet step giving about `target` (unit, cell) pairs: two corrections of a first guess
    step = float(np.sqrt(shapely.area(geoms).sum() / target))
    for _ in range(3):
        boxes = fishnet(step)
        ui, bi = shapely.STRtree(boxes).query(geoms, predicate="intersects")
        step *= float(np.sqrt(len(ui) / target))
    boxes = fishnet(step)
    ui, bi = shapely.STRtree(boxes).query(geoms, predicate="intersects")
    pieces = shapely.intersection(geoms[ui], boxes[bi])
    parts, idx = shapely.get_parts(pieces, return_index=True)
    poly = (shapely.get_type_id(parts) == 3) & (shapely.area(parts) > 1e-9)
    kept, dense = np.unique(idx[poly], return_inverse=True)
    multi = shapely.multipolygons(parts[poly], indices=dense)
    owner = ui[kept]
    rng = np.random.default_rng(10)
    parent = units.iloc[owner]
    out = gpd.GeoDataFrame(
        {
            "unit_id": [f"{p}_{k}" for k, p in enumerate(parent["unit_id"])],
            "change_pct": parent["change_pct"].to_numpy() + rng.normal(0, 3.0, len(owner)),
        },
        geometry=shapely.make_valid(multi),
        crs=units.crs,
    )
    out = out[out.geometry.geom_type.isin(["Polygon", "MultiPolygon"])].reset_index(drop=True)
    write_gpkg(path, {"units": out}, overwrite=True)
    return out


def synthetic_raster(folder: Path, res: float) -> Path:
    """People-per-cell GeoTIFF over China's extent (EPSG:4326), tiled, deflate, nodata -99999."""
    import rasterio
    from rasterio.transform import from_origin
    from rasterio.windows import Window

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"china_{res:g}deg.tif"
    if path.is_file():
        return path
    minx, miny, maxx, maxy = CHINA_BOUNDS
    width, height = round((maxx - minx) / res), round((maxy - miny) / res)
    profile = {
        "driver": "GTiff",
        "width": width,
        "height": height,
        "count": 1,
        "dtype": "float32",
        "crs": "EPSG:4326",
        "transform": from_origin(minx, maxy, res, res),
        "nodata": -99999.0,
        "tiled": True,
        "blockxsize": 512,
        "blockysize": 512,
        "compress": "deflate",
        "zlevel": 1,
    }
    rng = np.random.default_rng(int(1 / res))
    lon = minx + (np.arange(width) + 0.5) * res
    east = np.clip((lon - 95.0) / 25.0, 0.05, 1.0).astype("float32")  # denser to the east
    tmp = path.with_suffix(".part.tif")
    with rasterio.open(tmp, "w", **profile) as dst:
        for r0 in range(0, height, 2048):
            h = min(2048, height - r0)
            block = (rng.random((h, width), dtype=np.float32) ** 4) * 400.0 * east
            block[rng.random((h, width), dtype=np.float32) < 0.02] = -99999.0
            dst.write(block, 1, window=Window(0, r0, width, h))
    os.replace(tmp, path)
    return path


# -- the whole pipeline ------------------------------------------------------------------------


#: ``--same-work``: the options added after ddb1726 (the start of issue 16) set back to that
#: revision's work, as far as options allow: one level, its two Moran variables (no EB rate,
#: no bivariate pairs), rail lines straight between key stations (not threaded through the
#: stations), no rail network. What cannot be switched off stays: the ageing shares, regions and
#: unit kinds, the core-set sensitivity table, the 2010 census corrections and the per-unit
#: comparability flag.
SAME_WORK_TOML = (
    '[pipeline]\nlevels = ["county"]\n'
    '[autocorrelation]\nvariables = ["change_pct", "net_outflow_ratio"]\nbivariate = []\n'
    '[infrastructure]\ngeometry = "straight"\nnetwork = false\n'
)


def _write_run_config(workdir: Path, mirror: Path, extra: str = "") -> Path:
    cfg = workdir / "geo_pipeline.toml"
    workdir.mkdir(parents=True, exist_ok=True)
    cfg.write_text(
        "[paths]\n"
        f'data_raw = "{(workdir / "data_raw").as_posix()}"\n'
        f'data_processed = "{(workdir / "data_processed").as_posix()}"\n'
        f'maps = "{(workdir / "maps").as_posix()}"\n'
        f'mirror = "{mirror.as_posix()}"\n' + extra,
        encoding="utf-8",
    )
    return cfg


def _timed_cli(args: list[str], *, cwd: Path, env: dict[str, str] | None = None) -> tuple[float, float, Any]:
    """Run the CLI in a subprocess; return (wall s, CPU s of the child: user + sys, process)."""
    import resource

    # the same entry point for every revision (older trees have no ``python -m geo_pipeline.cli``)
    entry = "import sys; from geo_pipeline.cli import main; sys.argv[0] = 'geo-pipeline'; main()"
    cmd = [sys.executable, "-c", entry]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    proc = subprocess.run(cmd + args, capture_output=True, text=True, cwd=cwd, check=False, env=env)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall, cpu, proc


def _pipeline_cpu(
    workdir: Path, mirror: Path, *, env: dict[str, str] | None, atlas: bool, extra: str = ""
) -> dict[str, Any]:
    """CPU and wall time of ``run --to export`` and, optionally, of the atlas stage after it."""
    cfg = _write_run_config(workdir, mirror, extra)
    out: dict[str, Any] = {}
    run_args = ["-c", str(cfg), "run", "--overwrite", "--to", "export"]
    wall, cpu, proc = _timed_cli(run_args, cwd=workdir, env=env)
    (workdir / "run.log").write_text(proc.stderr + proc.stdout, encoding="utf-8")
    out["export"] = (wall, cpu, proc.returncode, proc.stderr)
    if atlas:
        wall, cpu, proc = _timed_cli(["-c", str(cfg), "atlas", "--overwrite"], cwd=workdir, env=env)
        (workdir / "atlas.log").write_text(proc.stderr + proc.stdout, encoding="utf-8")
        out["atlas"] = (wall, cpu, proc.returncode, proc.stderr)
    return out


def _checkout(rev: str, folder: Path) -> Path:
    """Export the tree of git revision ``rev`` into ``folder`` (for a same-run baseline)."""
    if not (folder / "geo_pipeline").is_dir():
        folder.mkdir(parents=True, exist_ok=True)
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", rev], capture_output=True, check=True)
        subprocess.run(["tar", "-x", "-C", str(folder)], input=archive.stdout, check=True)
    return folder


def run_pipeline(ctx: Context) -> list[Row]:
    """``geo-pipeline run --to export`` and the atlas stage, end to end in subprocesses.

    Reports wall and CPU time (user + sys of the child); per-stage wall and CPU times come from
    the run's own log. With ``--pipeline-repeat N`` every run is made N times, alternated, and
    the medians are reported. With ``--baseline-rev REV`` the same two commands run on git revision REV
    (exported to the work folder, imported through PYTHONPATH, same interpreter and
    libraries) in the same benchmark run, and the CPU ratio REV / ours is reported.
    """
    specs: list[tuple[str, Path, dict[str, str] | None, bool, str]] = [
        ("ours", ctx.workdir, None, not ctx.args.quick, "")]
    if ctx.args.county_only:  # like for like with revisions that had the county level only
        specs.append(("county", ctx.workdir / "run_county", None, False, '[pipeline]\nlevels = ["county"]\n'))
    if ctx.args.same_work:  # like for like in the options too (SAME_WORK_TOML)
        specs.append(("same", ctx.workdir / "run_same", None, False, SAME_WORK_TOML))
    if ctx.args.baseline_rev:
        tree = _checkout(ctx.args.baseline_rev, ctx.workdir / f"rev_{ctx.args.baseline_rev}")
        env = {**os.environ, "PYTHONPATH": str(tree)}
        specs.append(("base", ctx.workdir / f"run_{ctx.args.baseline_rev}", env, not ctx.args.quick, ""))
    # --pipeline-repeat N: the runs alternate (ours, county, base, ours, ...) so that a change of
    # machine load hits them alike; each figure is the median of its N runs
    rounds: list[dict[str, dict[str, Any]]] = []
    for _ in range(max(1, ctx.args.pipeline_repeat)):
        rounds.append({key: _pipeline_cpu(folder, ctx.mirror, env=env, atlas=atlas, extra=extra)
                       for key, folder, env, atlas, extra in specs})

    def median_of(key: str, part: str) -> tuple[float, float, int, str, list[float]] | None:
        got = [r[key][part] for r in rounds if part in r.get(key, {})]
        if not got:
            return None
        cpus = [g[1] for g in got]
        failed = [g for g in got if g[2] != 0]
        code, err = (failed[0][2], failed[0][3]) if failed else (0, got[-1][3])
        return float(np.median([g[0] for g in got])), float(np.median(cpus)), code, err, cpus

    runs = {key: {part: m for part in ("export", "atlas") if (m := median_of(key, part)) is not None}
            for key, *_ in specs}
    rows = []
    parts = [("ours", "export", "geo-pipeline run --to export"),
             ("county", "export", "run --to export, levels = [county]"),
             ("same", "export", "run --to export, ddb1726's options (--same-work)"),
             ("ours", "atlas", "atlas stage (after export)")]
    for run, part, label in parts:
        if part not in runs.get(run, {}):
            continue
        wall, cpu, code, err, cpus = runs[run][part]
        row = Row(step=f"{label}: CPU s (user+sys)", median_s=cpu, note=f"wall {wall:.1f} s",
                  extra={"cpu_runs": cpus})
        if len(cpus) > 1:
            row.note += f"; median of {len(cpus)} alternated runs: " + ", ".join(f"{c:.1f}" for c in cpus)
        if code != 0:
            row.error = f"exit code {code}: {(err.strip().splitlines() or ['?'])[-1]}"
        if "base" in runs and part in runs["base"]:
            bwall, bcpu, bcode, berr, bcpus = runs["base"][part]
            row.baseline, row.baseline_s = f"same at {ctx.args.baseline_rev}", bcpu
            row.extra["baseline_cpu_runs"] = bcpus
            row.note += f"; {ctx.args.baseline_rev}: wall {bwall:.1f} s" + (
                f" ({', '.join(f'{c:.1f}' for c in bcpus)})" if len(bcpus) > 1 else "") + (
                f", exit {bcode}: {(berr.strip().splitlines() or ['?'])[-1][:120]}" if bcode else ""
            )
        rows.append(row)
    err = runs["ours"]["export"][3]
    stage_line = r"cli: ([\w\[\]]+): finished in ([\d.]+) s(?: \(CPU ([\d.]+) s\))?"
    for name, secs, cpu in re.findall(stage_line, err):
        rows.append(Row(step=f"stage {name} (wall, from the run log)", median_s=float(secs),
                        note=f"CPU {cpu} s" if cpu else ""))
    return rows


# -- benchmarks (each a small function returning rows) -----------------------------------------


def _same_frame(a: Any, b: Any) -> bool:
    """Same columns, values and geometries (WKB), in the same order."""
    import shapely

    if list(a.columns) != list(b.columns) or len(a) != len(b):
        return False
    geom = a.geometry.name
    attrs_a, attrs_b = a.drop(columns=geom), b.drop(columns=geom)
    return bool(attrs_a.equals(attrs_b)) and bool(
        np.array_equal(shapely.to_wkb(a.geometry.values), shapely.to_wkb(b.geometry.values))
    )


def bench_gpkg(ctx: Context) -> list[Row]:
    """Read and write the units layer: project I/O vs geopandas' default engine (pyogrio).

    The baseline is what a user calls: ``geopandas.read_file`` / ``GeoDataFrame.to_file`` with
    their default engine (pyogrio since geopandas 1.0; without Arrow). Both sides read and write
    the same file and the results are asserted equal, so a ratio near 1 means parity.
    """
    import geopandas as gpd

    from geo_pipeline._io import read_layer, write_gpkg

    rows = []
    sets = [("units", ctx.units())]
    if not ctx.args.quick:
        sets += [("units x3", ctx.units_xn(3)), ("units x10", ctx.units_xn(10))]
    for label, frame in sets:
        src = ctx.workdir / f"io_{label.replace(' ', '_')}.gpkg"
        write_gpkg(src, {"units": frame}, overwrite=True)
        out_ours = ctx.workdir / "io_ours.gpkg"
        out_default = ctx.workdir / "io_default.gpkg"

        def write_ours(f: Any = frame, o: Path = out_ours) -> None:
            write_gpkg(o, {"units": f}, overwrite=True)

        def write_default(f: Any = frame, o: Path = out_default) -> None:
            if o.exists():
                o.unlink()
            f.to_file(o, layer="units", driver="GPKG")

        ours_read = read_layer(src, "units")
        default_read = gpd.read_file(src, layer="units")
        same_read = _same_frame(ours_read, default_read)
        write_ours()
        write_default()
        same_write = _same_frame(read_layer(out_ours, "units"), read_layer(out_default, "units"))
        assert same_read and same_write, f"{label}: project I/O and geopandas differ (read {same_read})"
        n = len(frame)
        rows.append(
            compare(
                f"GeoPackage read {label} ({n} rows)",
                lambda s=src: read_layer(s, "units"),
                repeat=ctx.repeat,
                baseline=(
                    "geopandas.read_file (default engine)", lambda s=src: gpd.read_file(s, layer="units")
                ),
                target_s=0.5 if label == "units" else None,
                note="same frame asserted (attributes, WKB)",
            )
        )
        rows[-1].extra["n"] = n
        rows.append(
            compare(
                f"GeoPackage write {label} ({n} rows)",
                write_ours,
                repeat=ctx.repeat,
                baseline=("GeoDataFrame.to_file (default engine)", write_default),
                target_s=0.5 if label == "units" else None,
                note="files read back equal",
            )
        )
        rows[-1].extra["n"] = n
    return rows


def bench_distance(ctx: Context) -> list[Row]:
    """Distance bands to the default cores vs pyproj.Geod over every unit-core pair."""
    import pyproj

    from geo_pipeline import distance as dist

    units = ctx.units()
    cores = dist.default_cores("all")
    pts = units.geometry.representative_point()
    lon, lat = pts.x.to_numpy(), pts.y.to_numpy()
    clon, clat = cores.geometry.x.to_numpy(), cores.geometry.y.to_numpy()
    geod = pyproj.Geod(ellps="WGS84")

    def naive() -> np.ndarray:
        d = np.empty((len(lon), len(clon)))
        for j in range(len(clon)):
            _, _, d[:, j] = geod.inv(lon, lat, np.full_like(lon, clon[j]), np.full_like(lat, clat[j]))
        return np.digitize(d.min(axis=1) / 1000.0, [50.0, 100.0, 150.0])

    breaks = [50.0, 100.0, 150.0]

    def ours_banding() -> np.ndarray:
        idx, dist_m = dist.nearest_geodesic(lon, lat, clon, clat)
        return dist.assign_bands(np.round(dist_m / 1000.0, 6), breaks_km=breaks)

    # Same answer as the naive path, or the timing means nothing.
    assert np.array_equal(ours_banding(), naive()), "banding differs from pyproj.Geod all pairs"
    dist.distance_bands(units, cores, breaks_km=breaks)  # warm
    return [
        compare(
            f"distance bands from points ({len(units)} units x {len(cores)} cores)",
            ours_banding,
            repeat=max(ctx.repeat, 5),
            baseline=("pyproj.Geod all pairs", naive),
            target_s=0.05,
            note="both get the same representative points; identical bands asserted",
        ),
        compare(
            "distance_bands() whole stage function",
            lambda: dist.distance_bands(units, cores, breaks_km=breaks),
            repeat=max(ctx.repeat, 3),
            note="includes geometry validation (shapely.is_valid on ~4M vertices, ~0.3 s) "
            "and representative points",
        ),
    ]


def bench_weights(ctx: Context) -> list[Row]:
    """Queen contiguity: the project's builder vs libpysal.weights.Queen."""
    import libpysal

    from geo_pipeline.weights import build_weights

    rows = []
    sets = [("units", ctx.units())]
    if not ctx.args.quick:
        sets.append(("units x10", ctx.units_x10()))
    for label, units in sets:

        def lib(u: Any = units) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return libpysal.weights.Queen.from_dataframe(u, use_index=False, silence_warnings=True)

        rows.append(
            compare(
                f"Queen weights {label} ({len(units)})",
                lambda u=units: build_weights(u, kind="queen"),
                repeat=ctx.repeat if label == "units" else 1,
                baseline=("libpysal.weights.Queen", lib),
                note="ours also links islands/components and computes equal-area centroids",
            )
        )
    return rows


def bench_lisa(ctx: Context) -> list[Row]:
    """LISA with 999 permutations: esda warm vs the stage's block kernel in-process and on Dask."""
    import esda

    from geo_pipeline.autocorrelation import conditional_pvalues, local_statistics, warm_up
    from geo_pipeline.parallel import dask_client
    from geo_pipeline.weights import build_weights

    rows = []
    sets = [("units", ctx.units())]
    if not ctx.args.quick:
        sets.append(("units x10", ctx.units_x10()))
    t_warm = warm_up()
    inputs = []
    for label, units in sets:
        y = units["change_pct"].to_numpy(dtype=float)
        ok = np.isfinite(y)
        w = build_weights(units, kind="queen").subset(ok)
        y = y[ok]
        z = (y - y.mean()) / y.std()
        inputs.append((label, y, z, w))
        graph = w.graph()

        def run_esda(g: Any = graph, v: np.ndarray = y) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return esda.Moran_Local(
                    v, g, transformation="r", permutations=999, seed=1, n_jobs=1, keep_simulations=False
                )

        run_esda()  # warm
        row = compare(
            f"LISA 999 perm. conditional_pvalues in-process, {label} ({len(y)})",
            lambda zz=z, ww=w: conditional_pvalues(zz, ww, permutations=999, seed=1, direction=zz),
            repeat=ctx.repeat,
            baseline=("esda.Moran_Local warm", run_esda),
            target_s=0.5 if label == "units" else None,
            note="the stage's p-value kernel (blocks of 256 units, one seed per block)",
        )
        row.extra["esda_warm_up_s"] = t_warm
        rows.append(row)
        rows.append(
            compare(
                f"local_statistics LISA + Gi* 999 perm., {label}",
                lambda yy=y, ww=w: local_statistics(yy, ww, permutations=999, seed=1, alpha=0.05, fdr=False),
                repeat=ctx.repeat,
            )
        )
    t0 = time.perf_counter()
    with dask_client(n_workers=2) as client:
        t_start = time.perf_counter() - t0
        _, _, z0, w0 = inputs[0]
        conditional_pvalues(z0, w0, permutations=9, seed=1, client=client)  # warm the workers
        for label, _, z, w in inputs:
            local = conditional_pvalues(z, w, permutations=999, seed=1, direction=z)
            row = compare(
                f"LISA 999 perm. on Dask LocalCluster(2), {label}",
                lambda zz=z, ww=w: conditional_pvalues(
                    zz, ww, permutations=999, seed=1, direction=zz, client=client
                ),
                repeat=ctx.repeat,
                baseline=(
                    "same, in-process",
                    lambda zz=z, ww=w: conditional_pvalues(zz, ww, permutations=999, seed=1, direction=zz),
                ),
            )
            remote = conditional_pvalues(z, w, permutations=999, seed=1, direction=z, client=client)
            row.note = (
                # isolated units (no neighbours, e.g. beyond max_island_link_km) have p = NaN on both sides
                f"p-values identical to in-process: {bool(np.array_equal(remote, local, equal_nan=True))}; "
                f"cluster start {t_start:.1f} s (not included)"
            )
            rows.append(row)
    return rows


def _zonal_baselines(units: Any, tif: Path) -> dict[str, Callable[[], Any]]:
    import exactextract
    import rasterstats

    def rs() -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return rasterstats.zonal_stats(list(units.geometry), str(tif), stats=["sum", "count"])

    def ee() -> Any:
        return exactextract.exact_extract(str(tif), units, ["sum", "count"], output="pandas")

    return {"rasterstats": rs, "exactextract": ee}


def bench_raster(ctx: Context) -> list[Row]:
    """Zonal statistics over synthetic national rasters: project vs rasterstats vs exactextract."""
    from geo_pipeline.raster import zonal_population

    rows: list[Row] = []
    units = ctx.units()
    resolutions = [0.01] if ctx.args.quick else [0.01, 0.0025]
    subset_n = 300
    rng = np.random.default_rng(0)
    subset = units.iloc[np.sort(rng.choice(len(units), size=min(subset_n, len(units)), replace=False))]
    for res in resolutions:
        t0 = time.perf_counter()
        tif = ctx.raster(res)
        t_make = time.perf_counter() - t0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            for method in ("centre", "auto"):
                reps = 1 if res < 0.01 else ctx.repeat
                med, peak, out = measure(lambda m=method, t=tif: zonal_population(units, t, method=m), reps)
                info = out.attrs["raster"]
                rows.append(
                    Row(
                        step=f"raster zonal {method}, {res:g} deg ({info['cells_read'] / 1e6:.0f} Mcells), "
                        "all units",
                        median_s=med,
                        peak_mb=peak,
                        note=(
                            f"{info['cells_read'] / med / 1e6:.0f} Mcells/s end to end; "
                            f"exact for {info['n_exact']} units; raster made in {t_make:.0f} s"
                        ),
                        extra={"cells": info["cells_read"], "n_exact": info["n_exact"]},
                    )
                )
            # baselines on the same random subset of units (the full set would take minutes)
            base = _zonal_baselines(subset, tif)
            ours_row = compare(
                f"raster zonal centre, {res:g} deg, {len(subset)} random units",
                lambda t=tif: zonal_population(subset, t, method="centre"),
                repeat=1 if res < 0.01 else ctx.repeat,
                baseline=("rasterstats", base["rasterstats"]),
                baseline_repeat=1,
            )
            rows.append(ours_row)
            exact_row = compare(
                f"raster zonal exact, {res:g} deg, {len(subset)} random units",
                lambda t=tif: zonal_population(subset, t, method="exact"),
                repeat=1,
                baseline=("exactextract sum/count", base["exactextract"]),
                baseline_repeat=1,
                note="same sums asserted; ours also computes the weighted centroid from exactextract's "
                "cell arrays (more work than the baseline)",
            )
            ours_exact = zonal_population(subset, tif, method="exact")["pop_raster_sum"].to_numpy()
            ref = base["exactextract"]()["sum"].to_numpy()
            same = np.allclose(ours_exact, ref, rtol=1e-6, equal_nan=True)
            assert same, "exact sums differ from exactextract"
            rows.append(exact_row)
    if not ctx.args.quick:
        units10 = ctx.units_x10()
        tif = ctx.raster(0.01)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            med, peak, out = measure(lambda: zonal_population(units10, tif, method="auto"), 1)
        info = out.attrs["raster"]
        rows.append(
            Row(
                step=f"raster zonal auto, 0.01 deg, units x10 ({len(units10)})",
                median_s=med,
                peak_mb=peak,
                note=f"exact for {info['n_exact']} units",
            )
        )
        rows.append(raster_fresh_process(ctx, ctx.raster(0.0025)))
        rows.extend(bench_raster_dask(ctx, units, ctx.raster(0.0025)))
    return rows


_FRESH = """
import resource, sys, time, warnings
warnings.simplefilter("ignore")
from geo_pipeline._io import read_layer
from geo_pipeline.raster import zonal_population

def peak_mb():
    # VmHWM restarts at exec; ru_maxrss would still hold the forking parent's peak
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024

units = read_layer(sys.argv[1], "units")
zonal_population(units.iloc[:2], sys.argv[2], method="centre")  # imports, compiled kernels
before = peak_mb()
t0 = time.perf_counter()
out = zonal_population(units, sys.argv[2], method="centre")
dt = time.perf_counter() - t0
after = peak_mb()
print(dt, before, after, out.attrs["raster"]["cells_read"])
"""


def raster_fresh_process(ctx: Context, tif: Path) -> Row:
    """Peak memory of the centre method in a fresh process (the true high-water mark)."""
    units_path = ctx.processed / "population.gpkg"
    if not units_path.is_file():
        from geo_pipeline._io import write_gpkg

        units_path = ctx.workdir / "units_for_fresh.gpkg"
        write_gpkg(units_path, {"units": ctx.units()}, overwrite=True)
    proc = subprocess.run(
        [sys.executable, "-c", _FRESH, str(units_path), str(tif)], capture_output=True, text=True, check=True
    )
    dt, before, after, cells = (float(v) for v in proc.stdout.split())
    return Row(
        step=f"raster zonal centre, {cells / 1e6:.0f} Mcells, fresh process: peak RSS (MB)",
        median_s=dt,
        peak_mb=after,
        note=f"max RSS {after:.0f} MB, of which {before:.0f} MB before the call (libraries, units); "
        f"{cells / dt / 1e6:.0f} Mcells/s",
    )


def bench_raster_dask(ctx: Context, units: Any, tif: Path) -> list[Row]:
    """Time the centre method on a 2-worker LocalCluster vs in-process (same result)."""
    from geo_pipeline.parallel import dask_client
    from geo_pipeline.raster import zonal_population

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        local = zonal_population(units, tif, method="centre")
        with dask_client(n_workers=2) as client:
            zonal_population(units.iloc[:5], tif, method="centre", client=client)  # warm the workers
            t0 = time.perf_counter()
            remote = zonal_population(units, tif, method="centre", client=client)
            t_dask = time.perf_counter() - t0
    same = bool(
        np.array_equal(
            local["pop_raster_sum"].to_numpy(), remote["pop_raster_sum"].to_numpy(), equal_nan=True
        )
    )
    return [
        Row(
            step="raster zonal centre, 0.0025 deg, on Dask LocalCluster(2)",
            median_s=t_dask,
            baseline="same, in-process",
            baseline_s=local.attrs["raster"]["seconds"],
            note=f"sums identical to in-process: {same}",
        )
    ]


_LISA_FRESH_OURS = """
import sys, time
t0 = time.perf_counter()
import numpy as np
from geo_pipeline.autocorrelation import local_statistics
from geo_pipeline.weights import UnitWeights
data = np.load(sys.argv[1], allow_pickle=False)
w = UnitWeights.from_arrays(dict(data))
out = local_statistics(data["y"], w, permutations=999, seed=1, alpha=0.05, fdr=False)
np.save(sys.argv[2], out["I"].to_numpy(dtype=float))
print(time.perf_counter() - t0)
"""

_LISA_FRESH_ESDA = """
import sys, time, warnings
warnings.simplefilter("ignore")
t0 = time.perf_counter()
import numpy as np
import esda
from libpysal.graph import Graph
data = np.load(sys.argv[1], allow_pickle=False)
ids = data["ids"].astype(object)
f, g = data["focal"], data["neighbor"]
iso = np.setdiff1d(np.arange(len(ids)), f)  # units without neighbours: libpysal's self-loop of weight 0
wts = np.r_[np.ones(len(f)), np.zeros(len(iso))]
f, g = np.r_[f, iso], np.r_[g, iso]
order = np.lexsort((g, f))
graph = Graph.from_arrays(ids[f[order]], ids[g[order]], wts[order])
y = data["y"]
lisa = esda.Moran_Local(y, graph, transformation="r", permutations=999, seed=1, n_jobs=1)
gi = esda.G_Local(y, graph, transform="r", star=True, permutations=999, seed=1, n_jobs=1)
np.save(sys.argv[2], lisa.Is)
print(time.perf_counter() - t0)
"""


def bench_lisa_fresh(ctx: Context) -> list[Row]:
    """LISA + Gi* with 999 permutations, each in a fresh process, as a user would run them.

    The baseline is esda's default path in a new interpreter (import, numba compile of the
    permutation kernels, Moran_Local and G_Local(star=True)); ours is the stage's
    ``local_statistics`` in a new interpreter (imports, the NumPy permutation kernel). Both get the
    same neighbour pairs and values from one file; the local Moran's I values are asserted equal.
    """
    from geo_pipeline.weights import build_weights

    units = ctx.units()
    y = units["change_pct"].to_numpy(dtype=float)
    ok = np.isfinite(y)
    w = build_weights(units, kind="queen").subset(ok)
    arrays = {**w.to_arrays(), "y": y[ok]}
    src = ctx.workdir / "lisa_inputs.npz"
    np.savez(src, **arrays)

    def fresh(code: str, tag: str) -> tuple[float, float, np.ndarray]:
        out = ctx.workdir / f"lisa_{tag}.npy"
        t0 = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, "-c", code, str(src), str(out)], capture_output=True, text=True, check=True
        )
        wall = time.perf_counter() - t0
        return wall, float(proc.stdout.split()[-1]), np.load(out)

    ours_wall, _, ours_i = fresh(_LISA_FRESH_OURS, "ours")
    esda_wall, _, esda_i = fresh(_LISA_FRESH_ESDA, "esda")
    same = bool(np.allclose(ours_i, esda_i, rtol=1e-9, atol=1e-12))
    return [
        Row(
            step=f"LISA + Gi* 999 perm., fresh process ({int(ok.sum())} units)",
            median_s=ours_wall,
            baseline="esda Moran_Local + G_Local, fresh process (incl. numba compile)",
            baseline_s=esda_wall,
            note=f"whole process wall time incl. imports; local I identical: {same}",
        )
    ]


#: stage -> the library module that holds its pure function
_STAGE_MODULES = {
    "fetch": "fetch",
    "boundaries": "boundaries",
    "population": "population",
    "raster": "raster",
    "distance": "distance",
    "autocorrelation": "autocorrelation",
    "infrastructure": "infrastructure",
    "export": "export",
    "report": "report",
    "atlas": "atlas",
    "qgis_project": "qgis_project",
}

#: Library submodules a stage calls in every run of its work, which ``import <top-level package>``
#: alone does not load (``import scipy`` loads neither scipy.spatial nor scipy.sparse.csgraph):
#: the baseline imports them too, else it would not be "the libraries the stage needs".
_STAGE_NEEDS = {
    # crosswalk.crosswalk_components: connected components of the census-polygon graph
    "population": ("scipy.sparse.csgraph",),
    # distance.nearest_core: cKDTree candidate search before the geodesic solve
    "distance": ("scipy.spatial",),
    # infrastructure.nearest_station: cKDTree candidate search
    "infrastructure": ("scipy.spatial",),
    # findings and report: Wilson intervals (binomtest) and spearmanr in every report
    "report": ("scipy.stats",),
    # the atlas draws on matplotlib Figures and writes them with PdfPages
    "atlas": ("matplotlib.figure", "matplotlib.backends.backend_pdf"),
}

_LOADED_LIBS = """
import sys
before = set(sys.modules)
import geo_pipeline.cli, importlib
importlib.import_module("geo_pipeline.cli._" + sys.argv[1])
importlib.import_module("geo_pipeline." + sys.argv[2])
top = {m.split(".")[0] for m in set(sys.modules) - before}
print(" ".join(sorted(t for t in top if t not in sys.stdlib_module_names and not t.startswith("_")
                      and t != "geo_pipeline" and getattr(sys.modules[t], "__spec__", None) is not None)))
"""


def _fresh_cpu(code: str) -> float:
    """CPU time (user + sys) of ``python -c code`` in a fresh process.

    Not wall time: on a shared machine that also counts the waits for a core.
    """
    import resource

    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)


def bench_stage_startup(ctx: Context) -> list[Row]:
    """A stage's start-up against importing the third-party libraries it needs, fresh processes.

    Ours: import the CLI, the stage's wrapper and its library module (what ``geo-pipeline
    <stage>`` loads before it reads data). Baseline: ``import`` of exactly the third-party
    top-level packages that this loads, nothing of geo_pipeline, plus the library submodules
    the stage's work calls (:data:`_STAGE_NEEDS`). CPU time (user + sys) of the fresh process,
    best of 5 each, ours and baseline alternated; geo_pipeline's bytecode is compiled first,
    as the libraries' is (``PYTHONDONTWRITEBYTECODE`` would otherwise make every process
    compile our sources again). Target: ours within 1.2x of the baseline (ratio >= 0.83).
    """
    import compileall

    compileall.compile_dir(str(ROOT / "geo_pipeline"), quiet=1)
    rows = []
    for stage, module in _STAGE_MODULES.items():
        proc = subprocess.run(
            [sys.executable, "-c", _LOADED_LIBS, stage, module], capture_output=True, text=True, check=True
        )
        libs = proc.stdout.split() + list(_STAGE_NEEDS.get(stage, ()))
        ours = (
            "import geo_pipeline.cli, importlib; "
            f"importlib.import_module('geo_pipeline.cli._{stage}'); "
            f"importlib.import_module('geo_pipeline.{module}')"
        )
        base = "import " + ", ".join(libs) if libs else "pass"
        t_ours, t_base = [], []
        for _ in range(5):
            t_ours.append(_fresh_cpu(ours))
            t_base.append(_fresh_cpu(base))
        row = Row(
            step=f"start-up of stage {stage} (fresh process, CPU, best of 5)",
            median_s=min(t_ours),
            baseline="import of its libraries alone",
            baseline_s=min(t_base),
            target_s=1.2 * min(t_base),
            note=f"ours / baseline = {min(t_ours) / min(t_base):.2f} (target <= 1.2); "
            f"libraries: {' '.join(libs)}",
        )
        rows.append(row)
    return rows


def _fit_exponent(ns: list[int], ts: list[float]) -> float:
    """Slope of log(time) on log(n): time grows as n**exponent."""
    return float(np.polyfit(np.log(ns), np.log(ts), 1)[0])


def bench_growth(ctx: Context) -> list[Row]:
    """Time weights, statistics, distance and writing on the units at 1x, 3x and 10x (fishnet).

    Reports each size and the fitted exponent b of time ~ n**b (b = 1: linear).
    Full mode only (cutting the units takes a minute).
    """
    if ctx.args.quick:
        return []
    from geo_pipeline import distance as dist
    from geo_pipeline._io import write_gpkg
    from geo_pipeline.autocorrelation import local_statistics
    from geo_pipeline.weights import build_weights

    cores = dist.default_cores("all")
    # name -> (untimed preparation of the units, the timed step on what it returns)
    steps: dict[str, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
        "Queen weights (build_weights)": (lambda u: u, lambda u: build_weights(u, kind="queen")),
        # weights are timed in their own row: the statistics alone here
        "LISA + Gi* 999 perm. (local_statistics)": (
            lambda u: (u["change_pct"].to_numpy(dtype=float), build_weights(u, kind="queen")),
            lambda yw: local_statistics(yw[0], yw[1], permutations=999, seed=1, alpha=0.05, fdr=False),
        ),
        "distance_bands": (
            lambda u: u, lambda u: dist.distance_bands(u, cores, breaks_km=[50.0, 100.0, 150.0])
        ),
        "GeoPackage write": (
            lambda u: u, lambda u: write_gpkg(ctx.workdir / "growth.gpkg", {"units": u}, overwrite=True)
        ),
    }
    rows: list[Row] = []
    for name, (prepare, step) in steps.items():
        ns, ts = [], []
        for factor in (1, 3, 10):
            units = ctx.units_xn(factor)
            args = prepare(units)
            t, peak, _ = measure(lambda a=args, f=step: f(a), 1)
            ns.append(len(units))
            ts.append(t)
            rows.append(Row(step=f"growth: {name}, x{factor} ({len(units)} units)", median_s=t, peak_mb=peak))
        b = _fit_exponent(ns, ts)
        rows.append(
            Row(step=f"growth: {name}, fitted exponent", note=f"time ~ n^{b:.2f} over n = {ns}",
                extra={"exponent": b, "n": ns, "seconds": ts})
        )
    return rows


BENCHMARKS: list[Callable[[Context], list[Row]]] = [
    bench_stage_startup,
    bench_gpkg,
    bench_distance,
    bench_weights,
    bench_lisa,
    bench_lisa_fresh,
    bench_raster,
    bench_growth,
]


# -- driver -------------------------------------------------------------------------------------


def _fmt(v: float | None, spec: str = ".3f") -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def print_table(rows: list[Row], out: Any = sys.stdout) -> None:
    """Print the results as an aligned table, then errors and notes."""
    header = ["step", "median s", "baseline", "baseline s", "ratio", "target s", "", "peak MB"]
    table = [header]
    for r in rows:
        table.append(
            [
                r.step,
                _fmt(r.median_s),
                r.baseline,
                _fmt(r.baseline_s),
                _fmt(r.ratio, ".1f") + ("x" if r.ratio else ""),
                _fmt(r.target_s, "g"),
                r.status,
                _fmt(r.peak_mb, ".0f"),
            ]
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    for k, row in enumerate(table):
        print(
            "  ".join(
                c.ljust(w) if i in (0, 2, 6) else c.rjust(w)
                for i, (c, w) in enumerate(zip(row, widths, strict=True))
            ),
            file=out,
        )
        if k == 0:
            print("  ".join("-" * w for w in widths), file=out)
    for r in rows:
        if r.error:
            print(f"ERROR {r.step}: {r.error}", file=out)
    for r in rows:
        if r.note and not r.error:
            print(f"note  {r.step}: {r.note}", file=out)


def main(argv: list[str] | None = None) -> int:
    """Run the benchmarks; return 1 if any failed with an error."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a lighter run (about two minutes)")
    parser.add_argument("--repeat", type=int, default=None, help="repeats per timing (default 3, quick 1)")
    parser.add_argument("--out", type=Path, default=None, help="JSON results file")
    parser.add_argument("--workdir", type=Path, default=None, help="work folder (kept; default: temporary)")
    parser.add_argument(
        "--baseline-rev",
        default=None,
        help="also run the pipeline of this git revision (e.g. ddb1726) in the same run and report "
        "the CPU ratio",
    )
    parser.add_argument(
        "--county-only",
        action="store_true",
        help="also run the pipeline with [pipeline] levels = [\"county\"] (like for like with a baseline "
        "revision that had the county level only) and report its CPU ratio",
    )
    parser.add_argument(
        "--same-work",
        action="store_true",
        help="also run the pipeline with the options added since ddb1726 switched off (county level, "
        "two Moran variables, no bivariate, straight rail lines, no rail network) and report its CPU ratio",
    )
    parser.add_argument(
        "--pipeline-repeat",
        type=int,
        default=1,
        help="run the pipeline N times, alternating ours and the baseline, and report the medians",
    )
    parser.add_argument(
        "--skip-run",
        action="store_true",
        help="do not run the pipeline; use the outputs already in --workdir",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="run only these benchmarks, comma-separated names without bench_ (e.g. stage_startup); "
        "with --skip-run the pipeline is not run; 'pipeline' alone: only the pipeline runs",
    )
    args = parser.parse_args(argv)
    benchmarks = BENCHMARKS
    if args.only:
        names = {f"bench_{n.strip().removeprefix('bench_')}" for n in args.only.split(",")}
        names.discard("bench_pipeline")  # the pipeline runs anyway unless --skip-run
        unknown = names - {b.__name__ for b in BENCHMARKS}
        if unknown:
            parser.error(f"--only: no benchmark {', '.join(sorted(unknown))}")
        benchmarks = [b for b in BENCHMARKS if b.__name__ in names]
    if args.repeat is None:
        args.repeat = 1 if args.quick else 3
    mirror = Path(os.environ.get("GEO_PIPELINE_MIRROR") or DEFAULT_MIRROR).resolve()
    tmp = None
    if args.workdir is None:
        tmp = tempfile.TemporaryDirectory(prefix="geo_bench_")
        workdir = Path(tmp.name)
    else:
        workdir = args.workdir.resolve()
        workdir.mkdir(parents=True, exist_ok=True)
    ctx = Context(args=args, workdir=workdir, mirror=mirror, processed=workdir / "data_processed")
    rows: list[Row] = []
    t_all = time.perf_counter()
    steps: list[Callable[[Context], list[Row]]] = [] if args.skip_run else [run_pipeline]
    for bench in [*steps, *benchmarks]:
        name = bench.__name__
        print(f"[{time.perf_counter() - t_all:6.1f} s] {name} ...", file=sys.stderr, flush=True)
        try:
            rows.extend(bench(ctx))
        except Exception as exc:  # a missing stage or library must not stop the others
            detail = f"{type(exc).__name__}: {exc}".splitlines()[0][:300]
            rows.append(Row(step=name, error=detail))
            traceback.print_exc(file=sys.stderr)
    total = time.perf_counter() - t_all
    print(
        f"\ngeo_pipeline benchmarks ({'quick' if args.quick else 'full'}, repeat {args.repeat}, "
        f"{os.cpu_count()} cores, {platform.python_version()}), {total:.0f} s in all"
    )
    print(f"units: {ctx.units_source or 'not loaded'}\n")
    print_table(rows)
    out = args.out or ROOT / "benchmarks" / "results" / f"bench-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        json.dumps(
            {
                "quick": args.quick,
                "repeat": args.repeat,
                "total_s": total,
                "units": ctx.units_source,
                "machine": {
                    "cores": os.cpu_count(),
                    "python": platform.python_version(),
                    "platform": platform.platform(),
                },
                "rows": [{**asdict(r), "ratio": r.ratio, "status": r.status} for r in rows],
            },
            indent=2,
            default=str,
        ),
        encoding="utf-8",
    )
    print(f"\nresults written to {out}")
    if tmp is not None:
        tmp.cleanup()
    return 1 if any(r.error for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
