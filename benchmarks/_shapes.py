"""Model shapes and seeded random Q/K weights shared by the SVD speed and memory benchmarks."""

from __future__ import annotations

import torch

from svfcheck.real.svd import dense_svd, factored_svd, three_svd

SHAPES = {
    # name: (layers, q heads, kv heads, d, d_h, biases)
    "gpt2": (12, 12, 12, 768, 64, True),
    "smollm2": (30, 9, 3, 576, 64, False),
}


def weights(name: str, n_layers: int | None = None):
    """fp32 ``(W_Q, W_K, kv_index)`` of shape ``name`` (first ``n_layers`` layers if given).

    Built in place (``normal_`` then ``mul_``) so that creating them leaves no freed
    temporaries behind — the memory benchmark's baseline is then the live set."""
    L, H, Hkv, d, dh, bias = SHAPES[name]
    L = L if n_layers is None else min(n_layers, L)
    g = torch.Generator().manual_seed(0)
    D = d + 1 if bias else d
    wq = torch.empty(L, H, D, dh).normal_(generator=g).mul_(d**-0.5)
    wk = torch.empty(L, Hkv, D, dh).normal_(generator=g).mul_(d**-0.5)
    kv = torch.arange(H) // (H // Hkv)
    return wq, wk, kv


#: Every all-heads SVD route we ship (svfcheck.real.svd), by name.
ROUTES = {
    "dense": lambda wq, wk, kv: dense_svd(wq, wk, kv_index=kv),
    "three_svd": lambda wq, wk, kv: three_svd(wq, wk, kv_index=kv),
    "qr": lambda wq, wk, kv: factored_svd(wq, wk, route="qr", kv_index=kv),
    "cholesky": lambda wq, wk, kv: factored_svd(wq, wk, route="cholesky", kv_index=kv),
    "cholesky_f64core": lambda wq, wk, kv: factored_svd(wq, wk, route="cholesky", kv_index=kv, core_dtype=torch.float64),
}
