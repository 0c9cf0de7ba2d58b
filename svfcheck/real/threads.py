"""Thread control for the engine's small-op-heavy parts.

The per-(layer, head, Δ) core SVDs are thousands of d_h×d_h SVDs. On free cores 1 and 2
threads take the same time (1,152 SVDs of 64×64: 0.52 s either way); on a shared machine 2
threads are many times slower (SmolLM2, 30 layers × 128 Δ × 9 heads: 131.8 s on 2 threads vs
≈18 s on 1). So :class:`~svfcheck.real.svd.SVDCache` always computes them under
:func:`single_thread`. The decomposition proper is a few large GEMMs per (prompt, head): there
2 threads help on free cores (warm SmolLM2 prompt 3.1 s vs 6.1 s) and hurt on busy ones
(12.3 s vs 5.0 s), so :func:`~svfcheck.real.decompose.decompose` takes ``threads=`` (default:
the caller's setting) and :func:`~svfcheck.real.sad.analyze` uses 1 by default.
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["single_thread", "num_threads"]


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
