"""One context-scaling measurement in a fresh process: the SAD pipeline's step (capture, every
query's top key in every head, exact decomposition with both controls) on 2 prompts of T random
tokens, within the default memory budget (docs/math.md §4.5), with its time, the model's forward
pass at the same T, and the process's peak resident memory.

Run directly: ``python benchmarks/_context.py smollm2 1024`` (or ``llama1b``, optionally a number
of layers to keep) prints one JSON line. Models: ``smollm2`` — SmolLM2-135M's own weights
(offline package); ``llama1b`` — a llama-shaped random model of about 1.1B parameters (hidden
2048, 16 layers, 32 query / 8 key heads, MLP 8192, vocabulary 32000; random weights are fine for
cost). The core disk cache is off (each size measures the cold cost); the gate is checked per
pair against its derived float32 bound (docs/math.md §3.15).
"""

from __future__ import annotations

import json
import os
import resource
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _memory import _status_kib as _kib  # noqa: E402  (VmRSS / VmHWM of this process, KiB)
from _memory import json_subprocess  # noqa: E402


def _model(name: str, layers: int | None):
    import torch

    if name == "smollm2":
        from svfcheck.real.models import load_model

        return load_model("smollm2-135m", progress=False).model, 49152
    from transformers import LlamaConfig, LlamaForCausalLM

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=8192, num_hidden_layers=layers or 16,
                      num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=4096,
                      rope_theta=500000.0, tie_word_embeddings=False, attn_implementation="eager")
    torch.manual_seed(0)
    model = LlamaForCausalLM(cfg).eval()
    model.config._attn_implementation = "eager"
    return model, cfg.vocab_size


def measure(name: str, T: int, layers: int | None = None, n_prompts: int = 2, budget_gb: float = 2.0) -> dict:
    import numpy as np
    import torch

    from svfcheck.real.decompose import gate_tolerance, top_attended_pairs
    from svfcheck.real.heads import cached_heads
    from svfcheck.real.sad_step import StepOptions, decompose_batches

    os.environ["SVFCHECK_CORE_CACHE"] = "off"
    model, vocab = _model(name, layers)
    heads = cached_heads(model)
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, vocab, (n_prompts, T), generator=g)
    mask = torch.ones_like(ids)
    with torch.no_grad():
        fwd = []
        for _ in range(2):
            t0 = time.perf_counter()
            model(ids)
            fwd.append(time.perf_counter() - t0)
    rss0 = _kib("VmRSS")
    try:  # reset the peak: what the step needs on top of the loaded model
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    ok, errs, pairs = [], [], []
    keep = ("reconstruction_error", "term_abs_max", "contributions")

    def on_batch(r):
        d = r.decomposition
        ok.append(bool((d.reconstruction_error <= gate_tolerance(d, torch.float32)).all()))
        errs.append(float(d.reconstruction_error.max()))
        pairs.append(len(r.pairs))

    opts = StepOptions(dtype=torch.float32, memory_budget_gb=budget_gb, keep=keep)
    t0 = time.perf_counter()
    tot = decompose_batches(model, heads, [(0, ids, mask)], lambda s, i, m, cap: (top_attended_pairs(cap), None),
                            on_batch, opts)
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    hwm = _kib("VmHWM")
    step_peak = (hwm - rss0) * 1024 if reset and hwm is not None and rss0 is not None else None
    P = int(sum(pairs))
    fwd_s = float(np.min(fwd))
    # the captured activations of the batch (outside the budget): per layer attention, input
    # hidden states, visibility, rotary tables
    B = n_prompts
    acts = sum(B * (lh.n_heads * T * T * 4 + T * lh.d_model * 4 + T * T + (0 if lh.rotary is None else 2 * T * lh.rotary.rotary_dim * 4))
               for lh in heads.layers)
    return {
        "model": name, "T": T, "layers": heads.n_layers, "prompts": n_prompts, "pairs": P, "budget_gb": budget_gb,
        "weights_bytes": weights, "peak_rss_bytes": peak, "step_peak_above_model_bytes": step_peak,
        "activations_bytes": acts,
        "step_peak_above_model_and_activations_bytes": None if step_peak is None else step_peak - acts,
        "peak_rss_over_weights": peak / weights, "wall_s": wall, "forward_s": fwd_s,
        "capture_s": tot.forward_s, "decompose_s": tot.decompose_s,
        "seconds_per_pair": wall / P, "ratio_vs_forward": wall / fwd_s,
        "max_reconstruction_error": max(errs), "gate_within_float32_bound": all(ok),
    }


def run(name: str, T: int, layers: int | None = None, timeout: float = 7200) -> dict:
    """:func:`measure` in a fresh subprocess (so that sizes do not share a peak)."""
    here = Path(__file__).resolve().parent
    cmd = [sys.executable, str(here / "_context.py"), name, str(T)] + ([] if layers is None else [str(layers)])
    return json_subprocess(cmd, f"context measurement {name} T={T}", timeout, cwd=here.parent)


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python benchmarks/_context.py smollm2|llama1b T [N_LAYERS]")
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    print(json.dumps(measure(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]) if len(sys.argv) == 4 else None)))
