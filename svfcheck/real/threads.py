"""Thread control for the engine's small-op-heavy parts.

The per-(layer, head, Δ) core SVDs are thousands of d_h×d_h SVDs. On free cores 1 and 2
threads take the same time (1,152 SVDs of 64×64: 0.52 s either way); on a shared machine 2
threads are many times slower (SmolLM2, 30 layers × 128 Δ × 9 heads: 131.8 s on 2 threads vs
≈18 s on 1). So :class:`~svfcheck.real.svd.SVDCache` always computes them with one intra-op thread — but
on several cores at once through :func:`batched_svd`: the batch is cut into one contiguous
chunk per core and each chunk runs single-threaded in its own Python thread (torch releases the
GIL), so there is no per-matrix synchronisation to suffer from busy cores, and the results are
bit-identical to one call (each matrix's SVD is computed alone; tested). Measured: 1,152 SVDs
of 64×64 in 0.78 s on one thread, 0.44 s on two. :func:`batched_map` is the general form: the
cache runs each chunk's SVD together with its per-matrix follow-up (sign convention, key-side
factor) on the same worker, so that work is spread over the cores too. The decomposition proper is a few large GEMMs per (prompt, head): there
2 threads help on free cores (warm SmolLM2 prompt 3.1 s vs 6.1 s) and hurt on busy ones
(12.3 s vs 5.0 s), so :func:`~svfcheck.real.decompose.decompose` takes ``threads=`` (default:
the caller's setting) and :func:`~svfcheck.real.sad.analyze` uses 1 by default.
"""

from __future__ import annotations

import contextlib
import os
from concurrent.futures import ThreadPoolExecutor

import torch

__all__ = ["single_thread", "num_threads", "batched_map", "batched_svd", "svd_workers"]


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


def batched_map(fn, *tensors: torch.Tensor, workers: int | None = None, min_chunk: int = 64) -> tuple:
    """``fn(*tensors)`` over the shared leading batch axis, single-threaded per chunk and the
    chunks on ``workers`` threads (default :func:`svd_workers`); ``fn`` returns a tensor or a
    tuple of tensors, each with the batch axis first, and must treat every batch row on its own
    (e.g. a batched SVD followed by per-matrix products) — then the result is bit-identical to
    one call. Batches smaller than ``2·min_chunk`` run in the caller's thread. Returns a tuple."""
    workers = svd_workers() if workers is None else int(workers)
    n = tensors[0].shape[0]
    if any(t.shape[0] != n for t in tensors):
        raise ValueError(f"batched_map: leading axes differ: {[tuple(t.shape) for t in tensors]}")
    k = max(1, min(workers, n // max(1, min_chunk)))

    def call(*ts):
        r = fn(*ts)
        return r if isinstance(r, tuple) else (r,)

    with single_thread():
        if k == 1:
            return call(*tensors)
        global _POOL
        if _POOL is None or _POOL._max_workers < k:
            _POOL = ThreadPoolExecutor(max_workers=k, thread_name_prefix="svfcheck-svd")
        outs = list(_POOL.map(call, *(torch.chunk(t, k) for t in tensors)))
        return tuple(torch.cat([o[i] for o in outs]) for i in range(len(outs[0])))


def batched_svd(C: torch.Tensor, workers: int | None = None, min_chunk: int = 64):
    """``torch.linalg.svd(C)`` over the leading batch axis through :func:`batched_map`:
    bit-identical to one call."""
    return batched_map(torch.linalg.svd, C, workers=workers, min_chunk=min_chunk)
