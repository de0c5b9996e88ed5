"""Dask helpers: raster windows and local-Moran permutations on a dask.distributed cluster.

When the work outgrows one process (township units, 100 m rasters for many
years), the raster windows and the conditional permutations of local Moran's I
run as tasks on a :class:`dask.distributed.Client`: a
:class:`~dask.distributed.LocalCluster` on this machine by default, or an
existing cluster given by its scheduler address. Results are identical to the
in-process path, bit for bit:

* raster: each window is one task that opens the raster itself and returns
  partial per-unit sums; the partials are added in window order on the client,
  the same order as in-process;
* permutations: the units are cut into fixed blocks of :data:`PERMUTATION_BLOCK`
  units; block ``b`` draws its random neighbour sets from
  ``numpy.random.SeedSequence(seed, spawn_key=(b,))``, so a unit's p-value
  depends only on the data, the seed and its block, never on how blocks are
  grouped into chunks or on the number of workers. The in-process path runs the
  very same block function.

``dask[distributed]`` is an optional dependency (``pip install geo_pipeline[dask]``).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from typing import Any, NamedTuple

import numba
import numpy as np
import scipy.sparse as sp

from ._errors import ConfigError, InputError

__all__ = [
    "PERMUTATION_BLOCK",
    "LocalPermutationResult",
    "dask_client",
    "map_window_partials",
    "permutation_pvalues_local",
]

log = logging.getLogger(__name__)

#: Units per seeding block of :func:`permutation_pvalues_local` (fixed: changing
#: it changes the random draws, hence the p-values).
PERMUTATION_BLOCK = 256


def _require_distributed() -> Any:
    try:
        import distributed
    except ImportError as exc:  # pragma: no cover - dask is installed in the test env
        raise ConfigError(
            "[raster] dask = true needs dask.distributed, which is not installed; "
            "install it with `pip install 'geo_pipeline[dask]'` or set dask = false"
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
                f"cannot reach the Dask scheduler {scheduler!r} ({exc}); check [raster] scheduler, "
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


# -- local Moran permutations ----------------------------------------------------


class LocalPermutationResult(NamedTuple):
    """Local Moran's I and its conditional-permutation pseudo p-values.

    Attributes
    ----------
    Is : numpy.ndarray
        Local Moran's I of each unit (as ``esda.Moran_Local.Is``).
    p_sim : numpy.ndarray
        Pseudo p-values; NaN for units without neighbours (islands).
    larger : numpy.ndarray
        Number of permutations at least as extreme (after folding for
        ``"directed"``); -1 for islands.
    permutations : int
        Number of permutations.
    """

    Is: np.ndarray
    p_sim: np.ndarray
    larger: np.ndarray
    permutations: int


def _as_sparse(W: Any, n: int, transformation: str | None) -> sp.csr_matrix:
    if sp.issparse(W):
        m = sp.csr_matrix(W, dtype=np.float64, copy=True)
    elif hasattr(W, "sparse"):  # libpysal W or Graph: read, never transform in place
        m = sp.csr_matrix(W.sparse, dtype=np.float64, copy=True)
    elif isinstance(W, np.ndarray) and W.ndim == 2:
        m = sp.csr_matrix(W.astype(np.float64))
    else:
        raise InputError(
            f"W must be a libpysal W or Graph, a scipy sparse matrix or a 2-D array, found {type(W).__name__}"
        )
    if m.shape != (n, n):
        raise InputError(f"W is {m.shape[0]} x {m.shape[1]} but y has {n} values; they must match")
    if transformation == "r":
        rs = np.asarray(m.sum(axis=1)).ravel()
        inv = np.divide(1.0, rs, out=np.zeros_like(rs), where=rs != 0)
        m = sp.csr_matrix(sp.diags(inv) @ m)
    elif transformation not in (None, "o", "O", "b", "B"):
        raise InputError(f"transformation must be 'r' or None, found {transformation!r}")
    m.sort_indices()
    return m


def _draw_neighbour_sets(rng: np.random.Generator, n_other: int, permutations: int, k: int) -> np.ndarray:
    """``permutations`` ordered samples of ``k`` distinct ids from ``range(n_other)``.

    Column by column: a column is redrawn in the rows where it repeats an
    earlier column (sequential sampling without replacement), so each row is a
    uniformly random ordered k-subset and its first ``j`` columns are a
    uniformly random j-subset, for every ``j <= k``.
    """
    if k == 0:
        return np.zeros((permutations, 0), dtype=np.int64)
    if 2 * k > n_other:
        keys = rng.random((permutations, n_other))
        return np.argsort(keys, axis=1, kind="stable")[:, :k].astype(np.int64)
    out = np.empty((permutations, k), dtype=np.int64)
    for j in range(k):
        col = rng.integers(0, n_other, size=permutations)
        if j:
            bad = (out[:, :j] == col[:, None]).any(axis=1)
            while bad.any():
                col[bad] = rng.integers(0, n_other, size=int(bad.sum()))
                bad = (out[:, :j] == col[:, None]).any(axis=1)
        out[:, j] = col
    return out


def _permutation_block(
    block: int,
    z: np.ndarray,
    w: sp.csr_matrix,
    Is: np.ndarray,
    scaling: float,
    permutations: int,
    seed: int,
    alternative: str,
) -> np.ndarray:
    """Count the permuted local I at least as extreme, for the units of one block."""
    n = len(z)
    lo, hi = block * PERMUTATION_BLOCK, min(n, (block + 1) * PERMUTATION_BLOCK)
    indptr, indices, data = w.indptr, w.indices, w.data
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(block,)))
    # neighbours other than the unit itself are permuted; a self-weight stays
    rows = np.repeat(np.arange(lo, hi), np.diff(indptr[lo : hi + 1]))
    off_diag = indices[indptr[lo] : indptr[hi]] != rows
    card = np.bincount(rows[off_diag] - lo, minlength=hi - lo)
    kmax = int(card.max()) if len(card) else 0
    rids = _draw_neighbour_sets(rng, n - 1, permutations, kmax)
    mode = {"directed": 0, "greater": 1, "lesser": 2}[alternative]
    return _count_extreme(lo, hi, z, indptr, indices, data.astype(np.float64), rids, Is, scaling, mode)


@numba.njit(cache=True, nogil=True)
def _count_extreme(  # pragma: no cover - compiled
    lo: int,
    hi: int,
    z: np.ndarray,
    indptr: np.ndarray,
    indices: np.ndarray,
    data: np.ndarray,
    rids: np.ndarray,
    Is: np.ndarray,
    scaling: float,
    mode: int,
) -> np.ndarray:
    """Count, for units ``lo:hi``, the permuted local I at least as extreme (-1: island)."""
    permutations = rids.shape[0]
    larger = np.empty(hi - lo, dtype=np.int64)
    for i in range(lo, hi):
        self_w = 0.0
        k = 0
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] == i:
                self_w += data[p]
            else:
                k += 1
        if k == 0:
            larger[i - lo] = -1
            continue
        wts = np.empty(k)
        j = 0
        for p in range(indptr[i], indptr[i + 1]):
            if indices[p] != i:
                wts[j] = data[p]
                j += 1
        count = 0
        for q in range(permutations):
            lag = self_w * z[i]
            for j in range(k):
                r = rids[q, j]
                if r >= i:  # ids over the n - 1 other units -> ids over all units
                    r += 1
                lag += wts[j] * z[r]
            sim = scaling * z[i] * lag
            if mode == 2:
                if sim <= Is[i]:
                    count += 1
            elif sim >= Is[i]:
                count += 1
        if mode == 0:  # directed: the more extreme tail (esda's default)
            count = min(count, permutations - count)
        larger[i - lo] = count
    return larger


def _permutation_chunk(blocks: Sequence[int], *args: Any) -> np.ndarray:
    parts = [_permutation_block(b, *args) for b in blocks]
    return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)


def permutation_pvalues_local(
    y: Any,
    W: Any,
    *,
    permutations: int = 999,
    seed: int = 20201101,
    client: Any | None = None,
    chunks: int | None = None,
    transformation: str | None = "r",
    alternative: str = "directed",
) -> LocalPermutationResult:
    r"""Local Moran's I with conditional-permutation p-values, in-process or on Dask.

    Parameters
    ----------
    y : array-like
        Values of the ``n`` units (no missing values).
    W : libpysal.weights.W, libpysal.graph.Graph, scipy sparse matrix or array
        Spatial weights aligned with ``y``. Not modified.
    permutations : int, default 999
        Conditional permutations per unit.
    seed : int, default 20201101
        Root seed; block ``b`` of :data:`PERMUTATION_BLOCK` units uses
        ``SeedSequence(seed, spawn_key=(b,))``.
    client : dask.distributed.Client, optional
        Run the chunks on Dask; ``None`` runs them in this process. The result
        is the same bit for bit.
    chunks : int, optional
        Number of tasks the blocks are grouped into (default: one per block
        in-process; 4 per worker on Dask). Does not change the result.
    transformation : {"r", None}, default "r"
        Row-standardise the weights (as esda does by default), or use as given.
    alternative : {"directed", "greater", "lesser"}, default "directed"
        ``"directed"`` is esda's default pseudo p-value: the permutations in
        the tail the observed value lies in.

    Returns
    -------
    LocalPermutationResult

    Raises
    ------
    InputError
        If ``y`` has missing values, W does not match ``y``, or options are bad.

    Notes
    -----
    With :math:`z_i = (y_i - \bar y)/s_y` (population standard deviation) and
    row-standardised weights :math:`w_{ij}`:

    .. math::

        I_i = (n - 1)\, z_i \sum_j w_{ij} z_j \Big/ \sum_k z_k^2 .

    Under conditional randomisation, :math:`z_i` stays at unit :math:`i` and
    its :math:`k_i` neighbour values are replaced by a random sample (without
    replacement) of the other :math:`n-1` values. As in esda, the units of a
    block share one matrix of random samples (unit :math:`i` uses its first
    :math:`k_i` columns). The pseudo p-value is :math:`(L_i + 1)/(P + 1)`
    where :math:`L_i` counts the permuted values at least as extreme.
    Islands (no neighbours) get NaN.
    """
    yv = np.asarray(y, dtype=np.float64).ravel()
    n = len(yv)
    if not np.all(np.isfinite(yv)):
        raise InputError(
            f"y has {int(np.sum(~np.isfinite(yv)))} missing or infinite value(s); drop or fill them"
        )
    if permutations < 1:
        raise InputError(f"permutations must be >= 1, found {permutations}")
    if alternative not in ("directed", "greater", "lesser"):
        raise InputError(f"alternative must be 'directed', 'greater' or 'lesser', found {alternative!r}")
    w = _as_sparse(W, n, transformation)
    if n < 3:
        raise InputError(f"local Moran's I needs at least 3 units, found {n}")
    z = yv - yv.mean()
    z /= yv.std()
    den = float((z * z).sum())
    Is = (n - 1) * z * (w @ z) / den
    scaling = (n - 1) / den
    n_blocks = -(-n // PERMUTATION_BLOCK)
    args = (z, w, Is, scaling, permutations, int(seed), alternative)
    if client is None:
        n_chunks = n_blocks if chunks is None else max(1, min(chunks, n_blocks))
        groups = np.array_split(np.arange(n_blocks), n_chunks)
        larger = np.concatenate([_permutation_chunk(list(g), *args) for g in groups])
    else:
        if chunks is None:
            workers = len(client.scheduler_info().get("workers", {})) or 1
            chunks = 4 * workers
        n_chunks = max(1, min(chunks, n_blocks))
        groups = np.array_split(np.arange(n_blocks), n_chunks)
        shared = client.scatter([z, w, Is], broadcast=True, hash=False)
        futures = [
            client.submit(_permutation_chunk, list(map(int, g)), *shared, *args[3:], pure=False)
            for g in groups
        ]
        try:
            larger = np.concatenate(client.gather(futures))
        finally:
            for f in [*futures, *shared]:
                f.release()
    p = np.where(larger >= 0, (larger + 1.0) / (permutations + 1.0), np.nan)
    return LocalPermutationResult(Is=Is, p_sim=p, larger=larger, permutations=permutations)
