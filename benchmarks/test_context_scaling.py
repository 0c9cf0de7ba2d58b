"""Context scaling of the exact decomposition within the default memory budget (docs/math.md
§4.5): the SAD pipeline's step (capture, every query's top key in every head, decomposition with
both controls, cold: no core cache on disk) on 2 prompts of T random tokens, each size in a
fresh subprocess (benchmarks/_context.py) so that sizes do not share a peak.

- SmolLM2-135M's own weights at T ∈ {128, 256, 512, 1024, 2048};
- a llama-shaped random-weight model of about 1.1B parameters (hidden 2048, 16 layers, 32 query
  / 8 key heads, MLP 8192) at T ∈ {128, 512, 1024}.

``extra_info``: ``peak_rss_over_weights`` (the process's peak resident memory as multiples of
the model's weights), ``seconds_per_pair``, ``ratio_vs_forward`` (the step's seconds over one
forward pass of the same model on the same 2 × T tokens), the step's peak above the loaded model,
and the gate (every pair within its float32 bound, asserted). Untimed (``--benchmark-disable``,
as in CI): the smallest size only, and the 1B shape with 2 of its 16 layers (same per-layer
costs; ``SVFCHECK_BENCH_1B_LAYERS`` to choose). ``benchmarks/README.md`` has the measured table.
"""

from __future__ import annotations

import os

import pytest

from _context import run

SIZES = [("smollm2", T) for T in (128, 256, 512, 1024, 2048)] + [("llama1b", T) for T in (128, 512, 1024)]


@pytest.mark.parametrize("model,T", SIZES, ids=[f"{m}-{T}" for m, T in SIZES])
def test_context_scaling(benchmark, model, T):
    smallest = min(t for m, t in SIZES if m == model)
    if benchmark.disabled and T != smallest:
        pytest.skip("untimed run (CI): the smallest size only")
    layers = None
    if model == "llama1b" and (benchmark.disabled or "SVFCHECK_BENCH_1B_LAYERS" in os.environ):
        layers = int(os.environ.get("SVFCHECK_BENCH_1B_LAYERS", "2"))
    info = benchmark.pedantic(lambda: run(model, T, layers), rounds=1, iterations=1)
    assert info["gate_within_float32_bound"], info
    assert info["pairs"] > 0
    benchmark.extra_info.update(info)
    gb = 2**30
    print(f"\n[context {model} T={T}, {info['layers']} layers] {info['pairs']:,} pairs in {info['wall_s']:.1f} s "
          f"({info['seconds_per_pair'] * 1e6:.1f} µs/pair, {info['ratio_vs_forward']:.1f} forward passes); peak RSS "
          f"{info['peak_rss_bytes'] / gb:.2f} GB = {info['peak_rss_over_weights']:.1f}× the weights "
          f"({info['weights_bytes'] / gb:.2f} GB); gate {info['max_reconstruction_error']:.1e}")
