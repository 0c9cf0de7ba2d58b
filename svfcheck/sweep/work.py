"""What one sweep task computes: :func:`run_task` ``(kind, payload) → result`` (JSON).

Every function here is deterministic in its payload (one intra-op thread per CPU the task was
given; training and analyses are seeded), so a task's result does not depend on the engine
that ran it or on how many ran side by side. The pieces are the ones ``svfcheck emergence``
and ``svfcheck gate`` use: the same training loop, head identification, prompts, per-checkpoint
SAD step and gate evaluation.
"""

from __future__ import annotations

import hashlib
import math
import os
from typing import Any

__all__ = ["run_task", "weights_sha256"]


def weights_sha256(model) -> str:
    """SHA-256 over the model's parameters and buffers (sorted by name, with shapes and
    dtypes): equal exactly when two checkpoints serve the same weights, whatever their files."""
    import torch

    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype};".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def run_task(kind: str, payload: dict, num_cpus: float = 1.0) -> dict:
    """Run one task (:mod:`svfcheck.sweep.tasks`) with ``floor(num_cpus)`` (≥ 1) torch threads.

    Training runs on CUDA when the task was given a GPU (``payload["gpu"]``: the plan's
    ``num_gpus`` > 0) and CUDA is present; analyses run on the CPU (their float64/float32
    decomposition is CPU work)."""
    import torch

    was = torch.get_num_threads()
    torch.set_num_threads(max(1, math.floor(num_cpus)))
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        return _KINDS[kind](payload)
    finally:
        torch.set_num_threads(was)


def _train(p: dict) -> dict:
    from ..emergence.config import preset
    from ..emergence.train import train_run

    import torch

    device = "cuda" if p.get("gpu") and torch.cuda.is_available() else "cpu"
    r = train_run(preset(p["preset"], **p["train"]), p["run_dir"], device=device, progress=False, num_threads=1)
    return {"run_dir": str(r.out_dir), "curve": r.curve}


def _series(p: dict):
    from .tasks import resolve_series

    return resolve_series(p["source"], p["steps"])


def _heads(p: dict) -> dict:
    from ..emergence.head_sets import identify_heads
    from ..emergence.prompts import build_prompts
    from ..emergence.settings import EmergenceSettings

    settings = EmergenceSettings(**p["settings"])
    series = _series(p)
    final = series.steps[-1]
    lm = series.load(final, progress=False)
    prompts = build_prompts(settings, lm.tokenizer, series, lm.model.config.vocab_size)
    hs = identify_heads(lm, settings, series, prompts, step=final)
    return {"heads": hs.to_dict(), "n_prompts": len(prompts), "final_step": final}


def _analysis(p: dict, random_init: bool) -> dict:
    from ..emergence.checkpoint import _analyze_checkpoint
    from ..emergence.prompts import build_prompts
    from ..emergence.settings import EmergenceSettings, HeadSet
    from ..real.models import load_model
    from ..tasks.selection import validate_heads_for

    settings = EmergenceSettings(**p["settings"])
    series = _series(p)
    if random_init:
        ck = series.at(series.steps[-1])
        lm = load_model(ck.locator, revision=ck.revision, random_init=True, seed=p["seed"], progress=False)
    else:
        lm = series.load(p["step"], progress=False)
    heads = HeadSet.from_dict(p["heads"])
    for hl in heads.roles.values():
        validate_heads_for(hl, lm.model.config)
    prompts = build_prompts(settings, lm.tokenizer, series, lm.model.config.vocab_size)
    timing: dict[str, Any] = {}
    r = _analyze_checkpoint(lm, settings, heads, prompts, [], timing)
    pairs = {k: r["pairs"][k] for k in ("role", "layer", "head", "s_svd", "s_rotated", "s_paper_control", "k")}
    return {"summary": r["summary"], "per_head": r["per_head"], "pairs": pairs, "n_dropped": r["n_dropped"],
            "max_reconstruction_error": r["max_reconstruction_error"], "dtype": r["dtype"],
            "weights_sha256": weights_sha256(lm.model), "architecture": lm.architecture}


def _spec(p: dict) -> dict:
    import dataclasses

    from ..gate.evaluate import Evaluator
    from ..gate.spec import load_spec

    spec = load_spec(p["spec"])
    seed = p["seed"]
    spec = dataclasses.replace(spec, settings=spec.settings.replace(seed=seed),
                               baseline=None if spec.baseline is None else dataclasses.replace(spec.baseline, seed=seed))
    r = Evaluator(progress=False).evaluate(spec)
    return {"passed": r.passed, "conditions": [c.to_json() for c in r.conditions], "model": r.model_summary,
            "baseline": r.baseline_summary}


_KINDS = {
    "train": _train,
    "heads": _heads,
    "checkpoint": lambda p: _analysis(p, random_init=False),
    "random-init": lambda p: _analysis(p, random_init=True),
    "spec": _spec,
}
