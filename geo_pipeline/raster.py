"""Zonal statistics of a gridded population raster over the analysis units.

The raster (WorldPop / GHS-POP style GeoTIFF of people per cell, any CRS) is
never reprojected: the units are reprojected to the raster's CRS. Two ways of
assigning cells to units are implemented:

``"centre"``
    A cell belongs to the unit containing its centre (GDAL's
    ``all_touched=False`` rule). The units are rasterised once, in the
    raster's pixel space, by a scanline pass over their edges into runs of
    cells (:func:`rasterise_spans`: a few bytes per boundary crossing, not per
    cell); the raster is then read window by window and the cells of the runs
    are scatter-added per unit (a compiled loop). Memory is bounded by the
    window size (``window_rows x window_cols`` cells, about 5 bytes per cell),
    whatever the raster size. This is the fast path. (GDAL's rasteriser,
    :func:`rasterio.features.rasterize`, gives the same cells but converts
    every vertex through Python objects: on the 4 million vertices of the
    county boundaries it ran at under 3 Mcells/s.)
``"exact"``
    Each cell counts with the fraction of its area covered by the unit
    (:func:`exactextract.exact_extract`). Needed for units that are small
    compared with the cells: a district smaller than a cell may contain no
    cell centre at all.
``"auto"`` (default)
    ``"centre"`` for every unit, then units that received fewer than
    ``min_cells`` cell centres are recomputed with ``"exact"``. The column
    ``zonal_method`` says which method each unit got.

The only file access here is reading the raster, window by window: a national
100 m raster does not fit in memory, so the function takes the raster's path.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import numba
import numpy as np
import pandas as pd
import pyproj
import rasterio
import rasterio.windows
import shapely
from affine import Affine
from rasterio.enums import MaskFlags
from rasterio.windows import Window

from ._errors import CRSError, DataQualityWarning, InputError, MissingInputError
from ._validate import check_frame

__all__ = [
    "RASTER_COLUMNS",
    "METHODS",
    "RasterGrid",
    "open_grid",
    "plan_windows",
    "window_partials",
    "Spans",
    "rasterise_spans",
    "zonal_population",
]

log = logging.getLogger(__name__)

#: Columns of the ``units`` layer of ``raster.gpkg``, in order.
RASTER_COLUMNS = [
    "unit_id",
    "pop_raster_sum",
    "pop_raster_mean",
    "pop_centroid_lon",
    "pop_centroid_lat",
    "n_cells",
    "zonal_method",
    "geometry",
]

#: Zonal methods accepted by :func:`zonal_population`.
METHODS = ("auto", "centre", "exact")

#: Rows of a partial-sums array returned by :func:`window_partials`.
_N_ROWS = 5
_COUNT, _SUM, _A, _B, _C = range(_N_ROWS)

#: Vertices rasterised at a time by :func:`rasterise_spans` (bounds its memory).
_SPAN_CHUNK_VERTICES = 500_000

#: GDAL block cache while streaming (MB); GDAL's default is 5 % of the machine's memory.
_GDAL_CACHE_MB = 64

#: Target number of raster cells (bounding boxes) per exactextract batch.
_EXACT_BATCH_CELLS = 20_000_000

_WGS84 = pyproj.CRS.from_epsg(4326)


@dataclass(frozen=True)
class RasterGrid:
    """What the zonal computation needs to know about a raster.

    Attributes
    ----------
    path : str
        File path (each Dask task reopens it).
    band : int
        1-based band index.
    crs : pyproj.CRS
        The raster's CRS.
    transform : affine.Affine
        Cell (col, row) to CRS coordinates of the upper-left cell corner.
    width, height : int
        Raster size in cells.
    nodata : float or None
        The band's nodata value.
    has_mask : bool
        The band has a real mask band (read with the data).
    geographic : bool
        The CRS is geographic (lon/lat).
    """

    path: str
    band: int
    crs: pyproj.CRS
    transform: Affine
    width: int
    height: int
    nodata: float | None
    has_mask: bool
    geographic: bool

    @property
    def cells(self) -> int:
        """Number of cells of the whole raster."""
        return self.width * self.height


def open_grid(path: str | os.PathLike[str], *, band: int = 1) -> RasterGrid:
    """Open a raster and describe its grid, checking CRS and band.

    Parameters
    ----------
    path : path-like
        GeoTIFF (or any raster GDAL reads).
    band : int, default 1
        Band holding the population counts.

    Returns
    -------
    RasterGrid

    Raises
    ------
    MissingInputError
        If the file does not exist.
    InputError
        If GDAL cannot read the file or the band does not exist.
    CRSError
        If the raster has no CRS.
    """
    p = os.fspath(path)
    if not os.path.isfile(p):
        raise MissingInputError(
            f"population raster {p} not found; set [raster] path in the config to a GeoTIFF of "
            "people per cell (e.g. WorldPop), or leave it empty to skip the raster stage"
        )
    try:
        with rasterio.open(p) as src:
            if not 1 <= band <= src.count:
                raise InputError(
                    f"{p}: expected band {band}, found {src.count} band(s); choose 1..{src.count}"
                )
            if src.crs is None:
                raise CRSError(
                    f"{p}: the raster has no CRS; expected a georeferenced GeoTIFF. Assign the right one, "
                    "e.g. `gdal_edit.py -a_srs EPSG:4326 file.tif`"
                )
            crs = pyproj.CRS.from_user_input(src.crs.to_wkt())
            flags = src.mask_flag_enums[band - 1]
            has_mask = MaskFlags.per_dataset in flags or MaskFlags.alpha in flags
            if src.transform.is_identity:
                raise CRSError(f"{p}: the raster has no geotransform; expected a georeferenced GeoTIFF")
            return RasterGrid(
                path=p,
                band=band,
                crs=crs,
                transform=src.transform,
                width=src.width,
                height=src.height,
                nodata=src.nodatavals[band - 1],
                has_mask=has_mask,
                geographic=crs.is_geographic,
            )
    except rasterio.errors.RasterioIOError as exc:
        raise InputError(f"{p}: cannot read the raster ({exc}); expected a GeoTIFF GDAL can open") from exc


def plan_windows(
    grid: RasterGrid,
    bounds: tuple[float, float, float, float] | None = None,
    *,
    window_rows: int = 1024,
    window_cols: int = 16384,
) -> list[Window]:
    """Cut the part of the raster under ``bounds`` into windows, row band by row band.

    Parameters
    ----------
    grid : RasterGrid
        The raster.
    bounds : tuple, optional
        ``(minx, miny, maxx, maxy)`` in the raster CRS; default the whole raster.
    window_rows : int, default 1024
        Rows per window.
    window_cols : int, default 16384
        Columns per window; 0 means the full width of ``bounds``.

    Returns
    -------
    list of rasterio.windows.Window
        Windows in row-major order (the order partial sums are added in).
    """
    if window_rows < 1 or window_cols < 0:
        raise InputError(f"window_rows must be >= 1 and window_cols >= 0, found {window_rows}, {window_cols}")
    full = Window(0, 0, grid.width, grid.height)
    if bounds is None:
        area = full
    else:
        w = rasterio.windows.from_bounds(*bounds, transform=grid.transform)
        w = w.round_offsets(op="floor").round_lengths(op="ceil")
        # one cell of margin absorbs the rounding of from_bounds
        w = Window(w.col_off - 1, w.row_off - 1, w.width + 2, w.height + 2)
        try:
            area = w.intersection(full)
        except rasterio.errors.WindowError:
            return []
    c0, r0 = int(area.col_off), int(area.row_off)
    ncols, nrows = int(area.width), int(area.height)
    if ncols <= 0 or nrows <= 0:
        return []
    step_c = ncols if window_cols == 0 else window_cols
    return [
        Window(c, r, min(step_c, c0 + ncols - c), min(window_rows, r0 + nrows - r))
        for r in range(r0, r0 + nrows, window_rows)
        for c in range(c0, c0 + ncols, step_c)
    ]


@dataclass(frozen=True)
class Spans:
    """Units rasterised once, as runs of cells whose centres lie inside a unit.

    Run ``k`` covers the cells ``c0[k] <= col < c1[k]`` of raster row
    ``row[k]`` and belongs to unit ``unit[k]`` (1-based; 0 is background).
    Runs are sorted by row, then unit, then column. This run-length form of
    the unit raster takes a few bytes per boundary crossing instead of bytes
    per cell, so it is computed once for the whole raster and each window
    takes its rows.
    """

    row: np.ndarray
    c0: np.ndarray
    c1: np.ndarray
    unit: np.ndarray

    def __len__(self) -> int:
        return len(self.row)

    def select(self, window: Window) -> Spans:
        """Return the runs of the rows of ``window`` that overlap its columns (not clipped)."""
        r0, r1 = int(window.row_off), int(window.row_off + window.height)
        a, b = np.searchsorted(self.row, [r0, r1], side="left")
        c0, c1 = int(window.col_off), int(window.col_off + window.width)
        keep = (self.c1[a:b] > c0) & (self.c0[a:b] < c1)
        return Spans(self.row[a:b][keep], self.c0[a:b][keep], self.c1[a:b][keep], self.unit[a:b][keep])


def rasterise_spans(geoms: Sequence[Any] | np.ndarray, grid: RasterGrid) -> Spans:
    """Rasterise polygons by cell centre (scanline, even-odd rule) into :class:`Spans`.

    A cell belongs to a unit when its centre lies inside the polygon (the
    ``all_touched=False`` rule of GDAL's rasteriser); holes and multipart
    units are handled by the even-odd rule on all rings. Edges are half-open
    in y and runs half-open in x, so a cell centre exactly on an edge shared
    by two units goes to exactly one of them.

    Parameters
    ----------
    geoms : sequence of shapely (Multi)Polygons
        Units in the raster CRS; unit ``i`` gets id ``i + 1``.
    grid : RasterGrid
        The raster.

    Returns
    -------
    Spans
    """
    geoms = np.asarray(geoms, dtype=object)
    # a bounded number of vertices at a time keeps the edge arrays small
    nverts = shapely.get_num_coordinates(geoms)
    bounds = np.searchsorted(
        np.cumsum(nverts), np.arange(_SPAN_CHUNK_VERTICES, nverts.sum(), _SPAN_CHUNK_VERTICES)
    )
    edges = [0, *np.unique(bounds[bounds < len(geoms)]).tolist(), len(geoms)]
    pieces = [
        _spans_of(geoms[lo:hi], lo, grid) for lo, hi in zip(edges[:-1], edges[1:], strict=True) if hi > lo
    ]
    row = np.concatenate([p[0] for p in pieces]) if pieces else np.zeros(0, np.int64)
    c0 = np.concatenate([p[1] for p in pieces]) if pieces else np.zeros(0, np.int64)
    c1 = np.concatenate([p[2] for p in pieces]) if pieces else np.zeros(0, np.int64)
    unit = np.concatenate([p[3] for p in pieces]) if pieces else np.zeros(0, np.int64)
    order = np.lexsort((c0, unit, row))
    return Spans(row=row[order], c0=c0[order], c1=c1[order], unit=unit[order])


def _spans_of(
    geoms: np.ndarray, offset: int, grid: RasterGrid
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Return the runs (row, c0, c1, unit) of ``geoms`` (unit ids from ``offset + 1``)."""
    parts, owner = shapely.get_parts(geoms, return_index=True)
    rings, ring_part = shapely.get_rings(parts, return_index=True)
    coords, vert_ring = shapely.get_coordinates(rings, return_index=True)
    inv = ~grid.transform
    px = inv.a * coords[:, 0] + inv.b * coords[:, 1] + inv.c  # pixel space: cell (c, r) spans [c, c+1)
    py = inv.d * coords[:, 0] + inv.e * coords[:, 1] + inv.f
    del coords
    same = vert_ring[1:] == vert_ring[:-1]
    y0, y1 = py[:-1], py[1:]
    # rows whose centre line y = r + 0.5 lies in [min(y0, y1), max(y0, y1)): half-open edges
    r_start = np.clip(np.ceil(np.minimum(y0, y1) - 0.5), 0, grid.height).astype(np.int64)
    r_end = np.clip(np.ceil(np.maximum(y0, y1) - 0.5), 0, grid.height).astype(np.int64)
    crossing = same & (r_end > r_start)
    idx = np.flatnonzero(crossing)
    x0, y0, x1, y1 = px[:-1][idx], y0[idx], px[1:][idx], y1[idx]
    r_start, r_end = r_start[idx], r_end[idx]
    unit = owner[ring_part[vert_ring[:-1][idx]]] + 1 + offset
    del px, py, same, crossing
    k = r_end - r_start
    edge = np.repeat(np.arange(len(k)), k)
    first = np.repeat(np.cumsum(k) - k, k)
    row = r_start[edge] + (np.arange(len(edge)) - first)
    x = x0[edge] + (row + 0.5 - y0[edge]) * ((x1 - x0) / (y1 - y0))[edge]
    u = unit[edge]
    order = np.lexsort((x, row, u))
    x, row, u = x[order], row[order], u[order]
    # every (unit, row) has an even number of crossings: pair them up
    xa, xb = x[0::2], x[1::2]
    row, u = row[0::2], u[0::2]
    c0 = np.clip(np.ceil(xa - 0.5), 0, grid.width).astype(np.int64)  # centres x = c + 0.5 in [xa, xb)
    c1 = np.clip(np.ceil(xb - 0.5), 0, grid.width).astype(np.int64)
    keep = c1 > c0
    return row[keep], c0[keep], c1[keep], u[keep].astype(np.int64)


@numba.njit(cache=True, nogil=True)
def _accumulate(  # pragma: no cover - compiled
    row: np.ndarray,
    c0: np.ndarray,
    c1: np.ndarray,
    unit: np.ndarray,
    data: np.ndarray,
    mask: np.ndarray,
    use_mask: bool,
    use_nodata: bool,
    nodata: float,
    mode: int,
    coef: np.ndarray,
    col_off: int,
    row_off: int,
    out: np.ndarray,
) -> None:
    """Scatter-add the cells of the runs inside one window into ``out`` (float64).

    Rows of ``out``: count, sum, then for ``mode`` 0 (projected) the sums of
    ``v * col`` and ``v * row`` (integer cell indices); for mode 1
    (geographic) the sums of ``v`` times the three components of the cell
    centre's unit vector.
    """
    h, w = data.shape
    for k in range(len(row)):
        r = row[k] - row_off
        z = unit[k]
        lo = max(c0[k] - col_off, 0)
        hi = min(c1[k] - col_off, w)
        if mode == 1:
            y = coef[4] * (row[k] + 0.5) + coef[5]  # north-up: one latitude per row
            lat = np.radians(y)
            clat = np.cos(lat)
            slat = np.sin(lat)
        for c in range(lo, hi):
            v = float(data[r, c])
            if not np.isfinite(v):
                continue
            if use_nodata and v == nodata:
                continue
            if use_mask and mask[r, c] == 0:
                continue
            out[0, z] += 1.0
            out[1, z] += v
            if mode == 0:
                out[2, z] += v * (c + col_off)
                out[3, z] += v * row[k]
            else:
                x = coef[0] * (c + col_off + 0.5) + coef[1] * (row[k] + 0.5) + coef[2]
                if coef[1] != 0.0 or coef[3] != 0.0:  # rotated grid: latitude varies along the row
                    y = coef[3] * (c + col_off + 0.5) + coef[4] * (row[k] + 0.5) + coef[5]
                    lat = np.radians(y)
                    clat = np.cos(lat)
                    slat = np.sin(lat)
                lon = np.radians(x)
                vc = v * clat
                out[2, z] += vc * np.cos(lon)
                out[3, z] += vc * np.sin(lon)
                out[4, z] += v * slat


def window_partials(
    grid: RasterGrid,
    window: Window,
    spans: Spans,
    n_units: int,
    *,
    src: Any | None = None,
) -> np.ndarray:
    """Partial per-unit sums over one raster window (cell-centre assignment).

    Reads the window (opening the raster itself unless ``src`` is given, so
    a Dask worker can run it), drops nodata / non-finite / masked cells and
    scatter-adds the cells of ``spans`` (the units rasterised once).

    Parameters
    ----------
    grid : RasterGrid
        The raster.
    window : rasterio.windows.Window
        The window to process.
    spans : Spans
        Runs of unit cells; those outside the window are ignored.
    n_units : int
        Number of units (the arrays have ``n_units + 1`` columns).
    src : rasterio.DatasetReader, optional
        The raster, already open (saves reopening it for every window).

    Returns
    -------
    numpy.ndarray
        Float64 array of shape ``(5, n_units + 1)``; rows are cell count,
        population sum, and three centroid moments (see Notes of
        :func:`zonal_population`). Column 0 is the background.
    """
    out = np.zeros((_N_ROWS, n_units + 1), dtype=np.float64)
    sel = spans.select(window)
    if len(sel) == 0:
        return out
    # read only the rows and columns the runs touch
    c_lo = max(int(sel.c0.min()), int(window.col_off))
    c_hi = min(int(sel.c1.max()), int(window.col_off + window.width))
    r_lo, r_hi = int(sel.row.min()), int(sel.row.max()) + 1
    part = Window(c_lo, r_lo, c_hi - c_lo, r_hi - r_lo)
    with contextlib.ExitStack() as stack:
        if src is None:
            stack.enter_context(rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB))
            src = stack.enter_context(rasterio.open(grid.path))
        data = src.read(grid.band, window=part)
        mask = src.read_masks(grid.band, window=part) if grid.has_mask else np.ones((1, 1), np.uint8)
    nodata = grid.nodata
    use_nodata = nodata is not None and not np.isnan(nodata)
    nd = float(data.dtype.type(nodata)) if use_nodata else 0.0
    t = grid.transform
    coef = np.array([t.a, t.b, t.c, t.d, t.e, t.f], dtype=np.float64)
    _accumulate(
        sel.row,
        sel.c0,
        sel.c1,
        sel.unit,
        data,
        mask,
        grid.has_mask,
        use_nodata,
        nd,
        1 if grid.geographic else 0,
        coef,
        c_lo,
        r_lo,
        out,
    )
    return out


def _centre_partials(
    grid: RasterGrid,
    spans: Spans,
    n_units: int,
    windows: Sequence[Window],
    client: Any | None,
) -> np.ndarray:
    """Sum window partials in window order (same order on Dask and in-process)."""
    total = np.zeros((_N_ROWS, n_units + 1), dtype=np.float64)
    if client is not None:
        from .parallel import map_window_partials

        for part in map_window_partials(client, grid, spans, windows, n_units=n_units):
            total += part
        return total
    from ._progress import progress

    # a small GDAL block cache: every block is read once, caching it only costs memory
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB), rasterio.open(grid.path) as src:
        for win in progress(windows, total=len(windows), desc="raster windows", logger=log):
            total += window_partials(grid, win, spans, n_units, src=src)
    return total


def _exact_partials(grid: RasterGrid, geoms: np.ndarray, which: np.ndarray) -> np.ndarray:
    """Per-unit sums with fractional cell coverage (exactextract) for units ``which``.

    Returns an array shaped like :func:`window_partials` output (without the
    background column): ``(5, len(which))``.
    """
    import exactextract
    from exactextract.raster import RasterioRasterSource

    out = np.zeros((_N_ROWS, len(which)), dtype=np.float64)
    if len(which) == 0:
        return out
    t = grid.transform
    cell_area = abs(t.a * t.e - t.b * t.d)
    bx = shapely.bounds(geoms[which])
    est = (bx[:, 2] - bx[:, 0]) * (bx[:, 3] - bx[:, 1]) / cell_area + 1
    inv = ~t
    batches: list[list[int]] = [[]]
    acc = 0.0
    for k, e in enumerate(est):
        if batches[-1] and acc + e > _EXACT_BATCH_CELLS:
            batches.append([])
            acc = 0.0
        batches[-1].append(k)
        acc += e
    with rasterio.Env(GDAL_CACHEMAX=_GDAL_CACHE_MB), rasterio.open(grid.path) as src:
        source = RasterioRasterSource(src, grid.band)
        for batch in batches:
            sel = np.asarray(batch)
            frame = gpd.GeoDataFrame({"_k": sel}, geometry=list(geoms[which[sel]]), crs=grid.crs.to_wkt())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # empty arrays of units off the raster
                res = exactextract.exact_extract(
                    source,
                    frame,
                    ["center_x", "center_y", "coverage", "values"],
                    include_cols=["_k"],
                    output="pandas",
                )
            for k, cx, cy, cov, vals in zip(
                res["_k"], res["center_x"], res["center_y"], res["coverage"], res["values"], strict=True
            ):
                cx = np.asarray(cx, dtype=np.float64)
                cy = np.asarray(cy, dtype=np.float64)
                cov = np.asarray(cov, dtype=np.float64)
                vals = np.ma.filled(np.ma.asarray(vals, dtype=np.float64), np.nan)
                ok = np.isfinite(vals) & (cov > 0)  # exactextract already drops nodata cells
                cx, cy, cov, vals = cx[ok], cy[ok], cov[ok], vals[ok]
                wv = vals * cov
                out[_COUNT, k] = cov.sum()
                out[_SUM, k] = wv.sum()
                if grid.geographic:
                    lon, lat = np.radians(cx), np.radians(cy)
                    out[_A, k] = np.sum(wv * np.cos(lat) * np.cos(lon))
                    out[_B, k] = np.sum(wv * np.cos(lat) * np.sin(lon))
                    out[_C, k] = np.sum(wv * np.sin(lat))
                else:
                    col = inv.a * cx + inv.b * cy + inv.c  # centre -> fractional index c + 0.5
                    row = inv.d * cx + inv.e * cy + inv.f
                    out[_A, k] = np.sum(wv * (col - 0.5))
                    out[_B, k] = np.sum(wv * (row - 0.5))
    return out


def _centroids(grid: RasterGrid, parts: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Population-weighted centroids (lon, lat in EPSG:4326) from partial sums."""
    s = parts[_SUM]
    lon = np.full(s.shape, np.nan)
    lat = np.full(s.shape, np.nan)
    ok = s > 0
    if not ok.any():
        return lon, lat
    if grid.geographic:
        x, y, z = parts[_A, ok], parts[_B, ok], parts[_C, ok]
        glon = np.degrees(np.arctan2(y, x))
        glat = np.degrees(np.arctan2(z, np.hypot(x, y)))
        src_crs = grid.crs
        xs, ys = glon, glat
    else:
        col = parts[_A, ok] / s[ok] + 0.5
        row = parts[_B, ok] / s[ok] + 0.5
        t = grid.transform
        xs, ys = t.a * col + t.b * row + t.c, t.d * col + t.e * row + t.f
        src_crs = grid.crs
    if src_crs.equals(_WGS84, ignore_axis_order=True):
        lon[ok], lat[ok] = xs, ys
    else:
        tr = pyproj.Transformer.from_crs(src_crs, _WGS84, always_xy=True)
        lon[ok], lat[ok] = tr.transform(np.asarray(xs), np.asarray(ys))
    return lon, lat


def _empty_result(units: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    out = gpd.GeoDataFrame(
        {
            "unit_id": pd.Series([], dtype=units["unit_id"].dtype),
            "pop_raster_sum": pd.Series([], dtype="float64"),
            "pop_raster_mean": pd.Series([], dtype="float64"),
            "pop_centroid_lon": pd.Series([], dtype="float64"),
            "pop_centroid_lat": pd.Series([], dtype="float64"),
            "n_cells": pd.Series([], dtype="float64"),
            "zonal_method": pd.Series([], dtype="str"),
        },
        geometry=gpd.GeoSeries([], crs=units.crs),
        crs=units.crs,
    )
    return out[RASTER_COLUMNS]


def zonal_population(
    units: gpd.GeoDataFrame,
    raster: str | os.PathLike[str],
    *,
    method: str = "auto",
    window_rows: int = 1024,
    window_cols: int = 16384,
    min_cells: int = 100,
    band: int = 1,
    client: Any | None = None,
) -> gpd.GeoDataFrame:
    r"""Compute population sum, mean and population-weighted centroid of each unit from a raster.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Analysis units with a unique ``unit_id`` and (Multi)Polygon geometries
        in any CRS (the pipeline uses EPSG:4326). Not modified.
    raster : path-like
        GeoTIFF of people per cell, in any CRS; read window by window.
    method : {"auto", "centre", "exact"}, default "auto"
        Cell assignment (see the module docstring). ``"auto"`` uses cell
        centres and recomputes units with fewer than ``min_cells`` cell
        centres with fractional coverage.
    window_rows, window_cols : int, default 1024, 16384
        Window size in cells (``window_cols = 0``: full width). Peak memory is
        about 5 bytes per window cell (the data, a mask band if any).
    min_cells : int, default 100
        ``"auto"`` threshold. With ``k`` cells, the boundary cells (about
        ``4 sqrt(k)`` for a compact unit) are assigned all-or-nothing by the
        centre method; below ~100 cells they are 40 % or more of the unit and
        the centre sum can be off by tens of percent, while exact coverage of
        so small units is cheap.
    band : int, default 1
        Raster band of the counts.
    client : dask.distributed.Client, optional
        Run the centre-method windows as Dask tasks (see
        :func:`geo_pipeline.parallel.map_window_partials`); the result is
        identical to the in-process run.

    Returns
    -------
    geopandas.GeoDataFrame
        One row per unit, in input order, columns :data:`RASTER_COLUMNS`:
        ``pop_raster_sum`` (people), ``pop_raster_mean`` (people per cell),
        ``pop_centroid_lon``/``pop_centroid_lat`` (EPSG:4326), ``n_cells``
        (cells with data whose centre is in the unit, or for ``"exact"`` the
        sum of covered cell fractions), ``zonal_method`` (``"centre"``,
        ``"exact"``, or ``"none"`` when no cell with data touches the unit; its
        values are then NaN), and the input geometry. ``attrs["raster"]``
        holds run figures (cells read, seconds, cells per second).

    Raises
    ------
    InputError
        Missing ``unit_id``, duplicated ids, unreadable raster, bad method.
    GeometryError
        Missing, empty or invalid geometries, or non-polygons.
    CRSError
        Units or raster without CRS.
    MissingInputError
        If the raster file does not exist.

    Warns
    -----
    DataQualityWarning
        When units get no raster cell with data (outside the raster or all
        nodata).

    Notes
    -----
    With cell values :math:`p_c` (nodata cells dropped) and the cells
    :math:`c \in i` of unit :math:`i` (centre inside, or weight
    :math:`f_c` = covered fraction for ``"exact"``; :math:`f_c = 1` else):

    .. math::

        S_i = \sum_{c \in i} f_c p_c, \qquad
        \bar p_i = S_i / \sum_{c \in i} f_c .

    The population-weighted centroid of a projected raster is
    :math:`\sum f_c p_c (x_c, y_c) / S_i` of the cell centres
    :math:`(x_c, y_c)`, then transformed to lon/lat. For a geographic raster,
    averaging longitudes and latitudes is wrong away from the equator, so the
    cell centres are mapped to unit vectors
    :math:`u_c = (\cos\phi\cos\lambda, \cos\phi\sin\lambda, \sin\phi)`
    and the centroid is the direction of :math:`\sum f_c p_c u_c`
    (the spherical centre of mass projected back to the surface).

    With ``"exact"`` the centroid weights each covered cell's centre by
    :math:`f_c p_c`, so a partly covered cell pulls towards its centre, not
    towards the centre of its covered part.

    Units are expected not to overlap (a partition): a cell whose centre lies
    in two overlapping units counts for both. A centre exactly on a shared
    edge counts for one unit only.

    Sums are accumulated in float64, window by window in a fixed order (the
    same in-process and on Dask); for integer counts they are exact and
    independent of the window size.
    """
    if method not in METHODS:
        raise InputError(f"method must be one of {list(METHODS)}, found {method!r}")
    if min_cells < 0:
        raise InputError(f"min_cells must be >= 0, found {min_cells}")
    check_frame(
        units,
        name="units layer",
        columns=["unit_id"],
        geometry=True,
        geom_types=("Polygon", "MultiPolygon"),
        unique=["unit_id"],
        not_null=["unit_id"],
    ).raise_if_any()
    grid = open_grid(raster, band=band)
    if len(units) == 0:
        return _empty_result(units)

    t0 = time.perf_counter()
    same = units.crs.equals(grid.crs) or units.crs.equals(grid.crs, ignore_axis_order=True)
    in_raster = units.geometry if same else units.geometry.to_crs(grid.crs)
    geoms = np.asarray(in_raster.values, dtype=object)
    n = len(geoms)
    bounds = tuple(float(b) for b in in_raster.total_bounds)

    parts = np.zeros((_N_ROWS, n), dtype=np.float64)
    used = np.full(n, "none", dtype=object)
    cells_read = 0
    if method in ("auto", "centre"):
        windows = plan_windows(grid, bounds, window_rows=window_rows, window_cols=window_cols)  # type: ignore[arg-type]
        cells_read = int(sum(int(w.width) * int(w.height) for w in windows))
        spans = rasterise_spans(geoms, grid)
        parts = _centre_partials(grid, spans, n, windows, client)[:, 1:]
        used[parts[_COUNT] > 0] = "centre"
    redo = np.arange(n) if method == "exact" else np.flatnonzero(parts[_COUNT] < min_cells)
    if method == "centre":
        redo = redo[:0]
    if len(redo):
        log.debug("exact coverage for %d unit(s)", len(redo))
        ex = _exact_partials(grid, geoms, redo)
        parts[:, redo] = ex
        used[redo] = np.where(ex[_COUNT] > 0, "exact", "none")
    elapsed = time.perf_counter() - t0

    none = used == "none"
    s = parts[_SUM].copy()
    count = parts[_COUNT].copy()
    s[none] = np.nan
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = np.where(count > 0, s / np.where(count > 0, count, 1), np.nan)
    lon, lat = _centroids(grid, parts)
    if none.any():
        ids = list(units["unit_id"].astype(str)[none][:10])
        warnings.warn(
            f"{int(none.sum())} unit(s) get no raster cell with data (outside the raster or all nodata), "
            f"e.g. {ids}; their raster columns are NaN. Check that the raster covers the study area.",
            DataQualityWarning,
            stacklevel=2,
        )
    result = gpd.GeoDataFrame(
        {
            "unit_id": units["unit_id"].to_numpy(),
            "pop_raster_sum": s,
            "pop_raster_mean": mean,
            "pop_centroid_lon": lon,
            "pop_centroid_lat": lat,
            "n_cells": count,
            "zonal_method": used.astype(str),
        },
        geometry=units.geometry.to_numpy(),
        crs=units.crs,
        index=units.index,
    )[RASTER_COLUMNS]
    rate = cells_read / elapsed if elapsed > 0 else float("nan")
    result.attrs["raster"] = {
        "cells_read": cells_read,
        "seconds": elapsed,
        "cells_per_second": rate,
        "n_exact": int(np.sum(used == "exact")),
        "n_centre": int(np.sum(used == "centre")),
        "n_none": int(none.sum()),
        "crs": grid.crs.to_string(),
    }
    log.debug("zonal statistics: %d cells in %.2f s (%.1f Mcells/s)", cells_read, elapsed, rate / 1e6)
    return result
