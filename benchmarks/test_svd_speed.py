"""All-heads SVD speed (docs/math.md §4): dense per-head vs TransformerLens three-SVD vs factored.

Random weights of real model shapes (fp32, CPU). Every route's singular values are asserted
within 1e-5 relative of a float64 reference — correctness, not timing. The reference is
numpy float64 (QR of each W then SVD of the small core, all heads), itself checked against a
dense float64 SVD of Ω on the first heads. The dense fp32 route is timed on the first
``SVFCHECK_BENCH_DENSE_LAYERS`` layers (default 2; ``all`` for every layer) and extrapolated
linearly in the number of heads (its per-head SVDs are independent); set ``all`` on an idle
machine for the full measurement. Timing ratios ``ratio_vs_dense`` and ``ratio_vs_three_svd`` (seconds of this route / seconds of
the baseline, measured in the same run; < 1 is faster) go to ``benchmark.extra_info`` with the
project's targets and are printed; nothing is asserted about time (``benchmarks/ratios.py``
prints the table). Peak memory: ``test_svd_memory.py``.
Run: ``pytest benchmarks/test_svd_speed.py -s`` (also works with ``--benchmark-disable``).
"""

from __future__ import annotations

import os

import numpy as np
import pytest

from _memory import measure as measure_memory
from _shapes import ROUTES, SHAPES, weights
from _timing import best_of
from test_svd_memory import MAX_PEAK_OVER_WEIGHTS

#: Targets for the default route (all_heads_svd's ``cholesky``) on GPT-2 shapes, as
#: maximum ratios this/baseline: ≥ 50× faster than dense, ≥ 2× faster than three-SVD.
TARGETS = {("gpt2", "cholesky"): {"target_max_ratio_vs_dense": 1 / 50, "target_max_ratio_vs_three_svd": 1 / 2}}


def _reference64(wq, wk, kv):
    """numpy float64 singular values of every head: QR of W_Q, W_K, SVD of R_q R_kᵀ."""
    wq64, wk64 = wq.double().numpy(), wk.double().numpy()
    rq = np.linalg.qr(wq64)[1]
    rk = np.linalg.qr(wk64)[1][:, kv.numpy()]
    ref = np.linalg.svd(rq @ np.swapaxes(rk, -1, -2), compute_uv=False)
    for h in range(min(4, wq.shape[1])):  # cross-check the reference against dense float64 SVD
        dense = np.linalg.svd(wq64[0, h] @ wk64[0, int(kv[h])].T, compute_uv=False)[: wq.shape[-1]]
        np.testing.assert_allclose(ref[0, h], dense, rtol=1e-10, atol=1e-12 * dense[0])
    return ref


@pytest.fixture(scope="module", params=list(SHAPES))
def measured(request):
    """Same-run timings (best of a few) and float64 reference singular values."""
    name = request.param
    wq, wk, kv = weights(name)
    ref = _reference64(wq, wk, kv)
    dense_layers = os.environ.get("SVFCHECK_BENCH_DENSE_LAYERS", "2")
    nd = wq.shape[0] if dense_layers == "all" else min(int(dense_layers), wq.shape[0])
    times, S = {}, {}
    t_read = best_of(lambda: (wq.clone(), wk.clone()), 3)[0]
    for route, fn in ROUTES.items():
        if route == "dense":
            t, (U, s, V) = best_of(lambda fn=fn: fn(wq[:nd], wk[:nd], kv), 1)
            times[route] = t * wq.shape[0] / nd
        else:
            times[route], (U, s, V) = best_of(lambda fn=fn: fn(wq, wk, kv), 3)
        S[route] = s
    return name, (wq, wk, kv, nd), times, S, ref, t_read


@pytest.mark.parametrize("route", list(ROUTES))
def test_svd_route(benchmark, route, measured):
    name, (wq, wk, kv, nd), times, S, ref, t_read = measured
    # correctness: singular values within 1e-5 relative of the float64 reference
    s = S[route].double().numpy()
    rel = np.abs(s - ref[: s.shape[0]]) / ref[: s.shape[0], :, :1]
    assert rel.max() < 1e-5, f"{name}/{route}: max relative singular-value error {rel.max():.2e}"
    fn = ROUTES[route]
    if route == "dense":
        benchmark.pedantic(fn, args=(wq[:nd], wk[:nd], kv), rounds=1, iterations=1)
    else:
        benchmark(fn, wq, wk, kv)
    info = {
        "shape": name,
        "route": route,
        "dense_timed_layers": nd,
        "seconds_same_run": times[route],
        # ratio_vs_<baseline> = seconds(this route) / seconds(baseline), both timed in this run
        "ratio_vs_dense": times[route] / times["dense"],
        "ratio_vs_three_svd": times[route] / times["three_svd"],
        **TARGETS.get((name, route), {}),
    }
    # peak memory (test_svd_memory.py measures and bounds it; shared, cached measurements)
    mem = measure_memory(name, route, nd if route == "dense" else None)
    info |= {
        "memory_layers": mem["layers"],
        "peak_extra_bytes": mem["peak_extra_bytes"],
        "weights_bytes": mem["weights_bytes"],
        "memory_ratio_vs_weights": mem["peak_over_weights"],
        **({} if route == "dense" else {"target_max_memory_ratio_vs_weights": MAX_PEAK_OVER_WEIGHTS}),
        "read_weights_seconds": t_read,
        "max_rel_sv_error_vs_float64": float(rel.max()),
    }
    benchmark.extra_info.update(info)
    print(
        f"\n[svd {name}] {route:>17}: {times[route]:8.3f} s  x{1 / info['ratio_vs_dense']:7.1f} faster than dense  "
        f"x{1 / info['ratio_vs_three_svd']:5.2f} faster than three-SVD  (sv err {rel.max():.1e}); "
        f"peak memory x{mem['peak_over_weights']:.2f} the weights ({mem['layers']} layers)"
    )


def _gesdd_tables(cache, layer, deltas):
    """Same-run baseline for the RoPE core tables: the pre-Dec-2026 route — LAPACK gesdd on every
    core through batched_map (one chunk per core), then the sign convention and F per chunk."""
    import torch

    from svfcheck.real.svd import middle_matrix, sign_fix
    from svfcheck.real.threads import batched_map

    lh, f = cache.heads.layer(layer), cache.factors(layer)
    H, dh, n = f.R_q.shape[0], f.R_q.shape[-1], len(deltas)
    RkT = f.R_k[f.kv_index].transpose(-1, -2)
    C = (f.R_q[:, None] @ middle_matrix(lh, deltas)[None] @ RkT[:, None]).reshape(H * n, dh, dh)
    head = torch.arange(H).repeat_interleave(n)

    def one(Cc, hc):
        U, S, Vh = torch.linalg.svd(Cc)
        U, V = sign_fix(U, Vh.transpose(-1, -2))
        V = V.contiguous()
        return U.contiguous(), S, V, RkT[hc] @ V

    return batched_map(one, C, head)


def test_rope_core_tables_vs_gesdd(benchmark):
    """SVDCache's per-(head, Δ) core tables (Gram eigendecomposition, certified, gesdd fallback;
    blocked) against the gesdd route, same run, same cores: SmolLM2-135M's own layers 0 (most
    cores ill-conditioned enough to fall back) and 27 (none) when timed; a SmolLM2-shaped random
    1-layer llama in CI's untimed run. Asserted: singular values within 1e-12·σ_max of gesdd's
    and F = G_k R_kᵀ Ṽ reproducing the same key-side subspace (|Ṽᵀ Ṽ_gesdd| projections)."""
    import torch

    from svfcheck.real.heads import extract_heads
    from svfcheck.real.svd_cache import SVDCache

    if benchmark.disabled:
        from transformers import LlamaConfig, LlamaModel

        cfg = LlamaConfig(vocab_size=64, hidden_size=576, intermediate_size=64, num_hidden_layers=1,
                          num_attention_heads=9, num_key_value_heads=3, rope_theta=100000.0)
        torch.manual_seed(0)
        model, layers = LlamaModel(cfg).eval(), [0]
    else:
        from svfcheck.real.models import load_model

        model, layers = load_model("smollm2-135m", progress=False).model, [0, 27]
    heads = extract_heads(model)
    deltas = np.arange(-127, 1)
    info = {}
    for l in layers:
        cache = SVDCache(heads)
        cache.factors(l)
        t_new, (Ut, S, Vt, F) = best_of(lambda c=cache, l=l: c._cores(l, deltas), 2)
        t_old, (Uo, So, Vo, Fo) = best_of(lambda c=cache, l=l: _gesdd_tables(c, l, deltas), 2)
        H, n = Ut.shape[:2]
        So = So.view(H, n, -1)
        assert float((S - So).abs().max()) <= 1e-12 * float(So.max())
        # subspaces of distinct singular values: |cos| of matching right singular vectors
        cos = (Vt.reshape(H * n, 64, 64) * Vo).sum(-2).abs()
        gap = (So[..., :-1] - So[..., 1:]).reshape(H * n, -1).min(-1).values > 1e-6 * So.max()
        assert float((1 - cos[gap]).abs().max()) <= 1e-8
        info[f"layer{l}_tables_s"], info[f"layer{l}_gesdd_tables_s"] = t_new, t_old
        info[f"layer{l}_ratio_vs_gesdd"] = t_new / t_old
        print(f"\n[core tables layer {l}: {H * n} cores] ours {t_new:.3f} s, gesdd route {t_old:.3f} s "
              f"(ratio {t_new / t_old:.2f})")
    benchmark.extra_info.update(info)
    benchmark.pedantic(lambda: SVDCache(heads)._cores(layers[-1], deltas), rounds=1, iterations=1)
