"""High-speed rail corridors overlaid on the analysis units.

Pure functions of the ``infrastructure`` stage (sources and utilisation are in
:mod:`geo_pipeline.rail`):

* :func:`corridor_buffers` - a buffer of ``buffer_km`` around each high-speed line;
* :func:`dissolve_corridors` - their union, the ``corridors`` layer;
* :func:`unit_overlay` - per unit: distance to the nearest high-speed station,
  whether a high-speed line crosses it, the share of its area in a corridor,
  and the opening year of its first high-speed service;
* :func:`corridor_summary` - shrinkage inside vs outside corridors and by period
  of first high-speed service.

Every overlay first checks that the layers share one CRS
(:func:`geo_pipeline._validate.check_same_crs`): GCJ-02 (Amap) data must be
converted to WGS84 before, a mismatch is a :class:`~geo_pipeline.CRSError`.

Projections
-----------
Layers in a geographic CRS (the pipeline's EPSG:4326) are handled so that
lengths and areas are metric and true:

* each line is buffered in its own transverse Mercator centred on the line's
  central meridian (:func:`line_tm_crs`); the scale factor is
  ``k = 1 / cos(asin(cos(phi) sin(dlon)))`` ~ ``1 + x^2 / (2 R^2)`` at an
  east-west offset ``x`` from that meridian. For the national high-speed
  lines (at most about 9.5 degrees of longitude either side) the buffer width
  is at most about 1.3 % too narrow at the far ends (0.4 km of 30 km) compared
  with a true geodesic buffer, and exact along the central meridian;
* areas and area shares are computed in an Albers equal-area projection for
  China (:data:`CHINA_ALBERS`, standard parallels 25 and 47 N), where areas
  are exact up to the vertex density of the polygons (buffers are densified
  to 2 km before reprojection).

Layers in a projected CRS are buffered and measured in that CRS as given; use
an equal-area projection.
"""

from __future__ import annotations

import logging
import math
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from scipy.spatial import cKDTree

from ._crs import CHINA_ALBERS
from ._errors import CRSError, DataQualityWarning, InputError
from ._groups import figure_columns, group_figures
from ._progress import timed
from ._validate import Kind, check_frame, check_same_crs
from .rail import APPROXIMATE_NOTE

__all__ = [
    "CHINA_ALBERS",
    "UNIT_COLUMNS",
    "SUMMARY_COLUMNS",
    "CENSUS_YEARS",
    "line_tm_crs",
    "corridor_buffers",
    "dissolve_corridors",
    "nearest_station_km",
    "unit_overlay",
    "area_geometry",
    "hsr_period",
    "corridor_summary",
]

log = logging.getLogger(__name__)

#: The two census years the population change is measured between.
CENSUS_YEARS = (2010, 2020)

#: Columns of the ``units`` layer written by the stage (plus ``geometry``).
UNIT_COLUMNS: dict[str, str] = {
    "unit_id": "str",
    "hsr_station_km": "float64",
    "hsr_station": "str",
    "hsr_crosses": "bool",
    "corridor_share": "float64",
    "in_corridor": "bool",
    "hsr_first_open_year": "Int64",
    "hsr_period": "str",
}

#: Columns of the ``corridor_summary`` table.
SUMMARY_COLUMNS: dict[str, str] = {
    "grouping": "str",
    "group": "str",
    **figure_columns(change_column="pop_change_pct"),
    "mean_hsr_station_km": "float64",
}

_DENSIFY_DEG = 0.05  # lon/lat step before projecting lines (about 5 km)
_THREADS = min(2, os.cpu_count() or 1)  # threads for the GEOS work of the overlay (2-core target)
_DENSIFY_M = 2000.0  # metre step of buffer outlines before reprojection


def line_tm_crs(geom: Any) -> pyproj.CRS:
    """Transverse Mercator centred on the central meridian of a lon/lat geometry.

    Parameters
    ----------
    geom : shapely geometry
        In longitude/latitude degrees.

    Returns
    -------
    pyproj.CRS
        ``+proj=tmerc`` on WGS84 with ``lon_0`` the middle of the geometry's
        longitude range, scale 1 on that meridian.
    """
    lon0 = _central_meridian(geom)
    return pyproj.CRS.from_proj4(
        f"+proj=tmerc +lat_0=0 +lon_0={lon0} +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m"
    )


class _TMTransformers:
    """Transformers lon/lat <-> :func:`line_tm_crs` of a line, fast for WGS84 lon/lat.

    ``Transformer.from_crs`` searches the PROJ database each time. For the
    pipeline's EPSG:4326 the operation it finds is a fixed pipeline (degrees
    to radians, then ``tmerc``) in which only ``lon_0`` changes, so the
    transformers are made from that pipeline text instead: measured on the 60
    real high-speed lines, :func:`corridor_buffers` 0.9-1.1 s -> 0.06 s CPU.
    The first line's pipelines
    are checked to be exactly what ``from_crs`` finds; for any other
    geographic CRS every line uses ``from_crs``. The coordinates are
    bit-identical either way.
    """

    _FORWARD = ("+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
                "+step +proj=tmerc +lat_0=0 +lon_0={lon0} +k=1 +x_0=0 +y_0=0 +ellps=WGS84")
    _INVERSE = ("+proj=pipeline +step +inv +proj=tmerc +lat_0=0 +lon_0={lon0} +k=1 +x_0=0 +y_0=0 "
                "+ellps=WGS84 +step +proj=unitconvert +xy_in=rad +xy_out=deg")

    def __init__(self, geod_crs: pyproj.CRS) -> None:
        self.geod_crs = geod_crs
        self.fast: bool | None = None  # decided on the first line

    def __call__(self, geom: Any) -> tuple[pyproj.Transformer, pyproj.Transformer]:
        lon0 = _central_meridian(geom)
        if self.fast is not False:
            fwd = pyproj.Transformer.from_pipeline(self._FORWARD.format(lon0=lon0))
            back = pyproj.Transformer.from_pipeline(self._INVERSE.format(lon0=lon0))
            if self.fast:
                return fwd, back
        tm = line_tm_crs(geom)
        ref = (pyproj.Transformer.from_crs(self.geod_crs, tm, always_xy=True),
               pyproj.Transformer.from_crs(tm, self.geod_crs, always_xy=True))
        if self.fast is None:
            self.fast = (fwd.definition, back.definition) == (ref[0].definition, ref[1].definition)
        return ref


def _central_meridian(geom: Any) -> float:
    minx, _, maxx, _ = shapely.bounds(geom)
    return round((float(minx) + float(maxx)) / 2.0, 6)


def _metres_per_unit(crs: pyproj.CRS) -> float:
    return float(crs.axis_info[0].unit_conversion_factor) if crs.axis_info else 1.0


def _high_speed(lines: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    keep = (lines["class"] == "high-speed") & ~shapely.is_missing(lines.geometry.values)
    return lines.loc[keep & ~shapely.is_empty(lines.geometry.values)]


def corridor_buffers(lines: gpd.GeoDataFrame, *, buffer_km: float = 30.0) -> gpd.GeoDataFrame:
    """Buffer every high-speed line by ``buffer_km``.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Standard lines (:data:`geo_pipeline.rail.LINE_COLUMNS`); only
        ``class == "high-speed"`` rows are used.
    buffer_km : float, default 30
        Half-width of a corridor in km.

    Returns
    -------
    geopandas.GeoDataFrame
        One polygon per high-speed line in the CRS of ``lines`` with
        ``line_id``, ``name``, ``open_year``, ``buffer_km``,
        ``max_scale_error`` (largest relative error of the buffer width from
        the transverse Mercator, see module notes; 0 for projected input).

    Raises
    ------
    InputError
        If ``buffer_km`` is not positive or columns are missing.
    """
    check_frame(
        lines,
        name="rail lines",
        columns={"line_id": "any", "name": "any", "class": "string", "open_year": "any"},
        geometry=True,
    ).raise_if_any()
    if not buffer_km > 0:
        raise InputError(f"buffer_km must be positive, found {buffer_km}")
    hs = _high_speed(lines)
    cols = {
        "line_id": hs["line_id"].astype(str),
        "name": hs["name"].astype(str),
        "open_year": hs["open_year"].astype("Int64"),
    }
    if hs.empty:
        empty = pd.DataFrame({k: v.iloc[:0] for k, v in cols.items()})
        empty["buffer_km"] = pd.Series(dtype="float64")
        empty["max_scale_error"] = pd.Series(dtype="float64")
        return gpd.GeoDataFrame(empty, geometry=gpd.GeoSeries([], crs=lines.crs), crs=lines.crs)
    crs = pyproj.CRS.from_user_input(lines.crs)
    geoms, errors = [], []
    if crs.is_geographic:
        geod_crs = crs
        make_tm = _TMTransformers(geod_crs)
        for geom in hs.geometry.values:
            dense = shapely.segmentize(geom, _DENSIFY_DEG)
            fwd, back = make_tm(dense)
            projected = shapely.transform(
                dense, lambda xy, f=fwd: np.column_stack(f.transform(xy[:, 0], xy[:, 1]))
            )
            buf = shapely.segmentize(shapely.buffer(projected, buffer_km * 1000.0, quad_segs=16), _DENSIFY_M)
            geoms.append(
                shapely.make_valid(
                    shapely.transform(
                        buf, lambda xy, b=back: np.column_stack(b.transform(xy[:, 0], xy[:, 1]))
                    )
                )
            )
            # TM scale factor k = 1/sqrt(1 - (cos(phi) sin(dlon))^2) at the far side of the buffer
            coords = shapely.get_coordinates(dense)
            lon0 = _central_meridian(dense)
            b = np.cos(np.radians(coords[:, 1])) * np.sin(np.radians(np.abs(coords[:, 0] - lon0)))
            b = np.minimum(b + buffer_km / 6371.0, 0.999)
            errors.append(float(np.max(1.0 / np.sqrt(1.0 - b**2)) - 1.0))
    else:
        dist = buffer_km * 1000.0 / _metres_per_unit(crs)
        geoms = list(shapely.buffer(hs.geometry.values, dist, quad_segs=16))
        errors = [0.0] * len(geoms)
    out = gpd.GeoDataFrame(
        {
            **{k: v.to_numpy() for k, v in cols.items()},
            "buffer_km": float(buffer_km),
            "max_scale_error": errors,
        },
        geometry=geoms,
        crs=lines.crs,
    )
    out["open_year"] = out["open_year"].astype("Int64")
    if crs.is_geographic:
        log.debug("corridor buffers: largest width error of the TM buffers %.2f %%", 100 * max(errors))
    return out


def dissolve_corridors(buffers: gpd.GeoDataFrame, *, approximate: bool = False) -> gpd.GeoDataFrame:
    """Union of the corridor buffers: the ``corridors`` layer.

    Parameters
    ----------
    buffers : geopandas.GeoDataFrame
        Output of :func:`corridor_buffers`.
    approximate : bool, default False
        The lines come from the approximate corridor file; the ``note`` column
        then says that positions err by up to tens of km.

    Returns
    -------
    geopandas.GeoDataFrame
        One row (none for no buffers): ``buffer_km``, ``n_lines``,
        ``first_open_year``, ``last_open_year``, ``area_km2`` (equal-area),
        ``note``; MultiPolygon geometry in the CRS of ``buffers``.
    """
    schema = {
        "buffer_km": "float64",
        "n_lines": "int64",
        "first_open_year": "Int64",
        "last_open_year": "Int64",
        "area_km2": "float64",
        "note": "str",
    }
    if buffers.empty:
        data = {k: pd.Series(dtype=v) for k, v in schema.items()}
        return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=buffers.crs), crs=buffers.crs)
    union = shapely.union_all(buffers.geometry.values)
    if union.geom_type == "Polygon":
        union = shapely.MultiPolygon([union])
    area = float(_to_area_crs(gpd.GeoSeries([union], crs=buffers.crs)).area.iloc[0]) / 1e6
    years = buffers["open_year"].dropna()
    note = f"union of {float(buffers['buffer_km'].iloc[0]):g} km buffers around high-speed lines"
    if approximate:
        note += "; " + APPROXIMATE_NOTE
    out = gpd.GeoDataFrame(
        {
            "buffer_km": [float(buffers["buffer_km"].iloc[0])],
            "n_lines": [len(buffers)],
            "first_open_year": pd.array([years.min() if len(years) else pd.NA], dtype="Int64"),
            "last_open_year": pd.array([years.max() if len(years) else pd.NA], dtype="Int64"),
            "area_km2": [area],
            "note": [note],
        },
        geometry=[union],
        crs=buffers.crs,
    )
    return out


def area_geometry(units: gpd.GeoDataFrame) -> np.ndarray:
    """The units' geometry in the equal-area CRS of the overlay (:data:`CHINA_ALBERS` for lon/lat).

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Units with a CRS.

    Returns
    -------
    numpy.ndarray of shapely.Geometry
        In the order of ``units``. Pass it to :func:`unit_overlay` as
        ``units_area`` when the same units are overlaid more than once (the
        projection of the 2,734 real counties, 4 M vertices, takes about 0.9 s CPU).
        The halves of the units are projected in two threads (PROJ releases the
        GIL; each vertex is projected on its own, so the result is identical).
    """
    geoms = np.asarray(units.geometry.values, dtype=object)

    def to_area(part: np.ndarray) -> np.ndarray:
        return np.asarray(_to_area_crs(gpd.GeoSeries(part, crs=units.crs)).values, dtype=object)

    if _THREADS < 2 or len(geoms) < 2:
        return to_area(geoms)
    cuts = np.linspace(0, len(geoms), _THREADS + 1).astype(int)
    with ThreadPoolExecutor(max_workers=_THREADS) as pool:
        return np.concatenate(list(pool.map(to_area, [geoms[cuts[k]:cuts[k + 1]] for k in range(_THREADS)])))


def _to_area_crs(geoms: gpd.GeoSeries) -> gpd.GeoSeries:
    crs = pyproj.CRS.from_user_input(geoms.crs)
    if crs.is_geographic:
        return geoms.to_crs(CHINA_ALBERS)
    return geoms


def _lonlat(points: np.ndarray, crs: pyproj.CRS) -> tuple[np.ndarray, np.ndarray]:
    """Longitude/latitude on the CRS's own datum of point geometries."""
    xy = shapely.get_coordinates(points)
    if crs.is_geographic:
        return xy[:, 0], xy[:, 1]
    t = pyproj.Transformer.from_crs(crs, crs.geodetic_crs, always_xy=True)
    lon, lat = t.transform(xy[:, 0], xy[:, 1])
    return np.asarray(lon), np.asarray(lat)


def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def nearest_station_km(points: gpd.GeoSeries, stations: gpd.GeoDataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Geodesic distance (km) from each point to the nearest station, and its position.

    Parameters
    ----------
    points : geopandas.GeoSeries
        Points in a geographic or projected CRS.
    stations : geopandas.GeoDataFrame
        Station points in the same CRS.

    Returns
    -------
    distance_km : numpy.ndarray
        Geodesic distance on the CRS's ellipsoid; NaN when there are no stations.
    index : numpy.ndarray
        Positional index into ``stations`` of the nearest one (-1 when none).

    Notes
    -----
    Candidates are picked cheaply on the unit sphere with a k-d tree: every
    station whose chord distance is within 1 % of the nearest one (ellipsoidal
    and spherical distances differ by less than 0.6 %), so the exact geodesic
    (:meth:`pyproj.Geod.inv`, Karney's algorithm) is taken over a set that
    always contains the true nearest station.
    """
    check_same_crs(("points", points), ("stations", stations))
    n = len(points)
    dist = np.full(n, np.nan)
    idx = np.full(n, -1, dtype=np.int64)
    if n == 0 or stations.empty:
        return dist, idx
    crs = pyproj.CRS.from_user_input(points.crs)
    geod = crs.get_geod()
    if geod is None:
        raise CRSError(f"CRS {crs.to_string()} has no ellipsoid; geodesic distances need one")
    plon, plat = _lonlat(points.values, crs)
    slon, slat = _lonlat(stations.geometry.values, crs)
    tree = cKDTree(_unit_vectors(slon, slat))
    pv = _unit_vectors(plon, plat)
    d0, _ = tree.query(pv, k=1)
    cands = tree.query_ball_point(pv, r=d0 * 1.01 + 1e-12)
    for i, cand in enumerate(cands):
        c = np.asarray(cand, dtype=np.int64)
        _, _, d = geod.inv(np.full(len(c), plon[i]), np.full(len(c), plat[i]), slon[c], slat[c])
        j = int(np.argmin(d))
        dist[i], idx[i] = d[j] / 1000.0, c[j]
    return dist, idx


def hsr_period(year: pd.Series) -> pd.Series:
    """Period of first high-speed service relative to the census years.

    ``"before 2010"`` (opened 2009 or earlier), ``"2010-2020"`` (opened in the
    census decade, 2010 to 2020 inclusive), ``"none"`` (no high-speed service,
    or its year is unknown).
    """
    y = pd.to_numeric(year, errors="coerce")
    out = pd.Series("none", index=year.index, dtype=object)
    out[y < CENSUS_YEARS[0]] = f"before {CENSUS_YEARS[0]}"
    out[(y >= CENSUS_YEARS[0]) & (y <= CENSUS_YEARS[1])] = f"{CENSUS_YEARS[0]}-{CENSUS_YEARS[1]}"
    out[y > CENSUS_YEARS[1]] = f"after {CENSUS_YEARS[1]}"
    return out.astype(str)


def _empty_units(crs: Any) -> gpd.GeoDataFrame:
    data = {c: pd.Series(dtype=t) for c, t in UNIT_COLUMNS.items()}
    return gpd.GeoDataFrame(data, geometry=gpd.GeoSeries([], crs=crs), crs=crs)


def unit_overlay(
    units: gpd.GeoDataFrame,
    lines: gpd.GeoDataFrame,
    stations: gpd.GeoDataFrame,
    *,
    buffer_km: float = 30.0,
    min_share: float = 0.5,
    buffers: gpd.GeoDataFrame | None = None,
    units_area: np.ndarray | None = None,
    corridor_only: bool = False,
) -> gpd.GeoDataFrame:
    """High-speed rail measures of every unit.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Analysis units with a unique ``unit_id`` and (Multi)Polygon geometry.
    lines : geopandas.GeoDataFrame
        Standard lines (``line_id``, ``name``, ``class``, ``open_year``); only
        high-speed lines are used.
    stations : geopandas.GeoDataFrame
        Standard stations (``name``, ``high_speed``).
    buffer_km : float, default 30
        Corridor half-width.
    min_share : float, default 0.5
        Share of a unit's area that must lie in corridors for ``in_corridor``.
    buffers : geopandas.GeoDataFrame, optional
        Precomputed :func:`corridor_buffers` of ``lines`` with ``buffer_km``.
    units_area : numpy.ndarray, optional
        Precomputed :func:`area_geometry` of ``units``, to overlay the same
        units with several line sets without projecting them again.
    corridor_only : bool, default False
        Compute only ``hsr_crosses``, ``corridor_share`` and ``in_corridor``
        (the columns returned then, with ``unit_id`` and the geometry), not the
        nearest station and the first year: what comparing the corridor
        membership of two line geometries needs. Those three columns are
        identical to the full overlay's.

    Returns
    -------
    geopandas.GeoDataFrame
        :data:`UNIT_COLUMNS` and the units' geometry, index of ``units``:

        ``hsr_station_km``, ``hsr_station``
            geodesic distance from the unit's representative point (a point
            inside the polygon) to the nearest high-speed station, and its name;
        ``hsr_crosses``
            a high-speed line intersects the unit polygon;
        ``corridor_share``
            area of the unit within ``buffer_km`` of any high-speed line divided
            by the unit's area (equal-area projection), in [0, 1];
        ``in_corridor``
            ``corridor_share >= min_share`` or ``hsr_crosses``;
        ``hsr_first_open_year``
            earliest year *Y* at which the unit was in the corridor counting
            only lines opened in or before *Y*: a line opened by *Y* crosses it,
            or the corridors of lines opened by *Y* cover at least ``min_share``
            of it. Missing when not in a corridor or years are unknown;
        ``hsr_period``
            :func:`hsr_period` of that year.

    Raises
    ------
    CRSError
        If the three layers do not share one CRS (e.g. GCJ-02 vs WGS84).
    InputError
        Missing columns, duplicated ``unit_id``, bad geometry, bad options.
    """
    p = check_frame(
        units,
        name="units layer",
        columns={"unit_id": "any"},
        geometry=True,
        unique=["unit_id"],
        not_null=["unit_id"],
        geom_types=("Polygon", "MultiPolygon"),
    )
    check_frame(
        lines,
        name="rail lines",
        columns={"line_id": "any", "class": "string", "open_year": "any"},
        geometry=True,
        problems=p,
    )
    check_frame(
        stations,
        name="rail stations",
        columns={"name": "any", "high_speed": "bool"},
        geometry=True,
        problems=p,
    )
    if not 0 < min_share <= 1:
        p.add(f"min_share must be in (0, 1], found {min_share}")
    if units_area is not None and len(units_area) != len(units):
        p.add(f"units_area must hold one geometry per unit ({len(units)}), found {len(units_area)}; "
              "pass area_geometry(units)")
    p.raise_if_any()
    check_same_crs(("units layer", units), ("rail lines", lines), ("rail stations", stations))
    if units.empty:
        return _empty_units(units.crs)

    out = gpd.GeoDataFrame(
        {"unit_id": units["unit_id"].astype(str)}, geometry=units.geometry.copy(), crs=units.crs
    )
    # -- nearest high-speed station -------------------------------------------------------------
    hs_st = stations.loc[stations["high_speed"].astype(bool)]
    dist = np.full(len(units), np.nan)
    if not corridor_only:
        if hs_st.empty:
            warnings.warn(
                "no high-speed stations: hsr_station_km is missing for every unit",
                DataQualityWarning,
                stacklevel=2,
            )
        rep = gpd.GeoSeries(shapely.point_on_surface(units.geometry.values), crs=units.crs, index=units.index)
        dist, pos = nearest_station_km(rep, hs_st)
        out["hsr_station_km"] = dist
        names = hs_st["name"].astype(str).to_numpy()
        out["hsr_station"] = np.where(pos >= 0, names[np.maximum(pos, 0)] if len(names) else "", "")

    # -- lines crossing units -------------------------------------------------------------------
    hs = _high_speed(lines)
    if hs.empty:
        warnings.warn(
            "no high-speed lines: no unit is crossed or in a corridor", DataQualityWarning, stacklevel=2
        )
    # the tree of the units queried with the lines (each prepared once) finds the same pairs as
    # the tree of the lines queried with every unit: 0.09 s instead of 0.13 s CPU for the counties
    l_idx, u_idx = (
        shapely.STRtree(units.geometry.values).query(hs.geometry.values, predicate="intersects")
        if len(hs) else (np.array([], int), np.array([], int))
    )
    years = hs["open_year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
    n = len(units)
    crosses = np.zeros(n, dtype=bool)
    crosses[u_idx] = True
    cross_year = np.full(n, np.inf)
    np.minimum.at(cross_year, u_idx, np.where(np.isnan(years[l_idx]), np.inf, years[l_idx]))
    out["hsr_crosses"] = crosses

    # -- corridor shares (equal-area) -----------------------------------------------------------
    if buffers is None:
        buffers = corridor_buffers(lines, buffer_km=buffer_km)
    else:
        check_same_crs(("units layer", units), ("corridor buffers", buffers))
    share = np.zeros(n)
    first = cross_year
    if not buffers.empty:
        ua = area_geometry(units) if units_area is None else np.asarray(units_area, dtype=object)
        ba = np.asarray(_to_area_crs(buffers.geometry).values, dtype=object)
        byear = buffers["open_year"].astype("Float64").to_numpy(dtype=float, na_value=np.nan)
        with timed("corridor shares", log):
            share, first = _corridor_shares(ua, ba, byear, cross_year, min_share=min_share,
                                            years=not corridor_only)
    out["corridor_share"] = share
    out["in_corridor"] = (share >= min_share - 1e-12) | crosses
    if corridor_only:
        return out[["unit_id", "hsr_crosses", "corridor_share", "in_corridor", out.geometry.name]]
    out["hsr_first_open_year"] = pd.array(
        np.where(np.isfinite(first), first, np.nan), dtype="Float64"
    ).astype("Int64")
    out["hsr_period"] = hsr_period(out["hsr_first_open_year"]).to_numpy()
    log.info(
        "units: %d of %d in high-speed corridors (%g km, share >= %g or crossed); median distance to a "
        "high-speed station %.1f km",
        int(out["in_corridor"].sum()),
        n,
        buffer_km,
        min_share,
        float(np.nanmedian(dist)) if hs_st.size else math.nan,
    )
    return out[[*UNIT_COLUMNS, out.geometry.name]]


def _corridor_shares(
    ua: np.ndarray,
    ba: np.ndarray,
    byear: np.ndarray,
    cross_year: np.ndarray,
    *,
    min_share: float,
    years: bool = True,
) -> tuple[np.ndarray, np.ndarray]:
    """Corridor share of every unit, and the year of its first high-speed service.

    Parameters
    ----------
    ua, ba : numpy.ndarray of shapely.Geometry
        Units and corridor buffers in one equal-area CRS.
    byear : numpy.ndarray
        Opening year of each buffer's line (NaN when unknown).
    cross_year : numpy.ndarray
        Per unit, the earliest opening year of a line crossing it (inf when none).
    min_share : float
        Share of a unit's area that puts it in the corridor.
    years : bool, default True
        Compute the first year; with False only the shares (the second column is then
        ``cross_year`` unchanged).

    Returns
    -------
    share : numpy.ndarray
        Area of the unit within the union of the buffers over its area, at most 1.
    first_year : numpy.ndarray
        ``min(cross_year, Y)`` with *Y* the earliest year whose buffers (lines opened
        by *Y*) cover at least ``min_share`` of the unit (inf when none).

    Notes
    -----
    Each unit's share is ``area(unit & union(buffers meeting it)) / area(unit)``:
    the union of the few buffers first (simple polygons), then one intersection.
    This is equal in exact arithmetic to the union of the pieces ``unit & buffer``
    that the overlay computed before, and differs from it only by rounding (at most
    1.5e-14 relative on the 2,734 real counties, in the last bits of 469 of the 1,310
    units that meet a corridor). A unit that the union covers has share 1 without an
    intersection; the union of a set of buffers is made once (155 distinct sets).
    The year search uses the same formulation with the buffers opened by each year,
    and stops at the year of a crossing line, which gives the result anyway. Measured
    on the real counties, one thread, in one process: :func:`unit_overlay` 2.6-2.7 s
    -> 0.8 s CPU (0.6 s with ``corridor_only``); booleans and years identical.
    """
    n = len(ua)
    share = np.zeros(n)
    first = np.array(cross_year, dtype=float, copy=True)
    if n == 0 or len(ba) == 0:
        return share, first
    unit_area = shapely.area(ua)
    # the tree of the units queried with the few buffers (each prepared once) finds the same
    # pairs as the tree of the buffers queried with every unit, in 0.08 s instead of 0.18 s
    bj, bi = shapely.STRtree(ua).query(ba, predicate="intersects")
    order = np.lexsort((bj, bi))
    bi, bj = bi[order], bj[order]
    starts = np.flatnonzero(np.r_[True, bi[1:] != bi[:-1]]) if len(bi) else np.array([], dtype=int)
    ends = np.r_[starts[1:], len(bi)].astype(int)
    limit = min_share - 1e-12

    unions: dict[tuple[int, ...], Any] = {}  # 1,310 real counties meet 155 distinct sets of buffers

    def covered(unit: Any, area: float, which: np.ndarray) -> float:
        key = tuple(which.tolist())
        merged = unions.get(key)
        if merged is None:
            merged = unions[key] = ba[which[0]] if len(which) == 1 else shapely.union_all(ba[which])
        if shapely.covers(merged, unit):
            return area
        return float(shapely.area(shapely.intersection(unit, merged)))

    def work(first_rows: np.ndarray, last_rows: np.ndarray) -> None:
        for a, b in zip(first_rows, last_rows, strict=True):
            ii = int(bi[a])
            unit, area, cand = ua[ii], float(unit_area[ii]), bj[a:b]
            share[ii] = min(covered(unit, area, cand) / area, 1.0) if area > 0 else 0.0
            if not years or share[ii] < limit:
                continue
            yrs = byear[cand]
            for y in np.unique(yrs[~np.isnan(yrs)]):  # sorted
                if y >= first[ii]:  # a line crossing the unit opened by then
                    break
                sel = yrs <= y
                if sel.all() or covered(unit, area, cand[sel]) / area >= limit:  # all: the share above
                    first[ii] = y
                    break

    if _THREADS < 2 or len(starts) < 2:
        work(starts, ends)
    else:
        # halves of the units in two threads (GEOS releases the GIL; each unit's result
        # depends only on its own geometry, so it is identical to one thread). Kept because it
        # costs no CPU: measured on the real counties (one process, 4 alternations, machine
        # loaded 2.5x) 0.85 s CPU in the main thread, 0.72 s in one worker thread, 0.73 s in two
        # (GEOS allocates faster outside the main thread's heap); the wall gain is nil under
        # load and at most half of the 0.5 s of this loop on an idle machine.
        cuts = np.linspace(0, len(starts), _THREADS + 1).astype(int)
        with ThreadPoolExecutor(max_workers=_THREADS) as pool:
            list(pool.map(lambda k: work(starts[cuts[k]:cuts[k + 1]], ends[cuts[k]:cuts[k + 1]]),
                          range(_THREADS)))
    return share, first


_SUMMARY_INPUT: dict[str, Kind] = {
    "unit_id": "any",
    "pop_2010": "numeric",
    "pop_2020": "numeric",
    "change_pct": "numeric",
    "shrinking": "bool",
}


def corridor_summary(units: pd.DataFrame, overlay: pd.DataFrame) -> pd.DataFrame:
    """Shrinkage inside vs outside corridors and by period of first high-speed service.

    Parameters
    ----------
    units : pandas.DataFrame
        Population units: ``unit_id``, ``pop_2010``, ``pop_2020``,
        ``change_pct``, ``shrinking``.
    overlay : pandas.DataFrame
        Output of :func:`unit_overlay` (``unit_id``, ``in_corridor``,
        ``hsr_period``, ``hsr_station_km``).

    Returns
    -------
    pandas.DataFrame
        :data:`SUMMARY_COLUMNS`, rows for ``grouping = "corridor"`` (groups
        ``"inside"``, ``"outside"``), ``grouping = "first_hsr"`` (``"before
        2010"``, ``"2010-2020"``, ``"none"``) and ``"all"``.

    Raises
    ------
    InputError
        Missing columns or unit ids of ``overlay`` not in ``units``.

    Notes
    -----
    For a group *G*: ``shrinking_share = |{u in G: shrinking}| / |G|``,
    population-weighted change ``100 (sum P2020 - sum P2010) / sum P2010``,
    and the median of the units' ``change_pct``.

    The census gives population only in 2010 and 2020, so "before/after" is a
    comparison between units, not within a unit over time: units first served
    before 2010 had high-speed service over the whole decade, units first
    served 2010-2020 gained it during the decade (lines opened late in 2010 or
    in 2020 straddle the census dates, 1 November), units without service
    are the reference. It is descriptive, not a causal effect.
    """
    p = check_frame(units, name="population units", columns=_SUMMARY_INPUT, unique=["unit_id"])
    check_frame(
        overlay,
        name="infrastructure overlay",
        columns={"unit_id": "any", "in_corridor": "bool", "hsr_period": "any", "hsr_station_km": "numeric"},
        problems=p,
    )
    p.raise_if_any()
    left = pd.DataFrame(units[list(_SUMMARY_INPUT)]).assign(unit_id=lambda d: d["unit_id"].astype(str))
    right = pd.DataFrame(overlay[["unit_id", "in_corridor", "hsr_period", "hsr_station_km"]]).assign(
        unit_id=lambda d: d["unit_id"].astype(str)
    )
    unknown = sorted(set(right["unit_id"]) - set(left["unit_id"]))
    if unknown:
        raise InputError(
            f"infrastructure overlay: {len(unknown)} unit_id(s) not in the population units, "
            f"e.g. {unknown[:5]}; "
            "rerun the infrastructure stage on the current population.gpkg"
        )
    df = left.merge(right, on="unit_id", how="inner", validate="one_to_one")
    df["corridor"] = np.where(df["in_corridor"].astype(bool), "inside", "outside")
    groupings = [
        ("corridor", "corridor", ["inside", "outside"]),
        (
            "first_hsr",
            "hsr_period",
            [f"before {CENSUS_YEARS[0]}", f"{CENSUS_YEARS[0]}-{CENSUS_YEARS[1]}", "none"],
        ),
    ]
    # A missing value of the grouping column is in no group (as df.loc[df[col] == g] did).
    groups = [
        (grouping, g, df[col].eq(g).to_numpy(dtype=bool, na_value=False))
        for grouping, col, order in groupings
        for g in order
    ]
    groups.append(("all", "all", np.ones(len(df), dtype=bool)))
    # corridor_summary's rules: shrinking cast with astype(bool) (a missing value raises),
    # missing populations and change_pct skipped as pandas sum/median do.
    figures = group_figures(
        df, [m for *_, m in groups], missing_shrinking="error", change_column="pop_change_pct"
    )
    station_km = df["hsr_station_km"]
    rows = [
        {"grouping": grouping, "group": g, **fig,
         "mean_hsr_station_km": float(station_km[m].mean()) if fig["n_units"] else np.nan}
        for (grouping, g, m), fig in zip(groups, figures, strict=True)
    ]
    out = pd.DataFrame(rows, columns=list(SUMMARY_COLUMNS))
    return out.astype(SUMMARY_COLUMNS)
