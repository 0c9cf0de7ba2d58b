"""Per-role trained-vs-random-init contrast on SmolLM2 IOI (``gpu``; docs/math.md §3.8).

Heads are discovered on the trained model (top 3 per role: name mover END→IO, S-inhibition
END→S2, induction S2→S1+1, previous token S1+1→S1); the random initialisation
(``load_model(..., random_init=True, seed=0)``) is analysed at the *same* heads and the same
labelled positions (circuit selection), so every role has one pair per (prompt, head) in both
models. Per role the prediction is the overall one: ``mean(S_c − S_svd)`` larger in the
trained model for both controls (99% bootstrap interval of the difference above 0) and
``S_svd`` lower. Roles where that fails when measured are strict xfails with the figures.
"""

from __future__ import annotations

import pytest

from svfcheck.real.sad import analyze, contrast
from svfcheck.tasks.circuits import INDUCTION, NAME_MOVER, PREVIOUS_TOKEN, S_INHIBITION
from svfcheck.tasks.ioi import generate_ioi_prompts

pytestmark = pytest.mark.gpu

N_PROMPTS = 40  # 40 prompts × 3 heads = 120 pairs per role in each model


@pytest.fixture(scope="module")
def role_contrast(smollm2_models):
    trained, random = smollm2_models
    prompts = generate_ioi_prompts(trained.tokenizer, N_PROMPTS, seed=1)
    tr = analyze(trained, prompts, heads="discover", n_boot=2_000, progress=False)
    rd = analyze(random, prompts, heads=list(tr.circuit), n_boot=2_000, progress=False)
    con = contrast(tr, rd)
    print("\nsmollm2-135m IOI, discovered heads " + ", ".join(f"{c.layer}.{c.head} {c.role}" for c in tr.circuit))
    print("\n".join("  " + line for line in con.lines()))
    return tr, rd, con


def _check(role_contrast, role):
    tr, rd, con = role_contrast
    c = con.per_role[role]
    assert not isinstance(c, str), c
    assert c.n_trained == c.n_random >= 100, (c.n_trained, c.n_random)
    for k, e in c.effect_difference.items():
        assert e.low > 0, f"{role}, {k}: SAD effect not larger in the trained model: {e}"
    assert c.s_svd_difference.high < 0, f"{role}: S_svd not lower in the trained model: {c.s_svd_difference}"


def test_roles_are_labelled_and_json_carries_them(role_contrast):
    tr, rd, con = role_contrast
    assert set(tr.roles()) == set(rd.roles()) == {NAME_MOVER, S_INHIBITION, INDUCTION, PREVIOUS_TOKEN}
    js = con.to_json()["per_role"]
    assert set(js) == set(tr.roles())
    for role, c in js.items():
        assert c["n_trained"] == len(tr.s("svd", role)) and set(c["effect_difference"]) == {"rotated", "paper_control"}


@pytest.mark.parametrize("role", [NAME_MOVER, S_INHIBITION, INDUCTION, PREVIOUS_TOKEN])
def test_role_trained_vs_random_init(role_contrast, role):
    _check(role_contrast, role)
