"""Fetch the raw inputs into ``data_raw/`` with SHA-256 checks.

Every raw input is listed in the package registry ``geo_pipeline/data/registry.toml``
(path in ``data_raw``, SHA-256, source repository and commit, licence, how it
is obtained). For each file :func:`fetch_inputs`

1. keeps it when ``data_raw/<path>`` already has the expected SHA-256 (logged,
   nothing is copied);
2. otherwise copies it from a local **mirror** folder (same relative layout as
   ``data_raw``) when one is given, or
3. downloads it with :func:`pooch.retrieve` (``known_hash`` = the registry
   SHA-256) from ``<base_url>/<repo>/<commit>/<source_path>``, the raw GitHub
   file at a pinned commit. Files published in GBK are decoded and written as
   UTF-8, and the converted file is checked.

Every file is written to a temporary name in the destination folder, checked,
and only then moved into place with :func:`os.replace`, so ``data_raw`` never
holds a partial or unchecked file. This module does file and network I/O by
nature; it is the only stage that does so outside the CLI wrapper.
"""

from __future__ import annotations

import contextlib
import logging
import os
import posixpath
import shutil
import tempfile
import tomllib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Literal

import pandas as pd

from ._errors import ChecksumError, ConfigError, InputError, MissingInputError
from ._io import sha256
from ._progress import progress

__all__ = [
    "RegistryEntry",
    "load_registry",
    "fetch_inputs",
    "fetch_one",
    "verify_raw_file",
    "DEFAULT_BASE_URL",
    "REPORT_COLUMNS",
]

log = logging.getLogger(__name__)

#: Where raw GitHub files are served from; ``[fetch] base_url`` overrides it.
DEFAULT_BASE_URL = "https://raw.githubusercontent.com"
#: Columns of the table returned by :func:`fetch_inputs`.
REPORT_COLUMNS = ["path", "sha256", "action", "source", "method", "license"]

Method = Literal["download", "download-gbk", "mirror"]
Action = Literal["kept", "copied", "downloaded"]
_METHODS = ("download", "download-gbk", "mirror")


@dataclass(frozen=True)
class RegistryEntry:
    """One raw input of the registry.

    Attributes
    ----------
    path : path relative to ``data_raw`` (and to a mirror folder), POSIX style.
    sha256 : expected SHA-256 of the file as stored in ``data_raw``.
    method : ``"download"``, ``"download-gbk"`` (GBK text converted to UTF-8)
        or ``"mirror"`` (no public download).
    repo, commit, source_path : public GitHub source (empty for ``"mirror"``).
    license : licence of the file.
    note : what the file is, and anything special about its provenance.
    """

    path: str
    sha256: str
    method: Method
    repo: str = ""
    commit: str = ""
    source_path: str = ""
    license: str = ""
    note: str = ""

    def url(self, base_url: str = DEFAULT_BASE_URL) -> str:
        """Download URL of the published file, or ``""`` for mirror-only files."""
        if self.method == "mirror":
            return ""
        return f"{base_url.rstrip('/')}/{self.repo}/{self.commit}/{self.source_path}"


def load_registry(path: str | os.PathLike[str] | None = None) -> list[RegistryEntry]:
    """Read the registry of raw inputs.

    Parameters
    ----------
    path : path-like, optional
        A registry TOML file; default: the one shipped in the package
        (``geo_pipeline/data/registry.toml``).

    Returns
    -------
    list of RegistryEntry

    Raises
    ------
    InputError
        If an entry lacks a key, has an unknown method, a malformed SHA-256,
        or a downloadable entry lacks its source.
    """
    if path is None:
        text = (resources.files("geo_pipeline") / "data" / "registry.toml").read_text(encoding="utf-8")
        where = "geo_pipeline/data/registry.toml"
    else:
        text = Path(path).read_text(encoding="utf-8")
        where = str(path)
    data = tomllib.loads(text)
    entries: list[RegistryEntry] = []
    fields = set(RegistryEntry.__dataclass_fields__)
    for i, item in enumerate(data.get("file", [])):
        unknown = set(item) - fields
        missing = {"path", "sha256", "method"} - set(item)
        if unknown or missing:
            raise InputError(
                f"{where}: file entry {i}: unknown keys {sorted(unknown)}, missing {sorted(missing)}"
            )
        entry = RegistryEntry(**item)
        norm = posixpath.normpath(entry.path)
        if (not entry.path or entry.path.startswith(("/", "\\")) or "\\" in entry.path or ":" in entry.path
                or norm != entry.path or norm == ".." or norm.startswith("../")):
            raise InputError(
                f"{where}: file entry {i}: path {entry.path!r} must be a plain relative POSIX path inside "
                "data_raw (no '..', no absolute path, no drive)"
            )
        if entry.method not in _METHODS:
            raise InputError(
                f"{where}: {entry.path}: method must be one of {list(_METHODS)}, found {entry.method!r}"
            )
        if len(entry.sha256) != 64 or any(c not in "0123456789abcdef" for c in entry.sha256):
            raise InputError(
                f"{where}: {entry.path}: sha256 must be 64 lowercase hex digits, found {entry.sha256!r}"
            )
        if entry.method != "mirror" and not (entry.repo and entry.commit and entry.source_path):
            raise InputError(
                f"{where}: {entry.path}: method {entry.method!r} needs repo, commit and source_path"
            )
        entries.append(entry)
    return entries


def verify_raw_file(
    root: str | os.PathLike[str], rel: str | os.PathLike[str], *, expected: str | None
) -> Path:
    """Path of ``root/rel``, checked against the SHA-256 it had when fetch verified it.

    Stages call this for every raw input they read, so a file edited after
    fetch is never used silently. ``expected`` is the digest fetch recorded
    in the manifest (the registry's); None (no fetch recorded, e.g. your own
    tables put in data_raw by hand) skips the check. The digest is computed
    once per process and file version (:func:`geo_pipeline._io.sha256`). A
    missing file is left to the reader (which names the stage to run).

    Raises
    ------
    ChecksumError
        The file differs from what fetch verified (edited or damaged since).
    """
    path = Path(root) / rel
    if expected is not None and path.is_file():
        found = sha256(path)
        if found != expected:
            raise ChecksumError(
                f"{path}: SHA-256 mismatch: expected {expected} (verified by fetch, manifest.json), found "
                f"{found}; the file was changed after fetch. data_raw is never edited: run "
                "`geo-pipeline fetch --overwrite` to restore it"
            )
    return path


@contextlib.contextmanager
def _temp_next_to(dest: Path) -> Iterator[Path]:
    """Yield a temporary folder next to ``dest`` (same file system, so os.replace is atomic)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmpdir = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    try:
        yield tmpdir
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


def _check(path: Path, entry: RegistryEntry, *, what: str, fix: str) -> None:
    found = sha256(path)
    if found != entry.sha256:
        raise ChecksumError(
            f"{what} {entry.path}: SHA-256 mismatch: expected {entry.sha256}, found {found}. {fix}"
        )


@contextlib.contextmanager
def _quiet_pooch() -> Iterator[None]:
    """Keep pooch's own stderr logger to warnings while we log ourselves."""
    import pooch

    logger = pooch.get_logger()
    level = logger.level
    logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(level)


def _download(entry: RegistryEntry, tmpdir: Path, *, base_url: str, timeout_s: float) -> Path:
    import pooch
    import requests

    url = entry.url(base_url)
    known = None if entry.method == "download-gbk" else f"sha256:{entry.sha256}"
    downloader = pooch.HTTPDownloader(progressbar=False, timeout=timeout_s)
    try:
        with _quiet_pooch():
            got = Path(
                pooch.retrieve(url, known_hash=known, fname="download", path=tmpdir, downloader=downloader)
            )
    except ValueError as exc:  # pooch: hash mismatch
        raise ChecksumError(
            f"download of {entry.path} from {url}: {exc} Check the URL and the registry hash, "
            "or use a mirror folder (--mirror)."
        ) from exc
    except (requests.RequestException, OSError) as exc:
        raise MissingInputError(
            f"could not download {entry.path} from {url}: {exc}. Check the network, [fetch] base_url, "
            "or copy the inputs from a mirror folder with --mirror (or GEO_PIPELINE_MIRROR)."
        ) from exc
    if entry.method == "download-gbk":
        try:
            text = got.read_bytes().decode("gbk")
        except UnicodeDecodeError as exc:
            raise ChecksumError(
                f"download of {entry.path} from {url} is not GBK text as the registry says ({exc}); "
                "use a mirror folder (--mirror)."
            ) from exc
        converted = tmpdir / "converted"
        converted.write_bytes(text.encode("utf-8"))
        got = converted
    _check(got, entry, what=f"downloaded ({url})", fix="The source changed or the download is corrupt; "
           "use a mirror folder (--mirror) or update the registry after checking the file.")
    return got


def fetch_one(
    entry: RegistryEntry,
    dest_root: str | os.PathLike[str],
    *,
    mirror: str | os.PathLike[str] | None = None,
    overwrite: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    timeout_s: float = 60.0,
) -> tuple[Path, Action]:
    """Fetch one registry file into ``dest_root/<entry.path>``.

    Parameters
    ----------
    entry : RegistryEntry
        The file.
    dest_root : path-like
        The ``data_raw`` folder.
    mirror : path-like, optional
        Local mirror folder; when given, nothing is downloaded.
    overwrite : bool, default False
        Replace a file in ``dest_root`` whose checksum is wrong. A file with
        the right checksum is always kept.
    base_url : str
        Base of the download URLs.
    timeout_s : float
        Network timeout per request in seconds.

    Returns
    -------
    tuple of (pathlib.Path, str)
        Destination path and what was done: ``"kept"``, ``"copied"`` or
        ``"downloaded"``.

    Raises
    ------
    ChecksumError
        A copied, downloaded or existing file has the wrong SHA-256.
    MissingInputError
        The file is not in the mirror, cannot be downloaded, or is
        mirror-only and no mirror was given.
    """
    dest = Path(dest_root) / entry.path
    if dest.is_file():
        found = sha256(dest)
        if found == entry.sha256:
            log.info("%s: already in %s with the right SHA-256; kept", entry.path, dest_root)
            return dest, "kept"
        if not overwrite:
            raise ChecksumError(
                f"{dest}: SHA-256 mismatch: expected {entry.sha256}, found {found}. data_raw is never edited "
                "by hand; delete the file or rerun with --overwrite to fetch it again."
            )
        log.warning("%s: wrong SHA-256 (%s); fetching it again (--overwrite)", dest, found)
    with _temp_next_to(dest) as tmpdir:
        if mirror is not None:
            src = Path(mirror) / entry.path
            if not src.is_file():
                raise MissingInputError(
                    f"{entry.path} not found in the mirror folder {mirror} (expected {src}); "
                    "copy it there or fetch without a mirror to download it"
                    + (" (it has no public download)" if entry.method == "mirror" else "")
                )
            tmp = tmpdir / "copy"
            shutil.copyfile(src, tmp)
            fix = "Replace the mirror copy with the published file."
            _check(tmp, entry, what=f"mirror file {src} for", fix=fix)
            action: Action = "copied"
        elif entry.method == "mirror":
            raise MissingInputError(
                f"{entry.path} has no public download ({entry.note}); provide a mirror folder holding it "
                "with --mirror, [paths] mirror or GEO_PIPELINE_MIRROR"
            )
        else:
            tmp = _download(entry, tmpdir, base_url=base_url, timeout_s=timeout_s)
            action = "downloaded"
        os.replace(tmp, dest)
    log.info("%s: %s and verified (SHA-256 %s...)", entry.path, action, entry.sha256[:12])
    return dest, action


def fetch_inputs(
    dest_root: str | os.PathLike[str],
    *,
    mirror: str | os.PathLike[str] | None = None,
    offline: bool = False,
    overwrite: bool = False,
    base_url: str = DEFAULT_BASE_URL,
    timeout_s: float = 60.0,
    entries: Sequence[RegistryEntry] | None = None,
) -> pd.DataFrame:
    """Fetch every registry file into ``dest_root`` (``data_raw``).

    Parameters
    ----------
    dest_root : path-like
        The ``data_raw`` folder (created when missing).
    mirror : path-like, optional
        Local mirror folder with the same layout (``census/``, ``rail/``,
        ``osm/``); when given, files are copied from it and nothing is
        downloaded.
    offline : bool, default False
        Forbid downloads: a mirror is then required.
    overwrite : bool, default False
        Replace files in ``dest_root`` whose checksum is wrong.
    base_url : str
        Base of the download URLs (raw GitHub by default).
    timeout_s : float
        Network timeout per request in seconds.
    entries : sequence of RegistryEntry, optional
        Files to fetch; default: the whole package registry.

    Returns
    -------
    pandas.DataFrame
        One row per file with :data:`REPORT_COLUMNS` (``action`` is
        ``"kept"``, ``"copied"`` or ``"downloaded"``; ``source`` the mirror
        path or URL).

    Raises
    ------
    ConfigError
        ``offline`` is true and no mirror is given, or the mirror folder does
        not exist.
    ChecksumError, MissingInputError
        As :func:`fetch_one`. Mirror-only files that cannot be obtained are
        collected and reported together after all other files are fetched.
    """
    todo = list(load_registry() if entries is None else entries)
    if mirror is not None and not Path(mirror).is_dir():
        raise ConfigError(
            f"mirror folder {mirror} does not exist; fix --mirror, [paths] mirror or GEO_PIPELINE_MIRROR"
        )
    if offline and mirror is None:
        raise ConfigError(
            "[fetch] offline = true but no mirror folder is set: give one with --mirror, "
            "[paths] mirror or the GEO_PIPELINE_MIRROR environment variable, or set offline = false"
        )
    rows = []
    unavailable: list[str] = []
    for entry in progress(todo, total=len(todo), desc="fetching raw inputs", logger=log):
        try:
            path, action = fetch_one(
                entry, dest_root, mirror=mirror, overwrite=overwrite, base_url=base_url, timeout_s=timeout_s
            )
        except MissingInputError:
            if entry.method == "mirror" and mirror is None:
                unavailable.append(entry.path)
                continue
            raise
        if action == "copied" and mirror is not None:
            source = str(Path(mirror) / entry.path)
        elif action == "downloaded":
            source = entry.url(base_url)
        else:
            source = str(path)
        rows.append((entry.path, entry.sha256, action, source, entry.method, entry.license))
    if unavailable:
        raise MissingInputError(
            f"{len(unavailable)} input(s) have no public download and no mirror was given: "
            f"{', '.join(unavailable)}. The other files were fetched into {dest_root}. Copy these from a "
            "mirror folder with --mirror (or [paths] mirror / GEO_PIPELINE_MIRROR)."
        )
    return pd.DataFrame(rows, columns=REPORT_COLUMNS)
