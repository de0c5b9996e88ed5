"""Rail line geometry threaded through the real stations a line serves.

The approximate corridor file draws each line as straight segments between
its key stations (``railways_lines.csv`` ``途径站点``); such a segment can lie
tens of km from the track. :func:`thread_lines` rebuilds every line through the
real stations between each pair of consecutive key stations, in order, so that
the line's vertices are exact station coordinates (``geometry_source =
"threaded"``). :func:`threading_pools` chooses the stations a line may serve;
:func:`track_offset` measures how far a line lies from a reference track (the
OpenStreetMap ways of the Guixi extract).

Rule against zig-zags (:func:`thread_segment`), per key-station segment A-B
in a transverse Mercator centred on the line (metres):

1. candidates are the pool stations whose orthogonal projection on A-B falls
   strictly inside the segment, at least ``min_gap_km`` from A and from B, and
   whose lateral distance from A-B is at most ``max_lateral_km``;
2. they are ordered by their position along A-B (so the path never runs
   backwards along the segment);
3. repeatedly, the station with the largest detour ratio
   ``(|P_{i-1} P_i| + |P_i P_{i+1}|) / |P_{i-1} P_{i+1}| - 1`` against its two
   current neighbours is dropped while that ratio exceeds ``max_detour``
   (default 0.25: a station may lengthen the path between its neighbours by at
   most 25 %); stations closer than ``min_gap_km`` to the previous kept one are
   merged into it.

Which stations a line serves (:func:`threading_pools`): high-speed and fast
lines use the OSM train stations whose normalised name has at least one G/D/C
train a day in the station train counts (321 hub stations, about January
2021); conventional lines use every OSM ``train`` station (named or not), with
the tighter ``max_lateral_km_conventional``, because the count table lists hubs
only. Stations are matched to the counts by name (:func:`geo_pipeline.rail.station_key`).
"""

from __future__ import annotations

import functools
import logging
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely

from ._errors import InputError
from ._validate import check_frame
from .rail import _station_counts, station_key

__all__ = [
    "THREAD_DEFAULTS",
    "THREADED_NOTE",
    "membership_change",
    "threading_pools",
    "thread_segment",
    "thread_lines",
    "track_offset",
]

log = logging.getLogger(__name__)

#: Defaults of the threading rule (see the module notes).
THREAD_DEFAULTS: dict[str, float] = {
    "max_lateral_km": 30.0,
    "max_lateral_km_conventional": 10.0,
    "max_detour": 0.25,
    "min_gap_km": 2.0,
}

#: Said on every threaded line (``note`` column).
THREADED_NOTE = (
    "THREADED: key stations joined through the stations the line serves (G/D/C stations of the train "
    "counts for high-speed and fast lines, OSM train stations for conventional lines), by position along "
    "each key-station segment with a detour limit; still straight between stations, not the track."
)

_POOL_COLUMNS = ["station_id", "name", "hsr_trains_per_day", "trains_per_day"]


#: The operation ``Transformer.from_crs("EPSG:4326", <tmerc lon_0>, always_xy=True)`` finds in the
#: PROJ database, as pipeline text (only ``lon_0`` changes from line to line).
_TM_PIPELINE = ("+proj=pipeline +step +proj=unitconvert +xy_in=deg +xy_out=rad "
                "+step +proj=tmerc +lat_0=0 +lon_0={lon0} +k=1 +x_0=0 +y_0=0 +ellps=WGS84")


def _tm_from_crs(lon0: float) -> pyproj.Transformer:
    crs = pyproj.CRS.from_proj4(
        f"+proj=tmerc +lat_0=0 +lon_0={lon0} +k=1 +x_0=0 +y_0=0 +datum=WGS84 +units=m"
    )
    return pyproj.Transformer.from_crs("EPSG:4326", crs, always_xy=True)


@functools.cache
def _tm_pipeline_is_exact() -> bool:
    """Whether :data:`_TM_PIPELINE` is exactly the operation ``from_crs`` finds (this PROJ)."""
    return bool(_tm_from_crs(105.5).definition
                == pyproj.Transformer.from_pipeline(_TM_PIPELINE.format(lon0=105.5)).definition)


def _tm(lon0: float) -> pyproj.Transformer:
    """EPSG:4326 lon/lat -> transverse Mercator centred on ``lon0`` (metres).

    ``Transformer.from_crs`` searches the PROJ database on every call (about 4 ms
    CPU; :func:`thread_lines` makes one per line, 960 per run with two levels:
    4.3 s). Built from the same pipeline text it takes about 0.05 ms and gives
    bit-identical coordinates; the text is checked once per process against what
    ``from_crs`` finds, and ``from_crs`` is used when they differ.
    """
    if _tm_pipeline_is_exact():
        return pyproj.Transformer.from_pipeline(_TM_PIPELINE.format(lon0=lon0))
    return _tm_from_crs(lon0)


def threading_pools(
    osm_stations: gpd.GeoDataFrame, *, train_counts: pd.DataFrame | None = None, min_hsr_trains: int = 1
) -> dict[str, gpd.GeoDataFrame]:
    """Stations a line may be threaded through, by line class.

    Parameters
    ----------
    osm_stations : geopandas.GeoDataFrame
        Standard stations (:func:`geo_pipeline.rail.stations_from_points`) of
        kind ``train``, EPSG:4326.
    train_counts : pandas.DataFrame, optional
        ``derived_station_train_counts.csv`` (``station``, ``total``,
        ``hsr_GDC``). Without it the high-speed pool is empty.
    min_hsr_trains : int, default 1
        G/D/C trains a day that make a station serve high-speed and fast lines.

    Returns
    -------
    dict
        ``{"high-speed": pool, "fast": pool, "conventional": pool}``. The
        high-speed and fast pool holds the stations with at least
        ``min_hsr_trains`` G/D/C trains a day; the conventional pool every
        train station except those whose trains are all G/D/C. Each pool
        has ``hub`` (the station is in the train counts with at least one
        train: it may lie ``max_lateral_km`` from a segment, other stations
        only ``max_lateral_km_conventional``), ``station_id`` (``"name:<key>"`` for named stations, so that a
        station shared by two lines has one id, else ``"osm:<row>"``),
        ``name``, ``hsr_trains_per_day``, ``trains_per_day`` and Point geometry.
        Named duplicates keep their first point.
    """
    check_frame(osm_stations, name="OSM stations", columns=["name"], geometry=True).raise_if_any()
    st = osm_stations.reset_index(drop=True)
    keys = st["name"].map(station_key)
    ids = np.where(keys != "", "name:" + keys, "osm:" + pd.Series(np.arange(len(st)), dtype=str))
    pool = gpd.GeoDataFrame(
        {"station_id": ids, "name": st["name"].fillna("").astype(str).to_numpy(), "_key": keys.to_numpy()},
        geometry=st.geometry.to_numpy(),
        crs=st.crs,
    )
    pool = pool.loc[~pool["station_id"].duplicated()].reset_index(drop=True)
    if train_counts is not None and not train_counts.empty:
        counts = _station_counts(train_counts).reindex(pool["_key"].to_numpy())
        pool["hsr_trains_per_day"] = counts["hsr_trains_per_day"].to_numpy(dtype=float)
        pool["trains_per_day"] = counts["trains_per_day"].to_numpy(dtype=float)
    else:
        pool["hsr_trains_per_day"] = np.nan
        pool["trains_per_day"] = np.nan
    hsr = pool["hsr_trains_per_day"].fillna(0)
    total = pool["trains_per_day"].fillna(0)
    pool["hub"] = total > 0
    pool = pool[[*_POOL_COLUMNS, "hub", pool.geometry.name]]
    hubs = pool.loc[hsr >= min_hsr_trains].reset_index(drop=True)
    conventional = pool.loc[~((total > 0) & (hsr >= total))].reset_index(drop=True)
    log.info(
        "threading pools: %d G/D/C stations (high-speed, fast lines); %d train stations, %d of them in the "
        "counts (conventional lines; %d stations with only G/D/C trains left out)",
        len(hubs), len(conventional), int(conventional["hub"].sum()), len(pool) - len(conventional),
    )
    return {"high-speed": hubs, "fast": hubs, "conventional": conventional}


def thread_segment(
    a: np.ndarray,
    b: np.ndarray,
    candidates: np.ndarray,
    *,
    max_lateral: float | np.ndarray,
    max_detour: float,
    min_gap: float,
) -> np.ndarray:
    """Positions (into ``candidates``) of the stations threaded between A and B, in order.

    Parameters
    ----------
    a, b : numpy.ndarray
        Planar coordinates (metres) of the two key stations.
    candidates : numpy.ndarray
        ``(n, 2)`` planar coordinates of pool stations.
    max_lateral : float or numpy.ndarray
        Largest distance (metres) of a station from the line A-B, one value or
        one per candidate.
    max_detour : float
        Largest detour ratio a kept station may add (module notes, rule 3).
    min_gap : float
        Smallest distance (metres) from A, B and the previous kept station.

    Returns
    -------
    numpy.ndarray
        Integer positions into ``candidates``, ordered from A to B.

    Examples
    --------
    >>> import numpy as np
    >>> pts = np.array([[50.0, 3.0], [20.0, 40.0], [80.0, -1.0]])
    >>> thread_segment(np.array([0.0, 0.0]), np.array([100.0, 0.0]), pts,
    ...                max_lateral=10.0, max_detour=0.25, min_gap=2.0).tolist()
    [0, 2]
    """
    ab = b - a
    length = float(np.hypot(*ab))
    if length <= 0 or len(candidates) == 0:
        return np.array([], dtype=np.int64)
    u = ab / length
    rel = candidates - a
    along = rel @ u
    lateral = np.abs(rel[:, 0] * u[1] - rel[:, 1] * u[0])
    ok = (along >= min_gap) & (along <= length - min_gap) & (lateral <= max_lateral)
    ok &= np.hypot(*(candidates - b).T) >= min_gap
    pos = np.flatnonzero(ok)
    pos = pos[np.argsort(along[pos], kind="stable")]
    kept: list[int] = []
    last = a
    for p in pos:  # merge stations closer than min_gap to the previous one
        if np.hypot(*(candidates[p] - last)) >= min_gap:
            kept.append(int(p))
            last = candidates[p]
    while kept:
        path = np.vstack([a, candidates[kept], b])
        seg = np.hypot(*np.diff(path, axis=0).T)
        chord = np.hypot(*(path[2:] - path[:-2]).T)
        with np.errstate(divide="ignore", invalid="ignore"):
            detour = np.where(chord > 0, (seg[:-1] + seg[1:]) / chord - 1.0, np.inf)
        worst = int(np.argmax(detour))
        if detour[worst] <= max_detour:
            break
        del kept[worst]
    return np.asarray(kept, dtype=np.int64)


def _segment_names(row: pd.Series, n_vertices: int) -> list[str]:
    text = row.get("key_stations")
    names = [s for s in str(text).split("-") if s] if isinstance(text, str) else []
    unmatched = {s for s in str(row.get("unmatched") or "").split("|") if s and s != "nan"}
    names = [s for s in names if s not in unmatched]
    return names if len(names) == n_vertices else [""] * n_vertices


def thread_lines(
    lines: gpd.GeoDataFrame,
    pools: dict[str, gpd.GeoDataFrame],
    *,
    max_lateral_km: float = THREAD_DEFAULTS["max_lateral_km"],
    max_lateral_km_conventional: float = THREAD_DEFAULTS["max_lateral_km_conventional"],
    max_detour: float = THREAD_DEFAULTS["max_detour"],
    min_gap_km: float = THREAD_DEFAULTS["min_gap_km"],
) -> gpd.GeoDataFrame:
    """Rebuild lines through the stations they serve between their key stations.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Standard lines (:data:`geo_pipeline.rail.LINE_COLUMNS`) in EPSG:4326
        whose LineString vertices are the key stations (the corridor file), with
        ``class`` and ``key_stations``; a column ``unmatched`` (key stations
        without a position, ``|``-joined) is honoured when present.
    pools : dict
        Output of :func:`threading_pools`.
    max_lateral_km : float, default 30
        Largest lateral distance of a station from its key-station segment,
        high-speed and fast lines.
    max_lateral_km_conventional : float, default 10
        The same for conventional lines (their pool holds every train station).
    max_detour : float, default 0.25
        Detour ratio above which a station is dropped (module notes).
    min_gap_km : float, default 2
        Stations closer than this to a key station or to the previous station
        are not added.

    Returns
    -------
    geopandas.GeoDataFrame
        A new frame with the same rows and columns plus ``geometry_source``
        (``"threaded"``), ``stations`` (station names in order, ``-``-joined,
        unnamed OSM stations as ``?``), ``station_ids`` (``|``-joined, key
        stations as ``key:<name>``), ``n_stations`` and
        ``length_ratio`` (threaded over straight geodesic length). The geometry's
        vertices are exactly the stations' coordinates.

    Raises
    ------
    InputError
        Bad options or a CRS other than EPSG:4326.
    """
    check_frame(lines, name="rail lines", columns={"class": "string"}, geometry=True).raise_if_any()
    if lines.crs is None or not pyproj.CRS.from_user_input(lines.crs).equals("EPSG:4326"):
        raise InputError(f"thread_lines expects lines in EPSG:4326, found {lines.crs}; use to_crs first")
    if not (max_lateral_km > 0 and max_lateral_km_conventional > 0 and max_detour >= 0 and min_gap_km >= 0):
        raise InputError(
            "threading options must be positive (max_lateral_km, max_lateral_km_conventional) or >= 0 "
            f"(max_detour, min_gap_km); found {max_lateral_km}, {max_lateral_km_conventional}, "
            f"{max_detour}, {min_gap_km}"
        )
    geod = pyproj.Geod(ellps="WGS84")
    pool_xy = {k: shapely.get_coordinates(v.geometry.values) for k, v in pools.items()}
    out = lines.copy()
    geoms, names_out, ids_out, n_out, ratio = [], [], [], [], []
    for _, row in lines.iterrows():
        geom = row.geometry
        if geom is None or shapely.is_empty(geom) or geom.geom_type != "LineString":
            geoms.append(geom)
            names_out.append("")
            ids_out.append("")
            n_out.append(0)
            ratio.append(np.nan)
            continue
        cls = str(row["class"])
        pool = pools.get(cls, pools["conventional"])
        cand_xy = pool_xy.get(cls, pool_xy["conventional"])
        hub = pool["hub"].to_numpy(dtype=bool) if "hub" in pool.columns else np.ones(len(pool), dtype=bool)
        wide = max_lateral_km * 1000.0
        narrow = wide if cls in ("high-speed", "fast") else max_lateral_km_conventional * 1000.0
        key_xy = shapely.get_coordinates(geom)
        key_names = _segment_names(row, len(key_xy))
        lon0 = round(float((key_xy[:, 0].min() + key_xy[:, 0].max()) / 2), 6)
        fwd = _tm(lon0)
        kx, ky = fwd.transform(key_xy[:, 0], key_xy[:, 1])
        kp = np.column_stack([kx, ky])
        # only stations near the line's bounding box are projected (1 degree > 80 km here)
        minx, miny = key_xy.min(axis=0)
        maxx, maxy = key_xy.max(axis=0)
        pad = max(wide, narrow) / 80_000.0 + 0.05
        near = np.flatnonzero(
            (cand_xy[:, 0] >= minx - pad) & (cand_xy[:, 0] <= maxx + pad)
            & (cand_xy[:, 1] >= miny - pad) & (cand_xy[:, 1] <= maxy + pad)
        )
        px, py = fwd.transform(cand_xy[near, 0], cand_xy[near, 1])
        cp = np.column_stack([np.asarray(px, dtype=float), np.asarray(py, dtype=float)])
        lateral = np.where(hub[near], wide, narrow)
        key_ids = {station_key(n) for n in key_names if n}
        coords = [key_xy[0]]
        names = [key_names[0] or "?"]
        ids = [f"key:{key_names[0]}" if key_names[0] else "key:?"]
        used: set[str] = set()
        for i in range(len(kp) - 1):
            picked = thread_segment(
                kp[i], kp[i + 1], cp, max_lateral=lateral, max_detour=max_detour, min_gap=min_gap_km * 1000.0
            )
            for p in picked:
                j = int(near[p])
                sid = str(pool["station_id"].iloc[j])
                name = str(pool["name"].iloc[j])
                if sid in used or (name and station_key(name) in key_ids):
                    continue
                used.add(sid)
                coords.append(cand_xy[j])
                names.append(name or "?")
                ids.append(sid)
            coords.append(key_xy[i + 1])
            names.append(key_names[i + 1] or "?")
            ids.append(f"key:{key_names[i + 1]}" if key_names[i + 1] else "key:?")
        xy = np.asarray(coords)
        new = shapely.LineString(xy)
        geoms.append(new)
        names_out.append("-".join(names))
        ids_out.append("|".join(ids))
        n_out.append(len(xy))
        straight = geod.geometry_length(geom)
        ratio.append(geod.geometry_length(new) / straight if straight > 0 else np.nan)
    out["geometry_source"] = "threaded"
    out["stations"] = names_out
    out["station_ids"] = ids_out
    out["n_stations"] = np.asarray(n_out, dtype=np.int64)
    out["length_ratio"] = np.asarray(ratio, dtype=float)
    out = out.set_geometry(gpd.GeoSeries(geoms, index=out.index, crs=lines.crs))
    added = int(out["n_stations"].sum() - sum(len(shapely.get_coordinates(g)) for g in lines.geometry
                                               if g is not None and not shapely.is_empty(g)))
    log.info("threaded %d lines through %d intermediate stations; median length ratio %.3f",
             len(out), added, float(np.nanmedian(out["length_ratio"])) if len(out) else float("nan"))
    return out


def track_offset(
    lines: gpd.GeoDataFrame, tracks: gpd.GeoDataFrame, *, step_m: float = 100.0
) -> pd.DataFrame:
    """Distance from reference tracks to our lines, per track.

    Points are placed every ``step_m`` metres along each reference track (e.g.
    the OSM ways of a local extract, merged per line) and their distance to
    the matching line of ``lines`` is measured in a transverse Mercator
    centred on the track. Measuring from the track makes the figure
    independent of how far our line runs beyond the extract.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Our lines (``name`` or ``catalogue_line``), EPSG:4326.
    tracks : geopandas.GeoDataFrame
        Reference tracks with ``track`` (their name) and ``line`` (the name of
        the matching row of ``lines``), EPSG:4326.
    step_m : float, default 100
        Spacing of the sample points.

    Returns
    -------
    pandas.DataFrame
        Per track: ``track``, ``line``, ``n_points``, ``mean_m``, ``median_m``,
        ``max_m``, ``share_within_5km`` (share of points within 5 km), plus a
        row ``track = "all"`` pooling every point.
    """
    check_frame(tracks, name="reference tracks", columns=["track", "line"], geometry=True).raise_if_any()
    by_name = {str(n): g for n, g in zip(lines["name"], lines.geometry, strict=True)}
    rows: list[dict[str, Any]] = []
    pooled: list[np.ndarray] = []
    for track, line, geom in zip(tracks["track"], tracks["line"], tracks.geometry, strict=True):
        ours = by_name.get(str(line))
        if ours is None or geom is None:
            raise InputError(f"track_offset: no line named {line!r} for track {track!r}")
        lon0 = round(float(shapely.centroid(geom).x), 6)
        fwd = _tm(lon0)

        def proj(g: Any, f: pyproj.Transformer = fwd) -> Any:
            return shapely.transform(g, lambda xy: np.column_stack(f.transform(xy[:, 0], xy[:, 1])))

        t = proj(geom)
        o = proj(shapely.segmentize(ours, 0.01))
        parts = shapely.get_parts(t)
        pts = []
        for part in parts:
            n = max(int(part.length // step_m), 1)
            pts.append(shapely.line_interpolate_point(part, np.linspace(0, part.length, n + 1)))
        p = np.concatenate(pts)
        d = shapely.distance(p, o)
        pooled.append(d)
        rows.append(_offset_row(str(track), str(line), d))
    if pooled:
        rows.append(_offset_row("all", "", np.concatenate(pooled)))
    return pd.DataFrame(rows, columns=["track", "line", "n_points", "mean_m", "median_m", "max_m",
                                       "share_within_5km"])


def _offset_row(track: str, line: str, d: np.ndarray) -> dict[str, Any]:
    return {
        "track": track,
        "line": line,
        "n_points": len(d),
        "mean_m": float(np.mean(d)),
        "median_m": float(np.median(d)),
        "max_m": float(np.max(d)),
        "share_within_5km": float(np.mean(d <= 5000.0)),
    }


def membership_change(straight: pd.DataFrame, threaded: pd.DataFrame) -> pd.DataFrame:
    """How corridor membership of the units changes from straight to threaded lines.

    Parameters
    ----------
    straight, threaded : pandas.DataFrame
        :func:`geo_pipeline.infrastructure.unit_overlay` of the same units with
        the two geometries (``unit_id``, ``in_corridor``, ``corridor_share``,
        ``hsr_crosses``).

    Returns
    -------
    pandas.DataFrame
        One row per measure (``measure``, ``value``): units in corridors with
        each geometry, units entering and leaving, units crossed by a
        high-speed line with each geometry, and the mean and largest absolute
        change of ``corridor_share``.
    """
    cols = ["unit_id", "in_corridor", "corridor_share", "hsr_crosses"]
    a = pd.DataFrame(straight[cols]).assign(unit_id=lambda d: d["unit_id"].astype(str))
    b = pd.DataFrame(threaded[cols]).assign(unit_id=lambda d: d["unit_id"].astype(str))
    m = a.merge(b, on="unit_id", suffixes=("_s", "_t"), validate="one_to_one")
    if len(m) != len(a) or len(m) != len(b):
        raise InputError("membership_change: the two overlays must hold the same units")
    ins, int_ = m["in_corridor_s"].astype(bool), m["in_corridor_t"].astype(bool)
    d = (m["corridor_share_t"] - m["corridor_share_s"]).abs()
    rows = [
        ("units", len(m)),
        ("in_corridor_straight", int(ins.sum())),
        ("in_corridor_threaded", int(int_.sum())),
        ("entered", int((~ins & int_).sum())),
        ("left", int((ins & ~int_).sum())),
        ("crossed_straight", int(m["hsr_crosses_s"].astype(bool).sum())),
        ("crossed_threaded", int(m["hsr_crosses_t"].astype(bool).sum())),
        ("mean_abs_share_change", float(d.mean()) if len(m) else np.nan),
        ("max_abs_share_change", float(d.max()) if len(m) else np.nan),
    ]
    return pd.DataFrame(rows, columns=["measure", "value"]).astype({"measure": str, "value": "float64"})
