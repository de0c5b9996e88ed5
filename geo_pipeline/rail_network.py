r"""Rail network graph and travel time from every unit to its nearest core.

Pure functions on the standard rail lines of :mod:`geo_pipeline.rail` whose
``station_ids`` list their stations in order (the threaded or straight lines
of :func:`geo_pipeline.rail_geometry.thread_lines`):

* :func:`build_network` - a :class:`networkx.DiGraph` of stations and line
  sections;
* :func:`core_access` - minutes from every unit to the nearest core;
* :func:`station_minutes` - minutes between two named stations (for checks);
* :func:`time_bands`, :func:`time_band_summary`, :func:`access_change_summary`.

Model
-----
Per line *l* and station *s* there are two nodes, arrival ``(l, s, "arr")``
and departure ``(l, s, "dep")``, and one station node ``s`` shared by every
line through the station. Edges (minutes):

* section ``(l, s, dep) -> (l, s', arr)`` between consecutive stations, both
  ways: :math:`60\, d_{ss'} / (v_l f)` with :math:`d` the geodesic length (km)
  of the section, :math:`v_l` the line's design speed (km/h; by class when
  unknown, :data:`DEFAULT_SPEED_KMH`) and *f* the ``speed_factor`` (default
  0.8) that stands for curves, acceleration and the track being longer than
  the straight sections;
* dwell ``(l, s, arr) -> (l, s, dep)``: ``dwell_min`` (default 2) at every
  intermediate stop passed through; stops are the key stations and the
  stations of the train counts (the threaded pools' ``hub`` stations), other
  stations are passed at speed (0 minutes);
* alight ``(l, s, arr) -> s``: 0; board ``s -> (l, s, dep)``:
  ``transfer_min`` (default 15), so changing lines at a shared station costs
  the transfer penalty, and riding through costs only the dwell.

Door to core, for a unit with representative point *u* (a point inside the
polygon) and cores *c* placed at their stations:

.. math:: T(u) = \min\Big(\min_{s \in S(u)} \big[a(u, s) + R(s)\big],\;
                          \min_c r(u, c)\Big)

where :math:`S(u)` are the stations within ``max(nearest station, access_radius_km)``
(50 km) of *u*,
:math:`a(u, s) = 60\, \delta\, d(u, s) / v_{road}` the road access time
(geodesic distance times the ``detour`` factor 1.3 at ``road_kmh`` 50 km/h),
:math:`R(s)` the shortest rail time from *s* to any core (multi-source
Dijkstra from the cores' stations, each core entering the network at the
stations within the same radius with its own road access time, no
boarding penalty), and :math:`r(u, c)` the road time straight to the core
(same detour and speed), so that a unit next to a core is not sent round by
rail. ``rail_route`` says which term won.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import geopandas as gpd
import networkx as nx
import numpy as np
import pandas as pd
import pyproj
import shapely

from ._errors import InputError
from ._groups import group_figures
from ._validate import check_frame
from .distance import band_summary
from .infrastructure import nearest_station_km
from .rail import station_key

__all__ = [
    "DEFAULT_SPEED_KMH",
    "NETWORK_DEFAULTS",
    "TIME_BREAKS_MIN",
    "UNIT_COLUMNS",
    "network_stations",
    "build_network",
    "station_minutes",
    "CoreSearch",
    "core_search",
    "core_access",
    "time_band_labels",
    "time_bands",
    "time_band_summary",
    "access_change_summary",
    "lines_open_before",
    "access_then_and_now",
    "REFERENCE_PAIRS",
    "REFERENCE_MARGIN",
    "reference_check",
]

log = logging.getLogger(__name__)

#: Design speed (km/h) of a line without one in the catalogue, by class.
DEFAULT_SPEED_KMH: dict[str, float] = {"high-speed": 250.0, "fast": 160.0, "conventional": 100.0}

#: Model parameters (see the module notes).
NETWORK_DEFAULTS: dict[str, float] = {
    "speed_factor": 0.8,
    "dwell_min": 2.0,
    "transfer_min": 15.0,
    "road_kmh": 50.0,
    "detour": 1.3,
    "access_radius_km": 50.0,
}

#: Upper edges (minutes) of the travel-time bands: < 60, 60-120, 120-180, 180+.
TIME_BREAKS_MIN: tuple[float, ...] = (60.0, 120.0, 180.0)

#: Columns of :func:`core_access` (besides ``unit_id``).
UNIT_COLUMNS: dict[str, str] = {
    "unit_id": "str",
    "rail_minutes_to_core": "float64",
    "rail_time_band": "str",
    "rail_core": "str",
    "rail_station": "str",
    "rail_access_minutes": "float64",
    "rail_route": "str",
}

_GEOD = pyproj.Geod(ellps="WGS84")


def _node_id(sid: str) -> str:
    """Station id in the graph: key stations (``key:<name>``) join named OSM stations (``name:<key>``)."""
    if sid.startswith("key:") and sid != "key:?":
        return "name:" + station_key(sid[4:])
    return sid


def network_stations(lines: gpd.GeoDataFrame) -> gpd.GeoDataFrame:
    """The stations of the lines' ``station_ids``, one row per station.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Lines with ``station_ids`` (``|``-joined, one per vertex) and
        ``stations`` (names, ``-``-joined), EPSG:4326.

    Returns
    -------
    geopandas.GeoDataFrame
        ``station_id`` (graph id), ``name``, ``n_lines`` and Point geometry
        (the first vertex seen for the station).
    """
    rows: dict[str, list[Any]] = {}
    for ids, names, geom in zip(lines["station_ids"], lines["stations"], lines.geometry, strict=True):
        if not isinstance(ids, str) or not ids or geom is None:
            continue
        xy = shapely.get_coordinates(geom)
        id_list = ids.split("|")
        name_list = str(names).split("-")
        if len(name_list) != len(id_list):
            name_list = [""] * len(id_list)
        seen: set[str] = set()
        for sid, name, (x, y) in zip(id_list, name_list, xy, strict=True):
            nid = _node_id(sid)
            if nid == "key:?":
                continue
            if nid not in rows:
                rows[nid] = [nid, "" if name == "?" else name, 0, x, y]
            if nid not in seen:
                rows[nid][2] += 1
                seen.add(nid)
    frame = pd.DataFrame(list(rows.values()), columns=["station_id", "name", "n_lines", "x", "y"])
    return gpd.GeoDataFrame(
        frame[["station_id", "name", "n_lines"]],
        geometry=gpd.points_from_xy(frame["x"], frame["y"]),
        crs=lines.crs,
    )


def _check_lines(lines: gpd.GeoDataFrame) -> None:
    check_frame(
        lines,
        name="rail lines",
        columns={"line_id": "any", "class": "string", "design_speed_kmh": "any", "station_ids": "any",
                 "stations": "any"},
        geometry=True,
    ).raise_if_any()
    if lines.crs is None or not pyproj.CRS.from_user_input(lines.crs).equals("EPSG:4326"):
        raise InputError(f"rail network: lines must be in EPSG:4326, found {lines.crs}")


def build_network(
    lines: gpd.GeoDataFrame,
    *,
    speed_factor: float = NETWORK_DEFAULTS["speed_factor"],
    dwell_min: float = NETWORK_DEFAULTS["dwell_min"],
    transfer_min: float = NETWORK_DEFAULTS["transfer_min"],
    default_speed_kmh: dict[str, float] | None = None,
    stops: set[str] | None = None,
) -> nx.DiGraph:
    """Directed graph of stations and line sections weighted in minutes.

    Parameters
    ----------
    lines : geopandas.GeoDataFrame
        Lines with ``line_id``, ``class``, ``design_speed_kmh``,
        ``station_ids`` and ``stations`` (see :func:`network_stations`), EPSG:4326.
    speed_factor : float, default 0.8
        Effective speed = design speed x this factor.
    dwell_min : float, default 2
        Minutes per intermediate stop passed through.
    transfer_min : float, default 15
        Minutes to board a line at a station (a change between lines).
    default_speed_kmh : dict, optional
        Speed by class for lines without a design speed
        (:data:`DEFAULT_SPEED_KMH`).
    stops : set of str, optional
        Station ids (as in ``station_ids``) where trains stop: the dwell
        applies there only; key stations (``key:<name>``) always count as
        stops. None: every station is a stop.

    Returns
    -------
    networkx.DiGraph
        Nodes: station ids (attributes ``kind = "station"``, ``name``) and
        ``(line_id, station_id, "arr"|"dep")``; edge attribute ``minutes``
        and ``kind`` (``section``, ``dwell``, ``alight``, ``board``).

    Raises
    ------
    InputError
        Missing columns, a CRS other than EPSG:4326, or non-positive options.
    """
    _check_lines(lines)
    if not (speed_factor > 0 and dwell_min >= 0 and transfer_min >= 0):
        raise InputError(
            f"rail network: speed_factor > 0, dwell_min >= 0 and transfer_min >= 0 required; found "
            f"{speed_factor}, {dwell_min}, {transfer_min}"
        )
    speeds = dict(DEFAULT_SPEED_KMH if default_speed_kmh is None else default_speed_kmh)
    g = nx.DiGraph()
    for lid, cls, v, ids, names, geom in zip(
        lines["line_id"].astype(str), lines["class"].astype(str), lines["design_speed_kmh"],
        lines["station_ids"], lines["stations"], lines.geometry, strict=True,
    ):
        if not isinstance(ids, str) or not ids or geom is None or shapely.is_empty(geom):
            continue
        fallback = speeds.get(cls, DEFAULT_SPEED_KMH["conventional"])
        speed = float(v) if pd.notna(v) and float(v) > 0 else fallback
        xy = shapely.get_coordinates(geom)
        raw_ids = ids.split("|")
        nodes = [_node_id(s) for s in raw_ids]
        name_list = str(names).split("-")
        if len(name_list) != len(nodes):
            name_list = [""] * len(nodes)
        if len(nodes) != len(xy):
            raise InputError(f"rail network: line {lid} has {len(nodes)} station ids for {len(xy)} vertices")
        _, _, dist = _GEOD.inv(xy[:-1, 0], xy[:-1, 1], xy[1:, 0], xy[1:, 1])
        minutes = 60.0 * np.asarray(dist, dtype=float) / 1000.0 / (speed * speed_factor)
        for k, (s, name) in enumerate(zip(nodes, name_list, strict=True)):
            if s == "key:?":
                s = nodes[k] = f"key:?:{lid}:{k}"
            if s not in g:
                g.add_node(s, kind="station", name="" if name == "?" else name)
            arr, dep = (lid, s, "arr"), (lid, s, "dep")
            stop = stops is None or raw_ids[k].startswith("key:") or raw_ids[k] in stops
            g.add_edge(arr, dep, minutes=float(dwell_min) if stop else 0.0, kind="dwell")
            g.add_edge(arr, s, minutes=0.0, kind="alight")
            g.add_edge(s, dep, minutes=float(transfer_min), kind="board")
        for k in range(len(nodes) - 1):
            a, b, m = nodes[k], nodes[k + 1], float(minutes[k])
            if a == b:
                continue
            for x, y in ((a, b), (b, a)):
                old = g.get_edge_data((lid, x, "dep"), (lid, y, "arr"))
                if old is None or m < old["minutes"]:
                    g.add_edge((lid, x, "dep"), (lid, y, "arr"), minutes=m, kind="section")
    log.debug("rail network: %d nodes, %d edges", g.number_of_nodes(), g.number_of_edges())
    return g


def _departures(g: nx.DiGraph, station: str) -> list[Any]:
    return [n for n in g.successors(station) if g.edges[station, n]["kind"] == "board"]


def station_minutes(g: nx.DiGraph, origin: str, destination: str) -> float:
    """Shortest rail minutes between two stations (by graph id or name), no boarding penalty at the origin.

    Parameters
    ----------
    g : networkx.DiGraph
        Output of :func:`build_network`.
    origin, destination : str
        Station ids (``name:<key>``) or names (matched with
        :func:`geo_pipeline.rail.station_key`).

    Returns
    -------
    float
        Minutes; ``inf`` when the stations are not connected.

    Raises
    ------
    InputError
        A station that is not in the network.
    """
    src, dst = (_station_node(g, s) for s in (origin, destination))
    if src == dst:
        return 0.0
    dist = nx.multi_source_dijkstra_path_length(g, _departures(g, src), weight="minutes")
    return float(dist.get(dst, np.inf))


def _station_node(g: nx.DiGraph, name: str) -> str:
    if name in g and g.nodes[name].get("kind") == "station":
        return name
    nid = "name:" + station_key(name)
    if nid in g:
        return nid
    raise InputError(f"rail network: station {name!r} is not on any line of the network")


def lines_open_before(lines: pd.DataFrame, year: int) -> pd.DataFrame:
    """The lines with a known ``open_year`` before ``year`` (strictly)."""
    y = pd.to_numeric(lines["open_year"], errors="coerce")
    return lines.loc[(y < year).fillna(False).to_numpy(dtype=bool)]


def _minutes_road(km: np.ndarray, *, road_kmh: float, detour: float) -> np.ndarray:
    return 60.0 * np.asarray(km, dtype=float) * detour / road_kmh


def _candidates(points_lon: np.ndarray, points_lat: np.ndarray, stations: gpd.GeoDataFrame, radius_km: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Stations within ``max(nearest, radius_km)`` of each point: (point index, station position, km)."""
    from scipy.spatial import cKDTree

    def vec(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
        lo, la = np.radians(lon), np.radians(lat)
        return np.column_stack([np.cos(la) * np.cos(lo), np.cos(la) * np.sin(lo), np.sin(la)])

    sxy = shapely.get_coordinates(stations.geometry.values)
    tree = cKDTree(vec(sxy[:, 0], sxy[:, 1]))
    pv = vec(points_lon, points_lat)
    d0, _ = tree.query(pv, k=1)
    # chord of radius_km on a 6,371 km sphere, widened by 1 % (ellipsoid vs sphere)
    r = np.maximum(d0, 2.0 * np.sin(radius_km / 6371.0 / 2.0)) * 1.01 + 1e-12
    found = tree.query_ball_point(pv, r=r)
    pi = np.concatenate([np.full(len(f), i, dtype=np.int64) for i, f in enumerate(found)])
    sj = np.concatenate([np.asarray(f, dtype=np.int64) for f in found])
    _, _, d = _GEOD.inv(points_lon[pi], points_lat[pi], sxy[sj, 0], sxy[sj, 1])
    km = np.asarray(d, dtype=float) / 1000.0
    # keep the stations within max(nearest geodesic, radius_km)
    nearest = pd.Series(km).groupby(pi).transform("min").to_numpy()
    keep = km <= np.maximum(nearest, radius_km) + 1e-9
    return pi[keep], sj[keep], km[keep]


def _check_access(units: gpd.GeoDataFrame, cores: gpd.GeoDataFrame, *, road_kmh: float, detour: float,
                  access_radius_km: float) -> None:
    """The input checks of :func:`core_access`."""
    p = check_frame(units, name="units", columns={"unit_id": "any"}, geometry=True, unique=["unit_id"])
    check_frame(cores, name="cores", columns={"name": "any"}, geometry=True, problems=p)
    if not (road_kmh > 0 and detour >= 1 and access_radius_km >= 0):
        p.add(f"road_kmh > 0, detour >= 1 and access_radius_km >= 0 required; found {road_kmh}, {detour}, "
              f"{access_radius_km}")
    p.raise_if_any()
    for what, frame in (("units", units), ("cores", cores)):
        if frame.crs is None or not pyproj.CRS.from_user_input(frame.crs).equals("EPSG:4326"):
            raise InputError(f"rail network: {what} must be in EPSG:4326, found {frame.crs}")
    if cores.empty:
        raise InputError("rail network: no cores; the distance stage's cores layer is empty")


@dataclass(frozen=True)
class CoreSearch:
    """The part of :func:`core_access` that does not depend on the units (:func:`core_search`)."""

    stations: gpd.GeoDataFrame  #: network stations in the graph
    minutes: dict[Any, float]  #: rail minutes from the nearest core to each node
    paths: dict[Any, list[Any]]  #: the shortest paths (from the cores' source node)
    reached_from: dict[Any, str]  #: the core each departure node is reached from


def core_search(
    lines: gpd.GeoDataFrame,
    cores: gpd.GeoDataFrame,
    *,
    speed_factor: float = NETWORK_DEFAULTS["speed_factor"],
    dwell_min: float = NETWORK_DEFAULTS["dwell_min"],
    transfer_min: float = NETWORK_DEFAULTS["transfer_min"],
    road_kmh: float = NETWORK_DEFAULTS["road_kmh"],
    detour: float = NETWORK_DEFAULTS["detour"],
    access_radius_km: float = NETWORK_DEFAULTS["access_radius_km"],
    stops: set[str] | None = None,
) -> CoreSearch:
    """Rail minutes from the cores to every station: the network and its multi-source Dijkstra.

    Each core reaches its stations by road (as units do, :func:`core_access`);
    the result depends on the lines, the cores and the options only, so the
    infrastructure stage makes it once for both unit levels (measured on the
    real data: 0.25 s CPU per level, for today's and the 2010 network).
    Parameters as for :func:`core_access`.
    """
    g = build_network(lines, speed_factor=speed_factor, dwell_min=dwell_min, transfer_min=transfer_min,
                      stops=stops)
    stations = network_stations(lines)
    stations = stations.loc[stations["station_id"].isin(set(g.nodes))].reset_index(drop=True)
    dist: dict[Any, float] = {}
    paths: dict[Any, list[Any]] = {}
    reached_from: dict[Any, str] = {}
    if not stations.empty:
        source = ("__cores__",)
        cxy = shapely.get_coordinates(cores.geometry.values)
        cnames = cores["name"].astype(str).to_numpy()
        ci, cj, ckm = _candidates(cxy[:, 0], cxy[:, 1], stations, access_radius_km)
        cmin = _minutes_road(ckm, road_kmh=road_kmh, detour=detour)
        sids = stations["station_id"].to_numpy()
        for c, j, w in zip(ci, cj, cmin, strict=True):
            sid = str(sids[j])
            for dep in [*_departures(g, sid), sid]:
                old = g.get_edge_data(source, dep)
                if old is None or w < old["minutes"]:
                    g.add_edge(source, dep, minutes=float(w), kind="core_access")
                    reached_from[dep] = cnames[c]
        dist, paths = nx.single_source_dijkstra(g, source, weight="minutes")
    return CoreSearch(stations=stations, minutes=dist, paths=paths, reached_from=reached_from)


def core_access(
    units: gpd.GeoDataFrame,
    lines: gpd.GeoDataFrame,
    cores: gpd.GeoDataFrame,
    *,
    speed_factor: float = NETWORK_DEFAULTS["speed_factor"],
    dwell_min: float = NETWORK_DEFAULTS["dwell_min"],
    transfer_min: float = NETWORK_DEFAULTS["transfer_min"],
    road_kmh: float = NETWORK_DEFAULTS["road_kmh"],
    detour: float = NETWORK_DEFAULTS["detour"],
    access_radius_km: float = NETWORK_DEFAULTS["access_radius_km"],
    breaks_min: Sequence[float] = TIME_BREAKS_MIN,
    stops: set[str] | None = None,
    search: CoreSearch | None = None,
) -> pd.DataFrame:
    """Door-to-core minutes of every unit by road and rail (module notes).

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Units with ``unit_id`` and polygon geometry, EPSG:4326 (any level).
    lines : geopandas.GeoDataFrame
        Lines as for :func:`build_network`.
    cores : geopandas.GeoDataFrame
        Core points with ``name``, EPSG:4326 (the ``cores`` layer of the
        distance stage).
    speed_factor, dwell_min, transfer_min : float
        As for :func:`build_network`.
    stops : set of str, optional
        As for :func:`build_network`.
    road_kmh : float, default 50
        Road speed of access trips.
    detour : float, default 1.3
        Road distance over geodesic distance.
    access_radius_km : float, default 50
        Stations tried around each unit and each core: all those within
        ``max(nearest station, access_radius_km)``.
    breaks_min : sequence of float, default (60, 120, 180)
        Upper edges of the time bands.
    search : CoreSearch, optional
        :func:`core_search` of the same ``lines``, ``cores`` and options, made
        once for several sets of units; made here when not given.

    Returns
    -------
    pandas.DataFrame
        :data:`UNIT_COLUMNS`, one row per unit in the order of ``units``.

    Raises
    ------
    InputError
        Missing columns, CRS other than EPSG:4326, no cores, bad options.
    """
    _check_access(units, cores, road_kmh=road_kmh, detour=detour, access_radius_km=access_radius_km)
    n = len(units)
    out = pd.DataFrame({"unit_id": units["unit_id"].astype(str).to_numpy()})
    if n == 0:
        return pd.DataFrame({c: pd.Series(dtype=t) for c, t in UNIT_COLUMNS.items()})
    rep = shapely.point_on_surface(units.geometry.values)
    ulon, ulat = shapely.get_x(rep), shapely.get_y(rep)
    cxy = shapely.get_coordinates(cores.geometry.values)
    cnames = cores["name"].astype(str).to_numpy()
    # road straight to the nearest core
    _, cidx = nearest_station_km(gpd.GeoSeries(rep, crs=units.crs), cores)
    _, _, dcore = _GEOD.inv(ulon, ulat, cxy[cidx, 0], cxy[cidx, 1])
    road = _minutes_road(np.asarray(dcore) / 1000.0, road_kmh=road_kmh, detour=detour)
    best = road.copy()
    core_of = cnames[cidx].astype(object)
    station_of = np.full(n, "", dtype=object)
    access_of = np.full(n, np.nan)
    route = np.full(n, "road", dtype=object)
    if search is None:
        search = core_search(lines, cores, speed_factor=speed_factor, dwell_min=dwell_min,
                             transfer_min=transfer_min, road_kmh=road_kmh, detour=detour,
                             access_radius_km=access_radius_km, stops=stops)
    stations = search.stations
    if not stations.empty:
        dist, paths, reached_from = search.minutes, search.paths, search.reached_from
        sids = stations["station_id"].to_numpy()
        snames = stations["name"].to_numpy()
        ui, uj, ukm = _candidates(ulon, ulat, stations, access_radius_km)
        umin = _minutes_road(ukm, road_kmh=road_kmh, detour=detour)
        rail_t = np.array([dist.get(sids[j], np.inf) for j in uj], dtype=float)
        total = umin + rail_t
        order = np.lexsort((total, ui))  # by unit, then time: the first row of each unit is its best
        first = order[np.r_[True, ui[order][1:] != ui[order][:-1]]]
        for k in first:
            i = int(ui[k])
            if total[k] < best[i]:
                s_id = sids[uj[k]]
                best[i] = total[k]
                core_of[i] = reached_from.get(paths[s_id][1], "")
                station_of[i] = snames[uj[k]] or s_id
                access_of[i] = umin[k]
                route[i] = "rail"
    out["rail_minutes_to_core"] = best
    out["rail_time_band"] = time_bands(best, breaks_min=breaks_min)
    out["rail_core"] = core_of.astype(str)
    out["rail_station"] = station_of.astype(str)
    out["rail_access_minutes"] = access_of
    out["rail_route"] = route.astype(str)
    log.info(
        "rail access (%d lines): %d units, median %.0f min door to core (%d by rail, %d by road alone)",
        len(lines), n, float(np.median(best)), int((route == "rail").sum()), int((route == "road").sum()),
    )
    return out.astype(UNIT_COLUMNS)


def time_band_labels(breaks_min: Sequence[float] = TIME_BREAKS_MIN) -> list[str]:
    """Labels ``["< 60 min", "60-120 min", "120-180 min", "180+ min"]`` of the time bands."""
    b = _check_breaks(breaks_min)
    edges = [0.0, *b.tolist()]
    middle = [f"{lo:g}-{hi:g} min" for lo, hi in zip(edges[1:-1], edges[2:], strict=True)]
    return [f"< {b[0]:g} min", *middle, f"{edges[-1]:g}+ min"]


def _check_breaks(breaks_min: Sequence[float]) -> np.ndarray:
    b = np.asarray(list(breaks_min), dtype=float)
    if b.size == 0 or not np.all(np.isfinite(b)) or np.any(b <= 0) or np.any(np.diff(b) <= 0):
        raise InputError(f"time bands: expected positive, increasing minutes such as [60, 120, 180], found "
                         f"{list(breaks_min)}")
    return b


def time_bands(minutes: np.ndarray | pd.Series, *, breaks_min: Sequence[float] = TIME_BREAKS_MIN
               ) -> np.ndarray:
    """Band label of each travel time; lower edges included (60.0 min is in ``"60-120 min"``)."""
    b = _check_breaks(breaks_min)
    m = np.asarray(minutes, dtype=float)
    if m.size and (not np.all(np.isfinite(m)) or np.any(m < 0)):
        raise InputError("time bands: travel times must be finite and non-negative")
    labels = np.asarray(time_band_labels(breaks_min), dtype=object)
    return labels[np.searchsorted(b, m, side="right")]


def time_band_summary(units: pd.DataFrame, *, breaks_min: Sequence[float] = TIME_BREAKS_MIN,
                      column: str = "rail_minutes_to_core") -> pd.DataFrame:
    """Shrinkage and net outflow per travel-time band, like the distance band summary.

    Parameters
    ----------
    units : pandas.DataFrame
        ``column`` joined to the population indicators (``pop_2010``,
        ``pop_2020``, ``change_pct``, ``shrinking``; optional ``hukou_2010``,
        ``net_outflow``).
    breaks_min : sequence of float, default (60, 120, 180)
        Band edges in minutes.
    column : str, default ``"rail_minutes_to_core"``
        Travel time to summarise.

    Returns
    -------
    pandas.DataFrame
        The columns of :func:`geo_pipeline.distance.band_summary` with ``band``
        in minutes and ``lower_min`` / ``upper_min`` instead of ``lower_km`` /
        ``upper_km``; a last row ``"all"``.
    """
    check_frame(units, name="units", columns={column: "numeric"}, not_null=[column]).raise_if_any()
    b = _check_breaks(breaks_min)
    frame = pd.DataFrame(units).assign(
        band_index=np.searchsorted(b, units[column].to_numpy(dtype=float), side="right").astype(np.int64))
    out = band_summary(frame, breaks_km=list(b))
    labels = [*time_band_labels(breaks_min), "all"]
    out["band"] = labels
    return out.rename(columns={"lower_km": "lower_min", "upper_km": "upper_min"})


#: Groups of :func:`access_change_summary`, by minutes saved from 2010 to 2020.
CHANGE_GROUPS: tuple[tuple[str, float, float], ...] = (
    ("saved 60+ min", 60.0, np.inf),
    ("saved 30-60 min", 30.0, 60.0),
    ("saved 1-30 min", 1.0, 30.0),
    ("under 1 min", -np.inf, 1.0),
)


def access_change_summary(units: pd.DataFrame) -> pd.DataFrame:
    """Population change by how much the door-to-core time fell from the 2010 to the 2020 network.

    Parameters
    ----------
    units : pandas.DataFrame
        ``rail_minutes_to_core``, ``rail_minutes_to_core_2010``, ``pop_2010``,
        ``pop_2020``, ``change_pct``, ``shrinking``.

    Returns
    -------
    pandas.DataFrame
        One row per group of :data:`CHANGE_GROUPS` and ``"all"``: ``group``,
        ``n_units``, ``n_shrinking``, ``shrinking_share``, ``pop_2010``,
        ``pop_2020``, ``pop_weighted_change_pct``, ``median_change_pct``,
        ``median_minutes_2010``, ``median_minutes_2020``, ``median_saved_min``.

    Notes
    -----
    ``saved = rail_minutes_to_core_2010 - rail_minutes_to_core``. Descriptive:
    the lines opened in the decade went where they went for reasons that also
    drive population.
    """
    check_frame(
        units, name="units",
        columns={"rail_minutes_to_core": "numeric", "rail_minutes_to_core_2010": "numeric",
                 "pop_2010": "numeric", "pop_2020": "numeric", "change_pct": "numeric", "shrinking": "any"},
    ).raise_if_any()
    saved = (units["rail_minutes_to_core_2010"] - units["rail_minutes_to_core"]).to_numpy(dtype=float)
    groups = [(g, (saved >= lo) & (saved < hi)) for g, lo, hi in CHANGE_GROUPS]
    groups.append(("all", np.ones(len(units), dtype=bool)))
    # Defaults of group_figures: missing shrinking counts as not shrinking, missing
    # populations and change_pct are skipped (pandas sum/median), as before.
    figures = group_figures(units, [m for _, m in groups])
    rows = []
    for (name, m), fig in zip(groups, figures, strict=True):
        d = units.loc[m]
        n = fig["n_units"]
        rows.append({
            "group": name,
            **fig,
            "median_minutes_2010": float(d["rail_minutes_to_core_2010"].median()) if n else np.nan,
            "median_minutes_2020": float(d["rail_minutes_to_core"].median()) if n else np.nan,
            "median_saved_min": float(np.median(saved[m])) if n else np.nan,
        })
    return pd.DataFrame(rows)


def access_then_and_now(
    units: gpd.GeoDataFrame,
    lines: gpd.GeoDataFrame,
    cores: gpd.GeoDataFrame,
    *,
    year: int = 2010,
    searches: dict[str, CoreSearch] | None = None,
    **options: Any,
) -> pd.DataFrame:
    """:func:`core_access` on the whole network and on the lines opened before ``year``.

    Parameters
    ----------
    units, lines, cores : geopandas.GeoDataFrame
        As for :func:`core_access`.
    year : int, default 2010
        Lines with ``open_year < year`` make the earlier network
        (:func:`lines_open_before`; lines without a year are left out of it).
    searches : dict, optional
        Holds the :func:`core_search` of both networks (keys ``"now"`` and
        ``"then"``): filled when empty, used when present. Pass the same dict
        for other units with the same ``lines``, ``cores``, ``year`` and options.
    **options
        Passed to :func:`core_access`.

    Returns
    -------
    pandas.DataFrame
        :data:`UNIT_COLUMNS` of the whole network plus
        ``rail_minutes_to_core_<year>``, ``rail_time_band_<year>`` and
        ``rail_minutes_saved`` (earlier minus now, >= 0).

    Notes
    -----
    The earlier network is part of the whole one, so every earlier route is
    still open: the current time is the smaller of the two searches. They
    can differ the other way only because a unit tries the stations within
    ``max(nearest, access_radius_km)``: a new station nearby can push an old
    far one out of that set; such units are counted in the log.
    """
    searches = {} if searches is None else searches
    search_keys = ("road_kmh", "detour", "access_radius_km", "speed_factor", "dwell_min", "transfer_min",
                   "stops")
    search_opts = {k: v for k, v in options.items() if k in search_keys}
    _check_access(units, cores, **{k: options.get(k, NETWORK_DEFAULTS[k])
                                   for k in ("road_kmh", "detour", "access_radius_km")})
    if "now" not in searches:
        searches["now"] = core_search(lines, cores, **search_opts)
    now = core_access(units, lines, cores, search=searches["now"], **options)
    old_lines = gpd.GeoDataFrame(lines_open_before(lines, year), geometry=lines.geometry.name, crs=lines.crs)
    if "then" not in searches:
        searches["then"] = core_search(old_lines, cores, **search_opts)
    then = core_access(units, old_lines, cores, search=searches["then"], **options)
    worse = then["rail_minutes_to_core"].to_numpy() < now["rail_minutes_to_core"].to_numpy() - 1e-9
    if worse.any():
        cols = [c for c in UNIT_COLUMNS if c != "unit_id"]
        now.loc[worse, cols] = then.loc[worse, cols].to_numpy()
    log.info("rail access %d network (%d of %d lines): %d units kept their earlier, faster route",
             year, len(old_lines), len(lines), int(worse.sum()))
    out = now.copy()
    out[f"rail_minutes_to_core_{year}"] = then["rail_minutes_to_core"].to_numpy()
    out[f"rail_time_band_{year}"] = then["rail_time_band"].to_numpy()
    out["rail_minutes_saved"] = (then["rail_minutes_to_core"] - out["rail_minutes_to_core"]).to_numpy()
    return out


#: Known station pairs and the fastest scheduled G train (minutes) they are checked against:
#: 北京南-上海虹桥 4 h 18 min (G1/G2 class, 2020 timetable), 武汉-广州南 3 h 50 min (fastest G on
#: 武广高铁, 2020). The model has one speed per line and a dwell at every stop, so the margin is wide.
REFERENCE_PAIRS: tuple[tuple[str, str, float, str], ...] = (
    ("北京南", "上海虹桥", 258.0, "fastest G train 4 h 18 min"),
    ("武汉", "广州南", 230.0, "fastest G train 3 h 50 min"),
)

#: Largest relative difference accepted between the network and a reference (``within_margin``).
REFERENCE_MARGIN = 0.25


def reference_check(
    g: nx.DiGraph,
    pairs: Sequence[tuple[str, str, float, str]] = REFERENCE_PAIRS,
    *,
    margin: float = REFERENCE_MARGIN,
) -> pd.DataFrame:
    """Network minutes between known station pairs against timetable minutes.

    Parameters
    ----------
    g : networkx.DiGraph
        Output of :func:`build_network`.
    pairs : sequence of (origin, destination, minutes, source)
        Default :data:`REFERENCE_PAIRS`.
    margin : float, default 0.25
        ``within_margin`` is ``|network / reference - 1| <= margin``.

    Returns
    -------
    pandas.DataFrame
        ``origin``, ``destination``, ``reference_min``, ``reference``,
        ``network_min`` (NaN when a station is not in the network), ``ratio``,
        ``margin``, ``within_margin``.
    """
    rows = []
    for o, d, ref, src in pairs:
        try:
            m = station_minutes(g, o, d)
        except InputError:
            m = np.nan
        m = np.nan if not np.isfinite(m) else m
        ratio = m / ref if np.isfinite(m) else np.nan
        rows.append({"origin": o, "destination": d, "reference_min": float(ref), "reference": src,
                     "network_min": m, "ratio": ratio, "margin": margin,
                     "within_margin": bool(np.isfinite(ratio) and abs(ratio - 1) <= margin)})
    out = pd.DataFrame(rows)
    for r in rows:
        log.info("network check %s-%s: %.0f min (timetable %.0f, ratio %.2f)", r["origin"], r["destination"],
                 r["network_min"], r["reference_min"], r["ratio"])
    return out
