"""Thread control for the engine's small-op-heavy parts.

The per-(layer, head, Δ) core SVDs are thousands of d_h×d_h SVDs. On free cores one and two
intra-op threads take the same time; on a shared machine two threads are many times slower
(they wait for each other). So :class:`~svfcheck.real.svd_cache.SVDCache` always computes them with
one intra-op thread — but on several cores at once through :func:`batched_svd`: the batch is
cut into one contiguous chunk per core and each chunk runs single-threaded in its own Python
thread (torch releases the GIL), so there is no per-matrix synchronisation to suffer from busy
cores, and the results are bit-identical to one call (each matrix's SVD is computed alone;
tested). :func:`batched_map` is the general form: each chunk's SVD runs together with its
per-matrix follow-up (sign convention, key-side factor) on the same worker, so that work is
spread over the cores too; with ``out=`` it feeds each chunk in small blocks and writes into
preallocated tables (no chunk-sized temporaries, whose fresh pages are a large part of the cost
of building a table). :func:`batched_jobs` runs several such jobs as one range cut per worker:
the cache computes the new cores of all layers of a decomposition in one run, each block
writing its entries (and their converted copies and basis-control rows) straight into the
tables, so that a prompt needing a few new cores per layer still uses every core. The
decomposition proper is a few GEMMs and compiled per-pair loops (which release the GIL) per
layer: :func:`parallel_map` runs its layers side by side, one thread each (faster than one
stream on several intra-op threads), and :func:`~svfcheck.real.decompose.decompose` takes
``threads=`` (how many side by side). Measured figures: benchmarks/README.md.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["single_thread", "num_threads", "batched_map", "batched_jobs", "batched_svd", "svd_workers", "parallel_map"]


@contextlib.contextmanager
def num_threads(n: int | None):
    """Run torch on ``n`` intra-op threads inside the block (``None``: leave the setting)."""
    if n is None:
        yield
        return
    if n < 1:
        raise ValueError(f"threads must be >= 1 or None; got {n}")
    old = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(old)


def single_thread():
    """Run torch on one intra-op thread inside the block (see the module docstring)."""
    return num_threads(1)


_POOL: ThreadPoolExecutor | None = None


def svd_workers() -> int:
    """Cores the core SVDs are spread over: ``SVFCHECK_SVD_WORKERS`` if set, else the cores
    this process may use (at most 8)."""
    env = os.environ.get("SVFCHECK_SVD_WORKERS")
    if env:
        n = int(env)
        if n < 1:
            raise ValueError(f"SVFCHECK_SVD_WORKERS must be >= 1; got {env!r}")
        return n
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(8, n))


def batched_map(fn, *tensors: torch.Tensor, workers: int | None = None, min_chunk: int = 64,
                out: tuple | None = None, block: int | None = None) -> tuple:
    """``fn(*tensors)`` over the shared leading batch axis, single-threaded per chunk and the
    chunks on ``workers`` threads (default :func:`svd_workers`); ``fn`` returns a tensor or a
    tuple of tensors, each with the batch axis first, and must treat every batch row on its own
    (e.g. a batched SVD followed by per-matrix products) — then the result is bit-identical to
    one call. Batches smaller than ``2·min_chunk`` run in the caller's thread. Returns a tuple.

    With ``out`` (preallocated tensors, batch axis first, one per result) each chunk is fed to
    ``fn`` in blocks of ``block`` rows (default: the whole chunk) and the results are written
    into ``out``, which is returned: small blocks keep every intermediate in cache and reuse
    the allocator's memory instead of mapping fresh pages for chunk-sized temporaries."""
    workers = svd_workers() if workers is None else int(workers)
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"batched_map: leading axes differ: {[tuple(t.shape) for t in tensors]}")
    if out is not None and any(o.shape[0] != n for o in out):
        raise ValueError(f"batched_map: out's leading axes differ from {n}: {[tuple(o.shape) for o in out]}")
    k = max(1, min(workers, n // max(1, min_chunk)))

    def call(*ts):
        r = fn(*ts)
        return r if isinstance(r, tuple) else (r,)

    def into(lo, hi):
        step = max(1, block or (hi - lo))
        for a in range(lo, hi, step):
            b = min(hi, a + step)
            for o, r in zip(out, call(*(t[a:b] for t in tensors)), strict=True):
                o[a:b] = r

    with single_thread():
        if out is not None:
            bounds = [round(n * c / k) for c in range(k + 1)]
            if k == 1:
                into(0, n)
            else:
                list(_pool(k).map(into, bounds[:-1], bounds[1:]))
            return tuple(out)
        if k == 1:
            return call(*tensors)
        outs = list(_pool(k).map(call, *(torch.chunk(t, k) for t in tensors)))
        return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))


def batched_jobs(jobs, workers: int | None = None, block: int = 32, min_chunk: int = 16) -> None:
    """Run several independent batched jobs as one: each job is ``(fn, tensors)`` with ``fn``
    called on row blocks ``fn(*(t[a:b] for t in tensors))`` of at most ``block`` rows, storing
    its own results (e.g. into disjoint rows of shared tables) — as :func:`batched_map` with
    ``out=()``, but the rows of all jobs are cut into one contiguous range per worker (default
    :func:`svd_workers`), so many small jobs (a few cores in each of 30 layers) still spread
    over every core instead of running one after another, each too small to split. Each worker
    runs single-threaded; fewer than ``2·min_chunk`` rows in all run in the caller's thread."""
    jobs = [(fn, ts) for fn, ts in jobs if ts[0].shape[0]]
    sizes = [ts[0].shape[0] for _, ts in jobs]
    n = sum(sizes)
    if not n:
        return
    workers = svd_workers() if workers is None else int(workers)
    k = max(1, min(workers, n // max(1, min_chunk)))
    starts = [0]
    for m in sizes:
        starts.append(starts[-1] + m)

    def span(lo, hi):  # global rows lo..hi-1, job by job, in blocks
        for (fn, ts), a0, a1 in zip(jobs, starts[:-1], starts[1:]):
            a, b = max(lo, a0), min(hi, a1)
            for c in range(a, b, block):
                d = min(b, c + block)
                fn(*(t[c - a0 : d - a0] for t in ts))

    with single_thread():
        bounds = [round(n * c / k) for c in range(k + 1)]
        if k == 1:
            span(0, n)
        else:
            list(_pool(k).map(span, bounds[:-1], bounds[1:]))


def _pool(k: int) -> ThreadPoolExecutor:
    global _POOL
    if _POOL is None or _POOL._max_workers < k:
        _POOL = ThreadPoolExecutor(max_workers=k, thread_name_prefix="svfcheck-svd")
    return _POOL


_TASKS: dict[int, ThreadPoolExecutor] = {}  # parallel_map's pools by size (not _POOL: their tasks may call batched_map)


def parallel_map(fn, items, workers: int | None = None) -> list:
    """``[fn(x) for x in items]`` with the items spread over ``workers`` threads (default
    :func:`svd_workers`), torch on one intra-op thread for the duration (so each item's
    arithmetic does not depend on the worker count). ``fn`` must not mutate state another item
    reads. The first exception in item order propagates (items not yet started are cancelled).
    ``workers=1`` runs in the caller's thread."""
    items = list(items)
    workers = svd_workers() if workers is None else int(workers)
    if workers < 1:
        raise ValueError(f"workers must be >= 1; got {workers}")
    with single_thread():
        if workers == 1 or len(items) < 2:
            return [fn(x) for x in items]
        pool = _TASKS.get(workers)
        if pool is None:
            pool = _TASKS[workers] = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="svfcheck-layer")
        futs = [pool.submit(fn, x) for x in items]
        try:
            return [f.result() for f in futs]
        finally:
            for f in futs:
                f.cancel()
            for f in futs:  # let running items finish before torch's thread setting is restored
                if not f.cancelled():
                    f.exception()


def batched_svd(C: torch.Tensor, workers: int | None = None, min_chunk: int = 64):
    """``torch.linalg.svd(C)`` over the leading batch axis through :func:`batched_map`:
    bit-identical to one call."""
    return batched_map(torch.linalg.svd, C, workers=workers, min_chunk=min_chunk)
