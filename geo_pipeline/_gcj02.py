"""Vectorised GCJ-02 -> WGS84 conversion of coordinates and shapely geometries.

GCJ-02 ("Mars coordinates") is the obfuscated datum that Chinese web maps such as
Amap (Gaode) must use. It is WGS84 plus a smooth, position-dependent offset of
up to about 700 m: 420-680 m in eastern China (lon 110-122, lat 20-42), less
in the far west, pointing roughly east-south-east (computed from the forward
formula below). Its forward formula (WGS84 -> GCJ-02) is public; the inverse has
no closed form and is solved here by fixed-point iteration.

Why this module is hand-written
-------------------------------
``prcoords`` (used in the tests as the independent reference) converts one point
per Python call: 13-17 us per point, i.e. 90-115 s for the 6.8 million
vertices of the cnmaps boundaries. The numpy version below, working on
cache-sized chunks, converts them all in about 4 s (both measured on a shared
2-core machine), some 20 times faster. ``pyproj`` has no GCJ-02 definition:
the offset is a deliberate obfuscation, not a datum shift PROJ can express.

Points outside mainland China
-----------------------------
The offset is applied inside the rectangle that prcoords and eviltransform use
as their "in China" test (lon 72.004-137.8347, lat 0.8293-55.8271); points
outside it are returned unchanged. The rectangle contains all of the PRC
boundary data, so every vertex of the cnmaps Amap layers is shifted,
including Taiwan, Hong Kong, Macau and the Sansha (Xisha/Nansha) islands:

* Hong Kong and Macau: verified. In the raw Amap data they share 484 and 67
  vertices exactly with the neighbouring (GCJ-02) Shenzhen and Zhuhai polygons,
  so they are in the same coordinate system; after conversion 660 instead of
  620 OpenStreetMap (WGS84) stations in the Hong Kong bounding box fall inside
  the Hong Kong polygon.
* Taiwan and the Sansha islands: assumed, not verifiable with the data at
  hand (no land neighbour; the OSM stations near Taiwan's coast fall inside
  the polygon with or without conversion). They have no census data and are
  only drawn on maps, so a wrong assumption would misplace an outline by about
  500 m.

Users who know a layer is already WGS84 must not run it through this
conversion.

Notes
-----
With ``x = lon - 105`` and ``y = lat - 35`` (degrees), the forward offsets in
metres along the Krasovsky 1940 ellipsoid (a = 6378245 m, e^2 = 0.0066934216)
are

    dN = -100 + 2x + 3y + 0.2y^2 + 0.1xy + 0.2 sqrt|x|
         + 20/3 [2 sin 6 pi x + 2 sin 2 pi x + 2 sin pi y + 4 sin(pi y / 3)
                 + 16 sin(pi y / 12) + 32 sin(pi y / 30)]
    dE =  300 + x + 2y + 0.1x^2 + 0.1xy + 0.1 sqrt|x|
         + 20/3 [2 sin 6 pi x + 2 sin 2 pi x + 2 sin pi x + 4 sin(pi x / 3)
                 + 15 sin(pi x / 12) + 30 sin(pi x / 30)]

converted to degrees with the meridional and parallel arc lengths of one degree
at the WGS84 latitude. The inverse solves ``F(w) = g`` by ``w <- w - (F(w) - g)``
starting at ``w = g``. The map is a contraction: the Jacobian of the offset
is below 0.007 (measured over China), so each step shrinks the error about
150-fold. Iteration stops when the residual ``|F(w) - g|`` is below
``tol_deg`` (1e-7 degrees, about 1 cm); the error left after that last step is
about 0.007 times smaller still. Three to four steps are needed.
"""

from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import numpy.typing as npt
import shapely

from ._errors import InputError

__all__ = ["wgs84_to_gcj02", "gcj02_to_wgs84_xy", "gcj02_to_wgs84", "in_gcj02_area"]

_A = 6378245.0
_EE = 0.00669342162296594323
_LON_MIN, _LON_MAX = 72.004, 137.8347
_LAT_MIN, _LAT_MAX = 0.8293, 55.8271

FloatArray = npt.NDArray[np.float64]
_CHUNK = 1 << 14
#: Threads converting chunks (the pipeline's target machine has 2 cores).
_THREADS = min(2, os.cpu_count() or 1)


def in_gcj02_area(lon: npt.ArrayLike, lat: npt.ArrayLike) -> npt.NDArray[np.bool_]:
    """Return True where a point lies in the rectangle in which GCJ-02 applies an offset."""
    lon_a, lat_a = np.asarray(lon, dtype=float), np.asarray(lat, dtype=float)
    return (lon_a >= _LON_MIN) & (lon_a <= _LON_MAX) & (lat_a >= _LAT_MIN) & (lat_a <= _LAT_MAX)


def _offset_deg(lon: FloatArray, lat: FloatArray) -> tuple[FloatArray, FloatArray]:
    """Forward GCJ-02 offset (dlon, dlat) in degrees at WGS84 positions.

    ``sin(pi x)``, ``sin(2 pi x)``, ``sin(6 pi x)`` and ``sin(pi y)`` are built
    from ``sin/cos(pi x / 3)`` and ``sin(pi y / 3)`` with the double- and
    triple-angle identities: sines of large arguments are the slowest part of
    the formula, and the identities lose less than 1e-13 m.
    """
    x = lon - 105.0
    y = lat - 35.0
    pi = np.pi
    s3 = np.sin(x * (pi / 3.0))
    c3 = np.cos(x * (pi / 3.0))
    s1 = s3 * (3.0 - 4.0 * s3 * s3)  # sin(pi x)
    c1 = c3 * (4.0 * c3 * c3 - 3.0)  # cos(pi x)
    s2 = 2.0 * s1 * c1  # sin(2 pi x)
    s6 = s2 * (3.0 - 4.0 * s2 * s2)  # sin(6 pi x)
    t3 = np.sin(y * (pi / 3.0))
    t1 = t3 * (3.0 - 4.0 * t3 * t3)  # sin(pi y)
    common = 2.0 * s6 + 2.0 * s2
    d_north = (
        -100.0 + 2.0 * x + 3.0 * y + 0.2 * y * y + 0.1 * x * y + 0.2 * np.sqrt(np.abs(x))
        + (common + 2.0 * t1 + 4.0 * t3
           + 16.0 * np.sin(y * (pi / 12.0)) + 32.0 * np.sin(y * (pi / 30.0))) * (20.0 / 3.0)
    )
    d_east = (
        300.0 + x + 2.0 * y + 0.1 * x * x + 0.1 * x * y + 0.1 * np.sqrt(np.abs(x))
        + (common + 2.0 * s1 + 4.0 * s3
           + 15.0 * np.sin(x * (pi / 12.0)) + 30.0 * np.sin(x * (pi / 30.0))) * (20.0 / 3.0)
    )
    phi = np.radians(lat)
    sin_phi = np.sin(phi)
    w = 1.0 - _EE * sin_phi * sin_phi
    m_per_deg_lat = (pi / 180.0) * _A * (1.0 - _EE) / (w * np.sqrt(w))
    m_per_deg_lon = (pi / 180.0) * _A * np.cos(phi) / np.sqrt(w)
    inside = in_gcj02_area(lon, lat)
    return np.where(inside, d_east / m_per_deg_lon, 0.0), np.where(inside, d_north / m_per_deg_lat, 0.0)


def wgs84_to_gcj02(lon: npt.ArrayLike, lat: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """Forward transform: WGS84 lon/lat (degrees) to GCJ-02.

    Parameters
    ----------
    lon, lat : array_like
        WGS84 longitudes and latitudes in degrees (same shape).

    Returns
    -------
    tuple of numpy.ndarray
        GCJ-02 longitudes and latitudes; points outside the GCJ-02 rectangle
        are returned unchanged.
    """
    lon_a = np.asarray(lon, dtype=float)
    lat_a = np.asarray(lat, dtype=float)
    dlon, dlat = _offset_deg(lon_a, lat_a)
    return lon_a + dlon, lat_a + dlat


def gcj02_to_wgs84_xy(
    lon: npt.ArrayLike, lat: npt.ArrayLike, *, tol_deg: float = 1e-7, max_iter: int = 20
) -> tuple[FloatArray, FloatArray]:
    """Inverse transform: GCJ-02 lon/lat (degrees) to WGS84, iterated to ``tol_deg``.

    Parameters
    ----------
    lon, lat : array_like
        GCJ-02 longitudes and latitudes in degrees (same shape).
    tol_deg : float, default 1e-7
        Stop when the largest residual ``|F(w) - g|`` is below this (degrees;
        1e-7 degrees is about 1 cm). The returned points are then more
        accurate still, because the last correction has been applied.
    max_iter : int, default 20
        Safety bound; the iteration normally stops after 3-4 steps.

    Returns
    -------
    tuple of numpy.ndarray
        WGS84 longitudes and latitudes.

    Raises
    ------
    InputError
        If the iteration has not converged after ``max_iter`` steps (a
        safeguard; never observed). NaN coordinates give NaN results.
    """
    g_lon = np.ascontiguousarray(lon, dtype=float).ravel()
    g_lat = np.ascontiguousarray(lat, dtype=float).ravel()
    shape = np.shape(lon)
    w_lon, w_lat = g_lon.copy(), g_lat.copy()

    def convert(start: int) -> None:
        sl = slice(start, start + _CHUNK)
        gx, gy = g_lon[sl], g_lat[sl]
        wx, wy = w_lon[sl], w_lat[sl]  # views: updated in place
        # Each point stops on its own residual, so its result never depends on
        # its neighbours in the chunk: equal input vertices (the closing vertex
        # of a ring) give bit-identical output and rings stay closed. Only the
        # points still active are computed: on the 6.8 M cnmaps vertices 2.5 %
        # need a fourth step, which the whole chunk used to take (measured in one
        # process, 3 repeats: 1.95-2.27 -> 1.82-2.08 s CPU; the same bits, tested
        # on every cnmaps vertex).
        idx: npt.NDArray[np.intp] | None = None  # None: every point of the chunk
        for _ in range(max_iter):
            if idx is None:
                cx, cy, tx, ty = wx, wy, gx, gy
            else:
                cx, cy, tx, ty = wx[idx], wy[idx], gx[idx], gy[idx]
            dx, dy = _offset_deg(cx, cy)
            rx = cx + dx - tx
            ry = cy + dy - ty
            if idx is None:
                wx -= rx
                wy -= ry
            else:
                wx[idx] = cx - rx
                wy[idx] = cy - ry
            still = (np.abs(rx) >= tol_deg) | (np.abs(ry) >= tol_deg)
            if not still.any():
                break
            idx = np.flatnonzero(still) if idx is None else idx[still]
        else:
            raise InputError(
                f"GCJ-02 -> WGS84 did not converge to {tol_deg} degrees in {max_iter} steps; "
                "raise max_iter or check the coordinates are lon/lat degrees"
            )

    # Chunks that fit in the CPU cache make each step about twice as fast as
    # whole-array numpy operations on millions of vertices. Chunks are
    # independent and numpy releases the GIL in its loops, so two threads
    # convert them side by side; the result is bit-identical to one thread.
    # Measured on the 6.8 million cnmaps vertices, 2-core machine with the
    # second core free: 3.5 s -> 2.0 s.
    starts = range(0, g_lon.size, _CHUNK)
    workers = min(_THREADS, len(starts))
    if workers > 1:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            for _ in pool.map(convert, starts):  # re-raises a worker's InputError
                pass
    else:
        for start in starts:
            convert(start)
    return w_lon.reshape(shape), w_lat.reshape(shape)


def gcj02_to_wgs84(geoms: npt.ArrayLike, *, tol_deg: float = 1e-7) -> npt.NDArray[np.object_]:
    """Convert every vertex of shapely geometries from GCJ-02 to WGS84.

    Parameters
    ----------
    geoms : array_like of shapely.Geometry
        Geometries with GCJ-02 lon/lat coordinates (e.g. ``gdf.geometry.values``).
    tol_deg : float, default 1e-7
        Convergence tolerance of the inverse iteration in degrees.

    Returns
    -------
    numpy.ndarray of shapely.Geometry
        New geometries (inputs are not modified). All vertices of all
        geometries are converted in one vectorised call of
        :func:`shapely.transform`. Conversion can make a few polygons with
        near-touching rings invalid; repair them with :func:`shapely.make_valid`.
    """
    arr = np.asarray(geoms, dtype=object)

    def _xy(coords: FloatArray) -> FloatArray:
        uniq, inverse = unique_points(coords)
        lon, lat = gcj02_to_wgs84_xy(uniq[:, 0], uniq[:, 1], tol_deg=tol_deg)
        return np.column_stack([lon, lat])[inverse]

    return shapely.transform(arr, _xy)


def unique_points(xy: FloatArray) -> tuple[FloatArray, npt.NDArray[np.intp]]:
    """The distinct points of an ``(n, 2)`` float64 array, compared bit for bit.

    Returns ``(uniq, inverse)`` with ``uniq[inverse]`` bit-identical to ``xy``
    (NaN, -0.0 and 0.0 are told apart by their bits, like equal floats are not
    merged across different bit patterns).

    Why: polygons of a tessellation share their vertices: a border between two
    counties is stored in both, and again in the prefecture and province
    polygons. Of the 6.8 million cnmaps vertices 2.16 million (32 %) are
    distinct. Each point's GCJ-02 inverse depends on its own bits only, so
    converting the distinct points and scattering the results back gives the
    same bits as converting every vertex (tested on all cnmaps vertices).
    pyarrow's hash on the 16 raw bytes per point is exact (no float compare,
    no collisions to check) and takes about 0.4 s for the 6.8 million
    (pandas.factorize on complex128: 0.77 s; a 64-bit mixed key with pandas
    plus the check for collisions: 0.6 s; numpy.unique: 0.6-0.7 s).
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    pts = np.ascontiguousarray(xy, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 2:
        raise ValueError(f"expected an (n, 2) array of points, found shape {pts.shape}")
    n = len(pts)
    if n == 0:
        return pts.copy(), np.zeros(0, dtype=np.intp)
    raw = pa.FixedSizeBinaryArray.from_buffers(pa.binary(16), n, [None, pa.py_buffer(pts)])
    encoded = pc.dictionary_encode(raw)
    dictionary = encoded.dictionary
    uniq = np.frombuffer(dictionary.buffers()[1], dtype=np.float64,
                         count=2 * len(dictionary), offset=16 * dictionary.offset).reshape(-1, 2)
    inverse = np.asarray(encoded.indices.to_numpy(zero_copy_only=False), dtype=np.intp)
    return uniq.copy(), inverse
