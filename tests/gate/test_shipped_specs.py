"""The shipped analysis specs on the offline real models (``gpu``), and their negative controls.

1. Every spec in ``analyses/`` passes as shipped (thresholds chosen from measured figures,
   written next to them in the spec files).
2. The same spec pointed at a random initialisation of the same architecture
   (``[model] random_init = true``, seed 1; the baseline stays seed 0) FAILS every SAD
   condition — a gate a random model passes would be worthless — while exactness still
   passes (the failure is about SAD, not a broken pipeline).
3. The SmolLM2 spec evaluated with a deliberately corrupted decomposition (query heads read
   the wrong GQA kv group, patched into the head extraction) FAILS the exactness condition,
   while the same reduced spec passes with the true extraction.

One :class:`~svfcheck.gate.evaluate.Evaluator` is shared by 1 and 2, so each model and the
seed-0 baseline analyses are computed once.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from svfcheck.gate.evaluate import Evaluator
from svfcheck.gate.report import summary_table
from svfcheck.gate.spec import load_spec

pytestmark = pytest.mark.gpu

ANALYSES = Path(__file__).resolve().parents[2] / "analyses"
SPECS = sorted(p.name for p in ANALYSES.glob("*.toml"))


@pytest.fixture(scope="module")
def evaluator():
    return Evaluator(progress=False)


@pytest.mark.parametrize("name", SPECS)
def test_shipped_spec_passes(evaluator, name):
    res = evaluator.evaluate(load_spec(ANALYSES / name))
    print("\n" + summary_table([res]) + f"\n({res.seconds:.0f} s, timing inflated by a shared machine)")
    assert res.model_summary["n_valid_pairs"] >= 500
    failed = [c.line() for c in res.conditions if not c.passed]
    assert not failed, failed


@pytest.mark.parametrize("name", SPECS)
def test_random_init_model_fails_the_sad_conditions(evaluator, name):
    spec = load_spec(ANALYSES / name)
    spec = dataclasses.replace(spec, model=dataclasses.replace(spec.model, random_init=True, seed=1))
    res = evaluator.evaluate(spec)
    print("\n" + summary_table([res]))
    sad = [c for c, cond in zip(res.conditions, spec.conditions) if cond.sad]
    assert sad, "the shipped spec has SAD conditions"
    passed = [c.line() for c in sad if c.passed]
    assert not passed, f"a random-init model passes SAD conditions of {name}: {passed}"
    exact = [c for c in res.conditions if c.kind == "max_reconstruction_error"]
    assert exact and all(c.passed for c in exact), [c.line() for c in exact]


def _wrong_kv_group(self, head):
    """Corruption: query head h reads the *next* kv group instead of h // (H / H_kv)."""
    return (head // (self.n_heads // self.n_kv_heads) + 1) % self.n_kv_heads


# query heads of three kv groups (SmolLM2: heads 0-2 -> kv 0, 3-5 -> kv 1, 6-8 -> kv 2) in three layers
CORRUPTION_HEADS = ((0, 0), (0, 4), (14, 8), (29, 2))


def test_corrupted_kv_group_fails_exactness_smollm2(evaluator, monkeypatch):
    """SmolLM2 (9 query / 3 kv heads). Reduced spec: 1 prompt, 4 heads, exactness only, no
    baseline (the corruption targets exactness; a smaller run keeps CI time down). The clean
    run reuses the module's loaded model; the corrupted run uses a fresh Evaluator, i.e. a
    fresh model whose heads are extracted (and SVDs built) with the patched kv mapping."""
    from svfcheck.real.heads import LayerHeads

    full = load_spec(ANALYSES / "smollm2-135m-ioi.toml")
    spec = dataclasses.replace(
        full, baseline=None, task=dataclasses.replace(full.task, n_prompts=1),
        settings=full.settings.replace(heads=CORRUPTION_HEADS),
        conditions=tuple(c for c in full.conditions if c.kind == "max_reconstruction_error"),
    )
    assert len(spec.conditions) == 1
    (clean,) = evaluator.evaluate(spec).conditions
    monkeypatch.setattr(LayerHeads, "kv_head", _wrong_kv_group)
    (bad,) = Evaluator(progress=False).evaluate(spec).conditions
    print(f"\nSmolLM2 max reconstruction error: true kv groups {clean.measured:.2e}, wrong kv group {bad.measured:.3g} "
          f"(bound {bad.threshold:g})")
    assert clean.passed, clean.line()
    assert not bad.passed and bad.measured > 1e-2, bad.line()
