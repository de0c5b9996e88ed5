"""Spatial weights for the analysis units, with islands and island groups linked.

Three kinds of binary neighbour relations are built on a set of polygon units:

``"queen"`` (default)
    Queen contiguity: two units are neighbours when their boundaries share at
    least one vertex. Contiguity is topological, so lon/lat coordinates are fine.
``"knn"``
    The ``k`` nearest units by geodesic distance between equal-area centroids
    (asymmetric).
``"distance"``
    Every pair of units whose equal-area centroids are at most
    ``distance_km`` apart on the WGS84 ellipsoid (symmetric).

Units that are not connected to the rest (islands such as 长海县 or 南澳县, and
groups such as Hainan, Zhoushan or Xiamen island) are then joined by
:func:`link_components` to their nearest unit, unless that unit is more than
``max_link_km`` away (default :data:`MAX_LINK_KM`): such an island or group
stays isolated (libpysal's "islands") and is listed with the reason in
:attr:`UnitWeights.unlinked`. Added links are flagged and listed
(:attr:`UnitWeights.links`) so they can be inspected in QGIS.

Pure functions, no file I/O: the CLI caches a built :class:`UnitWeights` on disk
with :meth:`UnitWeights.to_arrays` / :meth:`UnitWeights.from_arrays` under a
name from :func:`weights_key`.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyproj
import shapely
from libpysal.graph import Graph
from scipy import sparse
from scipy.sparse.csgraph import connected_components
from scipy.spatial import cKDTree

from ._crs import equal_area_centroids
from ._errors import InputError
from ._validate import check_frame

__all__ = [
    "KINDS",
    "UnitWeights",
    "build_weights",
    "queen_pairs",
    "knn_pairs",
    "distance_pairs",
    "link_components",
    "equal_area_centroids",
    "weights_key",
    "MAX_LINK_KM",
]

log = logging.getLogger(__name__)

#: Kinds of weights :func:`build_weights` understands.
KINDS = ("queen", "knn", "distance")

#: Mean Earth radius (IUGG) in km, for the unit-sphere nearest-neighbour search.
EARTH_RADIUS_KM = 6371.0088

#: Bump when the cached array layout or the construction rules change.
FORMAT_VERSION = 2

#: Default longest link (km, geodesic between centroids) made to join an island or island group.
MAX_LINK_KM = 300.0

_GEOD = pyproj.Geod(ellps="WGS84")


# ---------------------------------------------------------------------------
# neighbour pairs
# ---------------------------------------------------------------------------
def _vertex_keys(coords: np.ndarray) -> tuple[np.ndarray, int]:
    """Sortable keys of the vertices: a hash of ``(x, y)`` in the high bits, the position in the low bits.

    ``coords`` is an ``(m, 2)`` float64 array in which ``-0.0`` was already
    made ``0.0``; equal vertices get equal high bits (a multiply-xor hash of
    the two bit patterns, whose top bits depend on every input bit).
    Returns the keys and the number of low bits.
    """
    m = len(coords)
    bits = max(1, int(m - 1).bit_length())
    v = coords.view(np.uint64)
    h = v[:, 0] * np.uint64(0x9E3779B97F4A7C15)
    h ^= v[:, 1]
    h *= np.uint64(0xBF58476D1CE4E5B9)
    h &= ~np.uint64((1 << bits) - 1)
    h |= np.arange(m, dtype=np.uint64)
    return h, bits


def queen_pairs(geometries: Sequence[Any] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Queen contiguity pairs: polygons sharing at least one vertex.

    Parameters
    ----------
    geometries : array-like of shapely geometries
        Polygons or multipolygons, in any CRS (coordinates are compared exactly).

    Returns
    -------
    i, j : numpy.ndarray of int64
        Positions of each unordered neighbour pair, ``i < j``, sorted.

    Notes
    -----
    This is the rule of :class:`libpysal.weights.Queen` and of
    ``libpysal.graph.Graph.build_contiguity(rook=False, strict=False)``: two
    polygons are neighbours when a vertex of one is exactly (bit for bit) a
    vertex of the other. Instead of a Python dictionary of vertices, equal
    vertices are brought together by one sort, and the polygons found at the
    same ``(x, y)`` are paired (vectorised over the offset within each group
    of equal vertices).

    The sort is a value sort of one ``uint64`` per vertex (:func:`_vertex_keys`):
    the high bits hold a hash of ``(x, y)``, the low bits the vertex
    position, so equal vertices are adjacent and in input order (hence by
    polygon). Every hash group is then checked exactly: a group holding
    different vertices (a hash collision; one in the real counties) is
    sorted again by ``(x, y)``, so the result never depends on the hash.
    Only the first entry of each polygon in a group of equal vertices is
    kept, so the pairing loop runs over distinct (vertex, polygon) entries.

    Why our own: on the 2,736 harmonised county units (4.1 million vertices)
    ``libpysal.weights.Queen.from_dataframe`` took 17 s and
    ``Graph.build_contiguity`` 20 s, with identical neighbour sets (7,824
    pairs; pygeoda's queen weights and an STRtree ``intersects`` query give
    the same 7,824). Why the hash sort: a ``numpy.lexsort`` of all vertices
    by ``(x, y)`` (this function until Dec 2026) took 0.74-0.84 s CPU for
    the 2,736 counties and 0.26 s for the prefectures, this version
    0.25-0.35 and 0.10 s (ratios 0.34-0.42 and 0.38-0.41, alternated, 3-5
    runs each in 3 sessions): AVX-512/AVX2 value sorts are several times
    faster than ``lexsort``/``argsort``, and the gathers are of int32.
    ``tests/test_weights.py`` checks the pairs against that ``lexsort``
    version on the real counties and prefectures and with forced hash
    collisions, and the identity against libpysal on
    synthetic shapes (corner touches, holes, multipolygons, T-junctions) and
    on the real county boundaries.
    """
    geoms = np.asarray(geometries, dtype=object)
    n = len(geoms)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2:
        return empty, empty
    coords, owner = shapely.get_coordinates(geoms, return_index=True)
    m = len(coords)
    if m == 0:
        return empty, empty
    if not coords.all():
        coords += 0.0  # -0.0 -> 0.0 (they compare equal, and must hash equal)
    key, bits = _vertex_keys(coords)
    key.sort()
    pos = (key & np.uint64((1 << bits) - 1)).view(np.int64)
    z = np.take(coords.view(np.complex128).ravel(), pos)  # x + iy: == compares both exactly
    owner = np.take(owner.astype(np.int32) if n < 2**31 else owner, pos)  # int32: a cheaper gather
    same_hash = np.zeros(m, dtype=bool)
    same_hash[1:] = (key[1:] ^ key[:-1]) < np.uint64(1 << bits)
    same_xy = np.zeros(m, dtype=bool)
    same_xy[1:] = z[1:] == z[:-1]
    clash = np.flatnonzero(same_hash & ~same_xy)
    if len(clash):  # hash groups holding different vertices: sort each by (x, y), then position
        starts = np.r_[np.flatnonzero(~same_hash), m]
        k = np.unique(np.searchsorted(starts, clash, side="right") - 1)
        for lo, hi in zip(starts[k].tolist(), starts[k + 1].tolist(), strict=True):
            perm = np.lexsort((pos[lo:hi], z[lo:hi].imag, z[lo:hi].real))
            z[lo:hi], owner[lo:hi] = z[lo:hi][perm], owner[lo:hi][perm]
            same_xy[lo + 1 : hi] = z[lo + 1 : hi] == z[lo : hi - 1]
    # one entry per (vertex, polygon): a ring's closing vertex repeats its first one;
    # in a group of equal vertices the polygons are in increasing order (by position)
    fresh = ~same_xy
    fresh[1:] |= owner[1:] != owner[:-1]
    owner = owner[fresh]
    link = same_xy[fresh]  # True: same vertex as the previous entry
    # entries d apart are at the same vertex when the d links between them are all True
    pairs: list[np.ndarray] = []
    hit = link[1:]
    d = 1
    while hit.any():
        pairs.append(owner[:-d][hit].astype(np.int64) * n + owner[d:][hit])  # first < second
        d += 1
        hit = hit[:-1] & link[d:]
    if not pairs:
        return empty, empty
    pair = np.sort(np.concatenate(pairs).astype(np.int64))  # a sort, then drop repeats: 5x np.unique's time
    pair = pair[np.r_[True, pair[1:] != pair[:-1]]]
    return pair // n, pair % n


def _unit_vectors(lon: np.ndarray, lat: np.ndarray) -> np.ndarray:
    lam, phi = np.radians(lon), np.radians(lat)
    return np.column_stack((np.cos(phi) * np.cos(lam), np.cos(phi) * np.sin(lam), np.sin(phi)))


def _geodesic_km(lon1: np.ndarray, lat1: np.ndarray, lon2: np.ndarray, lat2: np.ndarray) -> np.ndarray:
    if len(lon1) == 0:
        return np.zeros(0)
    _, _, metres = _GEOD.inv(lon1, lat1, lon2, lat2)
    return np.asarray(metres, dtype=float) / 1000.0


def _chord(km: float) -> float:
    return float(2.0 * np.sin(min(np.pi, km / EARTH_RADIUS_KM) / 2.0))


def knn_pairs(lon: np.ndarray, lat: np.ndarray, *, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Directed ``k``-nearest-neighbour pairs by geodesic distance.

    Parameters
    ----------
    lon, lat : numpy.ndarray
        Points in degrees (WGS84).
    k : int
        Neighbours per point (capped at ``n - 1``).

    Returns
    -------
    focal, neighbor : numpy.ndarray of int64
        ``k`` rows per focal point, nearest first.

    Notes
    -----
    Candidates (``k + 8``) come from a KD-tree on 3-D unit vectors, whose
    chord length is monotone in great-circle distance, so the search is
    exact on the sphere; they are then ranked by the WGS84 geodesic distance
    (:class:`pyproj.Geod`), ties by position.
    """
    n = len(lon)
    empty = np.zeros(0, dtype=np.int64)
    k = min(int(k), n - 1)
    if n < 2 or k < 1:
        return empty, empty
    kq = min(n, k + 9)
    _, idx = cKDTree(_unit_vectors(lon, lat)).query(_unit_vectors(lon, lat), k=kq)
    focal = np.repeat(np.arange(n), kq)
    cand = idx.reshape(-1)
    km = _geodesic_km(lon[focal], lat[focal], lon[cand], lat[cand])
    km[cand == focal] = np.inf
    order = np.lexsort((cand, km, focal))
    chosen = order.reshape(n, kq)[:, :k].reshape(-1)
    return focal[chosen], cand[chosen]


def distance_pairs(lon: np.ndarray, lat: np.ndarray, *, distance_km: float) -> tuple[np.ndarray, np.ndarray]:
    """Unordered pairs of points at most ``distance_km`` apart (WGS84 geodesic).

    Parameters
    ----------
    lon, lat : numpy.ndarray
        Points in degrees (WGS84).
    distance_km : float
        Threshold on the ground, in km.

    Returns
    -------
    i, j : numpy.ndarray of int64
        Pair positions with ``i < j``, sorted.

    Notes
    -----
    Candidates come from a unit-sphere KD-tree with a radius 1 % larger than
    the threshold (the sphere and the ellipsoid differ by less than 0.6 %),
    then the geodesic distance on the WGS84 ellipsoid decides.
    """
    n = len(lon)
    empty = np.zeros(0, dtype=np.int64)
    if n < 2 or distance_km <= 0:
        return empty, empty
    tree = cKDTree(_unit_vectors(lon, lat))
    pairs = tree.query_pairs(_chord(distance_km * 1.01), output_type="ndarray")
    if len(pairs) == 0:
        return empty, empty
    i, j = pairs[:, 0].astype(np.int64), pairs[:, 1].astype(np.int64)
    km = _geodesic_km(lon[i], lat[i], lon[j], lat[j])
    ok = km <= distance_km
    i, j = np.minimum(i[ok], j[ok]), np.maximum(i[ok], j[ok])
    order = np.lexsort((j, i))
    return i[order], j[order]


def link_components(
    n: int,
    focal: np.ndarray,
    neighbor: np.ndarray,
    lon: np.ndarray,
    lat: np.ndarray,
    *,
    link_k: int = 1,
    max_link_km: float | None = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Join disconnected components by links to their nearest units.

    Parameters
    ----------
    n : int
        Number of units.
    focal, neighbor : numpy.ndarray of int
        Existing (directed) neighbour pairs.
    lon, lat : numpy.ndarray
        Unit points (equal-area centroids) in degrees.
    link_k : int, default 1
        Links added per component and round.
    max_link_km : float, optional
        Longest link made, in km (WGS84 geodesic between the points); a
        component whose nearest outside unit is farther stays unlinked.
        None: no limit.

    Returns
    -------
    a, b : numpy.ndarray of int64
        Added unordered pairs (``a`` in the component being joined).
    rounds : numpy.ndarray of int64
        Round (1, 2, ...) in which each pair was added.

    Notes
    -----
    Components are the weakly connected components of the neighbour graph
    (:func:`scipy.sparse.csgraph.connected_components`); the largest is the
    main one. In each round every other component gets the ``link_k``
    shortest pairs (u, v) with u inside and v outside it, by great-circle
    distance between points (unit-sphere KD-tree). Pairs are added in both
    directions. Rounds repeat until one component is left, or until no
    candidate link is at most ``max_link_km`` long: two small components may
    first join each other (e.g. 西沙区 and 南沙区), so each round at least
    halves the number of components that can still be linked.
    """
    a_all: list[int] = []
    b_all: list[int] = []
    r_all: list[int] = []
    if n < 2:
        z = np.zeros(0, dtype=np.int64)
        return z, z, z
    xyz = _unit_vectors(lon, lat)
    f = np.asarray(focal, dtype=np.int64)
    g = np.asarray(neighbor, dtype=np.int64)
    existing = set(zip(np.minimum(f, g).tolist(), np.maximum(f, g).tolist(), strict=True))
    rnd = 0
    while True:
        labels = _components(n, f, g)
        ncomp = int(labels.max()) + 1
        if ncomp <= 1:
            break
        rnd += 1
        sizes = np.bincount(labels)
        main = int(np.argmax(sizes))
        new: list[tuple[int, int]] = []
        for c in range(ncomp):
            if c == main:
                continue
            members = np.flatnonzero(labels == c)
            others = np.flatnonzero(labels != c)
            kk = min(int(link_k), len(others))
            dist, idx = cKDTree(xyz[others]).query(xyz[members], k=kk)
            dist = np.asarray(dist).reshape(len(members), kk)
            idx = np.asarray(idx).reshape(len(members), kk)
            mem = np.repeat(members, kk)
            oth = others[idx.reshape(-1)]
            order = np.lexsort((oth, mem, dist.reshape(-1)))[:kk]
            if max_link_km is not None:
                km = _geodesic_km(lon[mem[order]], lat[mem[order]], lon[oth[order]], lat[oth[order]])
                order = order[km <= max_link_km]
            for o in order:
                u, v = int(mem[o]), int(oth[o])
                new.append((u, v))
        added = 0
        for u, v in new:
            key = (min(u, v), max(u, v))
            if key in existing:
                continue
            existing.add(key)
            a_all.append(u)
            b_all.append(v)
            r_all.append(rnd)
            added += 1
        if added == 0:  # every component left is farther than max_link_km from the others
            break
        f = np.r_[f, np.asarray(a_all[-added:]), np.asarray(b_all[-added:])]
        g = np.r_[g, np.asarray(b_all[-added:]), np.asarray(a_all[-added:])]
    as_int = np.int64
    return np.asarray(a_all, dtype=as_int), np.asarray(b_all, dtype=as_int), np.asarray(r_all, dtype=as_int)


def _components(n: int, focal: np.ndarray, neighbor: np.ndarray) -> np.ndarray:
    """Weak component labels, relabelled so 0 is the largest, then by first unit."""
    adj = sparse.coo_array((np.ones(len(focal)), (focal, neighbor)), shape=(n, n)).tocsr()
    _, labels = connected_components(adj, directed=True, connection="weak")
    sizes = np.bincount(labels)
    first = np.full(len(sizes), n)
    np.minimum.at(first, labels, np.arange(n))
    order = np.lexsort((first, -sizes))
    remap = np.empty_like(order)
    remap[order] = np.arange(len(order))
    return remap[labels]


# ---------------------------------------------------------------------------
# points
# ---------------------------------------------------------------------------
# ---------------------------------------------------------------------------
# the weights object
# ---------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)
class UnitWeights:
    """Binary neighbour relations between units, with the links added to join components.

    Build with :func:`build_weights`. Positions refer to :attr:`ids`.

    Attributes
    ----------
    ids : numpy.ndarray of str
        Unit ids, in the order of the input frame.
    focal, neighbor : numpy.ndarray of int64
        Directed neighbour pairs (symmetric kinds hold both directions).
    link : numpy.ndarray of bool
        True for pairs added by :func:`link_components`.
    lon, lat : numpy.ndarray
        Equal-area centroids (WGS84 degrees) used for distances and links.
    component : numpy.ndarray of int64
        Component of each unit before linking; 0 is the largest.
    kind : str
        ``"queen"``, ``"knn"`` or ``"distance"``.
    options : dict
        ``k``, ``distance_km``, ``link_k`` and ``max_link_km`` (None: no
        limit) used to build it.
    """

    ids: np.ndarray
    focal: np.ndarray
    neighbor: np.ndarray
    link: np.ndarray
    lon: np.ndarray
    lat: np.ndarray
    component: np.ndarray
    kind: str
    options: Mapping[str, Any] = field(default_factory=dict)
    #: :meth:`graph` and :attr:`unlinked`, computed on first use (the weights are immutable).
    _cache: dict[str, Any] = field(default_factory=dict, init=False, repr=False)

    # -- summaries ---------------------------------------------------------
    @property
    def n(self) -> int:
        """Number of units."""
        return len(self.ids)

    @property
    def n_links(self) -> int:
        """Number of added (undirected) links."""
        return int(self.link.sum()) // 2

    @property
    def cardinalities(self) -> np.ndarray:
        """Neighbours per unit (including added links)."""
        return np.bincount(self.focal, minlength=self.n)

    @property
    def linked(self) -> np.ndarray:
        """True for units that received an added link."""
        out = np.zeros(self.n, dtype=bool)
        out[self.focal[self.link]] = True
        return out

    @property
    def links(self) -> pd.DataFrame:
        """The added links, one row per pair.

        Columns ``unit_id`` (the unit in the component being joined),
        ``neighbor_id``, ``distance_km`` (WGS84 geodesic between centroids),
        ``lon``, ``lat``, ``neighbor_lon``, ``neighbor_lat``.
        """
        sel = np.flatnonzero(self.link)
        sel = sel[: len(sel) // 2]  # first half: one direction (see _assemble)
        a, b = self.focal[sel], self.neighbor[sel]
        return pd.DataFrame(
            {
                "unit_id": self.ids[a].astype(object),
                "neighbor_id": self.ids[b].astype(object),
                "distance_km": _geodesic_km(self.lon[a], self.lat[a], self.lon[b], self.lat[b]),
                "lon": self.lon[a],
                "lat": self.lat[a],
                "neighbor_lon": self.lon[b],
                "neighbor_lat": self.lat[b],
            }
        )

    @property
    def description(self) -> str:
        """One line saying how the weights were built."""
        o = self.options
        base = {
            "queen": "queen contiguity (shared vertex)",
            "knn": f"{o.get('k')} nearest neighbours (geodesic, equal-area centroids)",
            "distance": f"distance band {o.get('distance_km')} km (geodesic, equal-area centroids)",
        }[self.kind]
        ncomp = int(self.component.max()) + 1 if self.n else 0
        limit = self.max_link_km
        left = len(self.unlinked) if limit is not None and ncomp > 1 else 0
        return (
            f"{base}; {self.n} units, {(len(self.focal) - int(self.link.sum()))} directed pairs; "
            f"{ncomp} component(s) joined by {self.n_links} nearest-centroid link(s)"
            + (f" of at most {limit:g} km" if limit is not None else "")
            + (f", {left} left isolated (nearest unit farther)" if left else "")
        )

    @property
    def max_link_km(self) -> float | None:
        """Longest link allowed when joining components (None: no limit)."""
        value = self.options.get("max_link_km")
        return None if value is None else float(value)

    @property
    def unlinked(self) -> pd.DataFrame:
        """Islands and island groups left isolated because their nearest unit is too far.

        One row per component of the final weights (added links included)
        other than the largest, i.e. per island or group that
        :func:`link_components` did not join because its nearest outside unit
        is more than :attr:`max_link_km` away. Columns ``unit_id`` (the
        member nearest to the rest), ``n_units``, ``members`` (ids joined by
        ``+``), ``neighbor_id`` (the nearest unit outside), ``distance_km``
        (WGS84 geodesic between centroids), ``lon``, ``lat``,
        ``neighbor_lon``, ``neighbor_lat`` and ``reason``. Computed once per
        weights object (a copy is returned): :attr:`description` reads it too,
        once per variable in the autocorrelation stage (2.4 ms each for the
        counties, 8 times per level).
        """
        if "unlinked" not in self._cache:
            self._cache["unlinked"] = self._unlinked()
        return self._cache["unlinked"].copy()

    def _unlinked(self) -> pd.DataFrame:
        cols = [
            "unit_id",
            "n_units",
            "members",
            "neighbor_id",
            "distance_km",
            "lon",
            "lat",
            "neighbor_lon",
            "neighbor_lat",
            "reason",
        ]
        rows: list[dict[str, Any]] = []
        if self.n >= 2:
            labels = _components(self.n, self.focal, self.neighbor)
            xyz = _unit_vectors(self.lon, self.lat)
            for c in range(1, int(labels.max()) + 1):
                members = np.flatnonzero(labels == c)
                others = np.flatnonzero(labels != c)
                dist, idx = cKDTree(xyz[others]).query(xyz[members], k=1)
                best = int(np.lexsort((members, np.asarray(dist)))[0])
                u, v = int(members[best]), int(others[int(np.asarray(idx)[best])])
                km = float(_geodesic_km(self.lon[[u]], self.lat[[u]], self.lon[[v]], self.lat[[v]])[0])
                limit = self.max_link_km
                reason = (
                    f"nearest unit {self.ids[v]} is {km:,.0f} km away, "
                    f"beyond the {limit:g} km limit (max_island_link_km)"
                    if limit is not None
                    else "not linked"
                )
                rows.append(
                    {
                        "unit_id": str(self.ids[u]),
                        "n_units": len(members),
                        "members": "+".join(str(i) for i in self.ids[members]),
                        "neighbor_id": str(self.ids[v]),
                        "distance_km": km,
                        "lon": float(self.lon[u]),
                        "lat": float(self.lat[u]),
                        "neighbor_lon": float(self.lon[v]),
                        "neighbor_lat": float(self.lat[v]),
                        "reason": reason,
                    }
                )
        return pd.DataFrame(rows, columns=cols).astype({"n_units": "int64", "distance_km": "float64"})

    def neighbor_sets(self, *, links: bool = True) -> list[set[int]]:
        """Neighbour positions of every unit (optionally without added links)."""
        out: list[set[int]] = [set() for _ in range(self.n)]
        keep = np.ones(len(self.focal), dtype=bool) if links else ~self.link
        for f, g in zip(self.focal[keep].tolist(), self.neighbor[keep].tolist(), strict=True):
            out[f].add(g)
        return out

    # -- conversions -------------------------------------------------------
    def graph(self) -> Graph:
        """Binary :class:`libpysal.graph.Graph` with ids in the order of :attr:`ids`.

        Units without any neighbour are kept as zero-weight self-loops
        (libpysal's convention for isolates). Built once per weights object and
        then returned again (a libpysal Graph is not modified in place; its
        transforms are new graphs): the autocorrelation stage asks for it four
        times per variable, 12 times in all, and each build took 13 ms for the
        2,733 counties.
        """
        if "graph" in self._cache:
            return self._cache["graph"]
        n = self.n
        f, g = self.focal, self.neighbor
        w = np.ones(len(f))
        lonely = np.setdiff1d(np.arange(n), f)
        if len(lonely):
            f, g, w = np.r_[f, lonely], np.r_[g, lonely], np.r_[w, np.zeros(len(lonely))]
        order = np.lexsort((g, f))
        ids = self.ids.astype(object)
        graph = Graph.from_arrays(ids[f[order]], ids[g[order]], w[order])
        if n and not np.array_equal(np.asarray(graph.unique_ids, dtype=object), ids):
            raise RuntimeError("libpysal Graph reordered the unit ids")  # pragma: no cover
        self._cache["graph"] = graph
        return graph

    def subset(self, keep: np.ndarray) -> UnitWeights:
        """Weights restricted to some units, re-linked if that disconnects them.

        Parameters
        ----------
        keep : numpy.ndarray of bool
            One flag per unit (e.g. ``values.notna()``).

        Returns
        -------
        UnitWeights
            Pairs between kept units (added links included); components
            created by the removal are joined again by :func:`link_components`
            with the same ``link_k``.
        """
        keep = np.asarray(keep, dtype=bool)
        if len(keep) != self.n:
            raise InputError(f"subset: expected {self.n} flags, found {len(keep)}")
        if keep.all():
            return self
        pos = np.full(self.n, -1, dtype=np.int64)
        pos[keep] = np.arange(int(keep.sum()))
        ok = keep[self.focal] & keep[self.neighbor]
        return _assemble(
            ids=self.ids[keep],
            focal=pos[self.focal[ok]],
            neighbor=pos[self.neighbor[ok]],
            link=self.link[ok],
            lon=self.lon[keep],
            lat=self.lat[keep],
            kind=self.kind,
            options=self.options,
        )

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Plain arrays for caching (e.g. ``numpy.savez``); see :meth:`from_arrays`."""
        meta = {"format": FORMAT_VERSION, "kind": self.kind, "options": dict(self.options)}
        return {
            "ids": self.ids.astype(str),
            "focal": self.focal,
            "neighbor": self.neighbor,
            "link": self.link,
            "lon": self.lon,
            "lat": self.lat,
            "component": self.component,
            "meta": np.array(json.dumps(meta)),
        }

    @classmethod
    def from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> UnitWeights:
        """Rebuild weights saved with :meth:`to_arrays`.

        Raises
        ------
        InputError
            If arrays are missing or were written by another format version.
        """
        need = ("ids", "focal", "neighbor", "link", "lon", "lat", "component", "meta")
        missing = [k for k in need if k not in arrays]
        if missing:
            raise InputError(f"cached weights: missing arrays {missing}; delete the cache file to rebuild")
        meta = json.loads(str(arrays["meta"][()]))
        if meta.get("format") != FORMAT_VERSION:
            raise InputError(
                f"cached weights: format {meta.get('format')}, expected {FORMAT_VERSION}; "
                "delete the cache file to rebuild"
            )
        return cls(
            ids=np.asarray(arrays["ids"]).astype(object),
            focal=np.asarray(arrays["focal"], dtype=np.int64),
            neighbor=np.asarray(arrays["neighbor"], dtype=np.int64),
            link=np.asarray(arrays["link"], dtype=bool),
            lon=np.asarray(arrays["lon"], dtype=float),
            lat=np.asarray(arrays["lat"], dtype=float),
            component=np.asarray(arrays["component"], dtype=np.int64),
            kind=str(meta["kind"]),
            options=dict(meta["options"]),
        )


def _assemble(
    *,
    ids: np.ndarray,
    focal: np.ndarray,
    neighbor: np.ndarray,
    link: np.ndarray | None,
    lon: np.ndarray,
    lat: np.ndarray,
    kind: str,
    options: Mapping[str, Any],
) -> UnitWeights:
    """Link components and build the object (added links stored first a->b, then b->a)."""
    n = len(ids)
    focal = np.asarray(focal, dtype=np.int64)
    neighbor = np.asarray(neighbor, dtype=np.int64)
    old_link = np.zeros(len(focal), dtype=bool) if link is None else np.asarray(link, dtype=bool)
    # components of the neighbour relation itself (links kept from a larger set do not count)
    component = _components(n, focal[~old_link], neighbor[~old_link]) if n else np.zeros(0, dtype=np.int64)
    limit = options.get("max_link_km")
    a, b, _ = link_components(
        n,
        focal,
        neighbor,
        lon,
        lat,
        link_k=int(options.get("link_k", 1)),
        max_link_km=None if limit is None else float(limit),
    )
    # keep earlier links (after a subset) together with new ones: a->b half, then b->a half
    old_pairs = [(u, v) for u, v in zip(focal[old_link].tolist(), neighbor[old_link].tolist(), strict=True)]
    seen: set[tuple[int, int]] = set()
    la: list[int] = []
    lb: list[int] = []
    for u, v in old_pairs + list(zip(a.tolist(), b.tolist(), strict=True)):
        key = (min(u, v), max(u, v))
        if key in seen:
            continue
        seen.add(key)
        la.append(u)
        lb.append(v)
    base_f, base_g = focal[~old_link], neighbor[~old_link]
    la_arr, lb_arr = np.asarray(la, dtype=np.int64), np.asarray(lb, dtype=np.int64)
    return UnitWeights(
        ids=np.asarray(ids, dtype=object),
        focal=np.r_[base_f, la_arr, lb_arr],
        neighbor=np.r_[base_g, lb_arr, la_arr],
        link=np.r_[np.zeros(len(base_f), dtype=bool), np.ones(2 * len(la), dtype=bool)],
        lon=np.asarray(lon, dtype=float),
        lat=np.asarray(lat, dtype=float),
        component=component,
        kind=kind,
        options=dict(options),
    )


def build_weights(
    units: gpd.GeoDataFrame,
    *,
    kind: str = "queen",
    k: int = 6,
    distance_km: float = 150.0,
    link_k: int = 1,
    max_link_km: float | None = MAX_LINK_KM,
    id_column: str = "unit_id",
) -> UnitWeights:
    """Build binary spatial weights on polygon units and join their components.

    Parameters
    ----------
    units : geopandas.GeoDataFrame
        Polygon units with a CRS and a unique ``id_column``. Not modified.
    kind : {"queen", "knn", "distance"}, default "queen"
        Neighbour rule (see the module docstring).
    k : int, default 6
        Neighbours per unit for ``"knn"``.
    distance_km : float, default 150.0
        Threshold on the ground for ``"distance"``.
    link_k : int, default 1
        Links added per disconnected component and round (see
        :func:`link_components`).
    max_link_km : float or None, default 300
        Longest link made to join an island or island group (km, geodesic
        between centroids); farther ones stay isolated and are listed in
        :attr:`UnitWeights.unlinked`. None: no limit.
    id_column : str, default "unit_id"
        Column of unique unit ids.

    Returns
    -------
    UnitWeights
        Neighbour pairs in the order of ``units``; every unit has at least
        one neighbour when there are two units or more, except islands
        farther than ``max_link_km`` from any other unit.

    Raises
    ------
    InputError
        On a missing or duplicated id column, an unknown ``kind`` or bad
        ``k``/``distance_km``/``link_k``.
    CRSError, GeometryError
        On a missing CRS or missing, empty or invalid geometries.

    Notes
    -----
    Points for distances and links are area-weighted centroids
    (:func:`equal_area_centroids`). KNN and distance-band distances are WGS84
    geodesics (:func:`knn_pairs`, :func:`distance_pairs`).
    """
    problems = check_frame(
        units,
        name="units",
        columns={id_column: "string"},
        geometry=True,
        geom_types=("Polygon", "MultiPolygon"),
        unique=[id_column],
        not_null=[id_column],
    )
    if kind not in KINDS:
        problems.add(f"weights kind {kind!r} unknown; expected one of {list(KINDS)}")
    if int(k) < 1 or int(link_k) < 1:
        problems.add(f"k and link_k must be >= 1, found k={k}, link_k={link_k}")
    if not distance_km > 0:
        problems.add(f"distance_km must be > 0, found {distance_km}")
    if max_link_km is not None and not max_link_km > 0:
        problems.add(f"max_link_km must be > 0 (or None for no limit), found {max_link_km}")
    problems.raise_if_any()
    ids = units[id_column].astype(str).to_numpy(dtype=object)
    options = {
        "k": int(k),
        "distance_km": float(distance_km),
        "link_k": int(link_k),
        "max_link_km": None if max_link_km is None else float(max_link_km),
    }
    lon, lat = equal_area_centroids(units.geometry)
    if kind == "queen":
        i, j = queen_pairs(units.geometry.values)
        focal, neighbor = np.r_[i, j], np.r_[j, i]
    elif kind == "knn":
        focal, neighbor = knn_pairs(lon, lat, k=int(k))
    else:
        i, j = distance_pairs(lon, lat, distance_km=float(distance_km))
        focal, neighbor = np.r_[i, j], np.r_[j, i]
    order = np.lexsort((neighbor, focal))
    weights = _assemble(
        ids=ids,
        focal=focal[order],
        neighbor=neighbor[order],
        link=None,
        lon=lon,
        lat=lat,
        kind=kind,
        options=options,
    )
    log.debug("weights: %s", weights.description)
    return weights


def weights_key(
    units: gpd.GeoDataFrame,
    *,
    kind: str,
    k: int,
    distance_km: float,
    link_k: int,
    max_link_km: float | None = MAX_LINK_KM,
    id_column: str = "unit_id",
) -> str:
    """SHA-256 of unit ids, geometries (WKB), CRS and weight options.

    Two unit sets with the same key give identical weights, so the key names
    a cache file. Options that do not affect ``kind`` still enter the key
    (simple and safe).
    """
    h = hashlib.sha256()
    h.update(f"geo_pipeline.weights v{FORMAT_VERSION}\n".encode())
    opts = {
        "kind": kind,
        "k": int(k),
        "distance_km": float(distance_km),
        "link_k": int(link_k),
        "max_link_km": None if max_link_km is None else float(max_link_km),
    }
    h.update(json.dumps(opts, sort_keys=True).encode())
    h.update((units.crs.to_wkt() if units.crs is not None else "").encode())
    for uid in units[id_column].astype(str):
        h.update(uid.encode("utf-8") + b"\0")
    wkb = shapely.to_wkb(units.geometry.values, byte_order=1, include_srid=False)
    for blob in wkb:
        h.update(blob if blob is not None else b"")
    return h.hexdigest()
