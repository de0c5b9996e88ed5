"""Dask helpers: raster windows and permutation blocks on a dask.distributed cluster.

When the work outgrows one process (township units, 100 m rasters for many
years), the raster windows and the conditional permutations of the local
statistics (LISA, Gi*) run as tasks on a :class:`dask.distributed.Client`: a
:class:`~dask.distributed.LocalCluster` on this machine by default, or an
existing cluster given by its scheduler address (``[dask]`` settings). Results
are identical to the in-process path, bit for bit:

* raster: each window is one task that opens the raster itself and returns
  partial per-unit sums; the partials are added in window order on the client,
  the same order as in-process (:func:`map_window_partials`);
* permutations: the units are cut into fixed blocks of
  :data:`geo_pipeline.autocorrelation.PERMUTATION_BLOCK` units, each drawing
  from its own seed (:func:`geo_pipeline.autocorrelation.permutation_block`);
  :func:`map_blocks` runs that one kernel for every block, in this process or
  grouped into Dask tasks, and returns the blocks in order, so a unit's
  p-value never depends on the grouping or on the number of workers.

``dask[distributed]`` is an optional dependency (``pip install geo_pipeline[dask]``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ._errors import ConfigError

__all__ = [
    "dask_client",
    "map_blocks",
    "map_window_partials",
]

log = logging.getLogger(__name__)


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - dask is installed in the test env
        raise ConfigError(
            "dask = true ([raster] or [autocorrelation]) needs dask.distributed, which is not "
            "installed; install it with `pip install 'geo_pipeline[dask]'` or set dask = false"
        ) from exc
    return distributed


@contextlib.contextmanager
def dask_client(
    scheduler: str = "",
    *,
    n_workers: int = 2,
    threads_per_worker: int = 1,
    processes: bool = True,
) -> Iterator[Any]:
    """Open a :class:`dask.distributed.Client`; close it (and its cluster) on exit.

    Parameters
    ----------
    scheduler : str, default ""
        Address of a running scheduler (``"tcp://host:8786"``). Empty: start a
        :class:`~dask.distributed.LocalCluster` on this machine.
    n_workers, threads_per_worker, processes : int, int, bool
        LocalCluster layout (default: 2 worker processes of 1 thread; the
        numeric kernels hold the GIL, so processes scale and threads do not).

    Yields
    ------
    dask.distributed.Client

    Raises
    ------
    ConfigError
        If dask.distributed is not installed or the scheduler cannot be reached.
    """
    distributed = _require_distributed()
    if scheduler:
        try:
            client = distributed.Client(scheduler, timeout="20s")
        except OSError as exc:
            raise ConfigError(
                f"cannot reach the Dask scheduler {scheduler!r} ({exc}); check [dask] scheduler, "
                "or leave it empty to use a local cluster"
            ) from exc
        try:
            yield client
        finally:
            client.close()
        return
    cluster = distributed.LocalCluster(
        n_workers=n_workers,
        threads_per_worker=threads_per_worker,
        processes=processes,
        dashboard_address=None,  # no dashboard; its HTTP server (metrics) on a free port:
        scheduler_kwargs={"dashboard_address": ":0"},  # a second cluster must not clash on 8787
        silence_logs=logging.WARNING,
    )
    client = distributed.Client(cluster)
    try:
        yield client
    finally:
        client.close()
        cluster.close()


# -- raster windows ------------------------------------------------------------


def _window_task(grid: Any, window: Any, spans: Any, n_units: int) -> np.ndarray:
    from .raster import window_partials

    return window_partials(grid, window, spans, n_units)


def map_window_partials(
    client: Any, grid: Any, spans: Any, windows: Sequence[Any], *, n_units: int
) -> Iterator[np.ndarray]:
    """Run :func:`geo_pipeline.raster.window_partials` for every window on Dask.

    Each window is one task that receives the runs of unit cells of its rows
    (:meth:`geo_pipeline.raster.Spans.select`, small arrays) and opens the
    raster itself. Results are yielded in window order (the caller adds them
    in that order, as the in-process path does), and each one is released as
    soon as it is yielded, so memory on the client stays bounded.

    Parameters
    ----------
    client : dask.distributed.Client
        Where to run.
    grid : geo_pipeline.raster.RasterGrid
        The raster (its path must be readable from the workers).
    spans : geo_pipeline.raster.Spans
        The units rasterised once.
    windows : sequence of rasterio.windows.Window
        Windows in row-major order.
    n_units : int
        Number of units.

    Yields
    ------
    numpy.ndarray
        Partial sums of shape ``(5, n_units + 1)`` per window.
    """
    futures = [
        client.submit(_window_task, grid, win, spans.select(win), n_units, pure=False) for win in windows
    ]
    try:
        for fut in futures:
            part = fut.result()
            fut.release()
            yield part
    finally:
        for fut in futures:
            fut.release()


# -- blocks of independent work (permutations) ------------------------------------


def _run_blocks(func: Callable[..., Any], blocks: Sequence[int], *args: Any) -> list[Any]:
    return [func(int(b), *args) for b in blocks]


def map_blocks(
    func: Callable[..., Any],
    n_blocks: int,
    *args: Any,
    client: Any | None = None,
    chunks: int | None = None,
) -> list[Any]:
    """Return ``[func(b, *args) for b in range(n_blocks)]``, computed in-process or on Dask.

    Parameters
    ----------
    func : callable
        ``func(block, *args)``, importable by the workers (a module-level
        function) and deterministic: its result must depend only on its
        arguments (e.g. :func:`geo_pipeline.autocorrelation.permutation_block`).
    n_blocks : int
        Number of blocks.
    *args
        Arguments shared by all blocks; NumPy arrays are sent to every worker
        once (``client.scatter(..., broadcast=True)``).
    client : dask.distributed.Client, optional
        Where to run; ``None``: in this process, block after block.
    chunks : int, optional
        Dask tasks the blocks are grouped into (consecutive blocks; default 4
        per worker). Ignored in-process.

    Returns
    -------
    list
        One result per block, in block order, whatever ran where.
    """
    if client is None or n_blocks == 0:
        from ._progress import progress

        # long in-process runs (many permutations) log how far they are every 2 s
        name = getattr(func, "__name__", "blocks")
        return [func(int(b), *args) for b in progress(range(n_blocks), total=n_blocks, desc=name, logger=log)]
    if chunks is None:
        workers = len(client.scheduler_info().get("workers", {})) or 1
        chunks = 4 * workers
    groups = np.array_split(np.arange(n_blocks), max(1, min(int(chunks), n_blocks)))
    big = [i for i, a in enumerate(args) if isinstance(a, np.ndarray)]
    shared = client.scatter([args[i] for i in big], broadcast=True, hash=False) if big else []
    task_args = list(args)
    for i, fut in zip(big, shared, strict=True):
        task_args[i] = fut
    futures = [client.submit(_run_blocks, func, g.tolist(), *task_args, pure=False) for g in groups]
    try:
        results = client.gather(futures)
    finally:
        for f in [*futures, *shared]:
            f.release()
    return [part for group in results for part in group]
