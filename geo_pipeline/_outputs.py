"""One writer per output folder, and a stage's outputs replaced as one unit.

:func:`output_lock`
    an advisory lock (:func:`fcntl.flock`) on ``data_processed/.geo_pipeline.lock``,
    held by a stage command or ``geo-pipeline run`` for its whole duration. A
    second run in the same folder waits up to ``[paths] lock_timeout_s`` and
    then stops with :class:`~geo_pipeline._errors.BusyError` (exit 5). Taking
    the lock also proves the folder is writable before any work is done
    (:class:`~geo_pipeline._errors.StorageError`, exit 6, when it is not).
:func:`clean_leftovers`
    removes the hidden temporary files of killed runs (``.population.x1y2z3ab.gpkg``,
    its ``-journal``/``-wal``/``-shm``); only called while holding the lock, so
    never a file another run is writing.
:func:`output_batch`
    every :func:`geo_pipeline._io.atomic_path` inside it writes its temporary
    file as usual but defers the move into place; :meth:`OutputBatch.commit`
    first checks that *every* output may be written (``--overwrite``), then
    moves them all, the manifest last. If one is refused, none is replaced.

This module is light (standard library only): the CLI imports it at start.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from ._errors import BusyError, OutputExistsError, StorageError

__all__ = [
    "LOCK_NAME",
    "OutputBatch",
    "output_lock",
    "output_batch",
    "active_batch",
    "pending_source",
    "clean_leftovers",
    "storage_error",
]

log = logging.getLogger(__name__)

#: Name of the lock file in ``data_processed``.
LOCK_NAME = ".geo_pipeline.lock"

#: Temporary files of :func:`geo_pipeline._io.atomic_path`: ``.<stem>.<8 random chars><suffix>``
#: plus SQLite's side files.
_LEFTOVER = re.compile(
    r"^\.[^/]+\.[a-z0-9_]{8}\.(gpkg|csv|json|npz|png|pdf|tif|geojson)(-journal|-wal|-shm)?$"
)


def storage_error(exc: OSError, *, what: str = "") -> StorageError:
    """A :class:`StorageError` with one clear sentence for an OS error while writing."""
    name = _final_name(str(exc.filename or what or "output"))
    fixes = {
        errno.ENOSPC: "the disk is full; free some space and run again",
        errno.EDQUOT: "the disk quota is exceeded; free some space and run again",
        errno.EROFS: "the file system is read-only; set [paths] data_processed/maps to a writable folder",
        errno.EACCES: "permission denied; make the folder writable or set [paths] to a writable folder",
        errno.EPERM: "permission denied; make the folder writable or set [paths] to a writable folder",
    }
    fix = fixes.get(exc.errno or 0, "check the disk and the folder permissions")
    reason = exc.strerror or str(exc)
    return StorageError(f"{name}: cannot write ({reason}): {fix}")


_TEMP_NAME = re.compile(r"^\.(?P<stem>.+)\.[a-z0-9_]{8}(?P<suffix>\.[A-Za-z0-9]+)(-journal|-wal|-shm)?$")


def _final_name(path: str) -> str:
    """The output a temporary file stands for (``.x.ab12cd34.gpkg`` -> ``x.gpkg``), for messages."""
    p = Path(path)
    m = _TEMP_NAME.match(p.name)
    return str(p.with_name(m["stem"] + m["suffix"])) if m else path


def _probe_writable(folder: Path) -> None:
    """Create and remove a file in ``folder`` (os.access is no proof: root, read-only mounts)."""
    probe = folder / f".geo_pipeline.probe.{os.getpid()}"
    try:
        fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise storage_error(exc, what=str(folder)) from exc


def _holder(fd: int) -> str:
    try:
        text = os.pread(fd, 64, 0).decode("ascii", "replace").strip()
    except OSError:
        return ""
    return f" (pid {text})" if text else ""


@contextlib.contextmanager
def output_lock(folder: str | os.PathLike[str], *, timeout_s: float = 60.0) -> Iterator[Path]:
    """Hold the advisory lock of an output folder; wait up to ``timeout_s`` for another run.

    Parameters
    ----------
    folder : path-like
        The ``data_processed`` folder (created when missing).
    timeout_s : float, default 60
        How long to wait for a run holding the lock; 0: refuse at once.

    Raises
    ------
    BusyError
        Another run still holds the lock after ``timeout_s``.
    StorageError
        The folder cannot be created or written (read-only, disk full, permissions).
    """
    import fcntl

    path = Path(folder)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise storage_error(exc, what=str(path)) from exc
    try:
        fd = os.open(path / LOCK_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise storage_error(exc, what=str(path / LOCK_NAME)) from exc
    try:
        deadline = time.monotonic() + max(0.0, timeout_s)
        waited = False
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise BusyError(
                        f"{path} is in use by another geo-pipeline run{_holder(fd)} (lock {LOCK_NAME}); "
                        f"waited {timeout_s:g} s. Wait for it to finish, or raise [paths] lock_timeout_s"
                    ) from None
                if not waited:
                    log.warning("%s is in use by another run%s; waiting up to %g s",
                                path, _holder(fd), timeout_s)
                    waited = True
                time.sleep(0.1)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
        except OSError as exc:
            raise storage_error(exc, what=str(path / LOCK_NAME)) from exc
        _probe_writable(path)
        try:
            yield path
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def clean_leftovers(*folders: str | os.PathLike[str]) -> int:
    """Remove hidden temporaries of killed runs from ``folders``; call only while holding the lock.

    Returns
    -------
    int
        Number of files removed (each logged with its size).
    """
    removed = 0
    for folder in folders:
        p = Path(folder)
        if not p.is_dir():
            continue
        for f in sorted(p.iterdir()):
            if f.is_file() and _LEFTOVER.match(f.name):
                size = f.stat().st_size
                with contextlib.suppress(FileNotFoundError):
                    f.unlink()
                    removed += 1
                    log.warning("removed %s (%.1f MB), a temporary file left by an interrupted run",
                                f, size / 1e6)
    return removed


class OutputBatch:
    """Outputs written to temporary files, moved into place together by :meth:`commit`."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._pending: dict[Path, tuple[Path, bool]] = {}
        self._lock = threading.Lock()

    def add(self, tmp: Path, dest: Path, *, overwrite: bool) -> None:
        """Register a finished temporary file for ``dest``."""
        with self._lock:
            old = self._pending.pop(dest, None)
            if old is not None:
                with contextlib.suppress(FileNotFoundError):
                    old[0].unlink()
            self._pending[dest] = (tmp, overwrite)

    def source(self, dest: Path) -> Path:
        """The temporary file holding ``dest``'s new content, or ``dest`` itself."""
        with self._lock:
            entry = self._pending.get(Path(dest))
        return entry[0] if entry is not None else Path(dest)

    def commit(self) -> list[Path]:
        """Check every output may be written, then move all into place (manifest last).

        Raises
        ------
        OutputExistsError
            Listing every output that exists without ``--overwrite``; nothing is replaced.
        """
        with self._lock:
            items = sorted(self._pending.items(), key=lambda kv: kv[0].name == "manifest.json")
            refused = [str(d) for d, (_, ow) in items if d.exists() and not ow]
            if refused:
                raise OutputExistsError(
                    f"{', '.join(refused)} exist(s); pass --overwrite to replace. Nothing was replaced"
                )
            done = []
            for dest, (tmp, _) in items:
                try:
                    os.replace(tmp, dest)
                except OSError as exc:
                    raise storage_error(exc, what=str(dest)) from exc
                done.append(dest)
                del self._pending[dest]
            return done

    def discard(self) -> None:
        """Remove the temporary files not committed."""
        with self._lock:
            for tmp, _ in self._pending.values():
                for p in (tmp, Path(f"{tmp}-journal"), Path(f"{tmp}-wal"), Path(f"{tmp}-shm")):
                    with contextlib.suppress(FileNotFoundError):
                        p.unlink()
            self._pending.clear()


_ACTIVE: OutputBatch | None = None


def active_batch() -> OutputBatch | None:
    """The batch of the running stage in this process (None in forked children or outside a stage)."""
    batch = _ACTIVE
    return batch if batch is not None and batch.pid == os.getpid() else None


def pending_source(dest: str | os.PathLike[str]) -> Path:
    """Where ``dest``'s current content is: its pending temporary file, or ``dest``."""
    batch = active_batch()
    return batch.source(Path(dest)) if batch is not None else Path(dest)


@contextlib.contextmanager
def output_batch() -> Iterator[OutputBatch]:
    """Defer the outputs of the enclosed stage and commit them together when it succeeds."""
    global _ACTIVE
    batch = OutputBatch()
    previous, _ACTIVE = _ACTIVE, batch
    try:
        yield batch
        batch.commit()
    finally:
        _ACTIVE = previous
        batch.discard()
