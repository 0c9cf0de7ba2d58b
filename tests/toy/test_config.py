"""Configs: paper defaults, presets and every validation (cheap; no marker)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from svfcheck.toy.config import PRESETS, RopeConfig, ToyConfig, TrainConfig, over_capacity, preset


def test_default_is_paper_table1():
    c = ToyConfig()
    assert (c.n, c.d, c.d_h, c.lam, c.m, c.p) == (20, 10, 10, 4.0, 4, 0.52)
    L = c.Lambda
    assert L.shape == (20, 20)
    assert {(a, b): L[a, b] for a, b in zip(*np.nonzero(L))} == {(0, 4): 24, (1, 5): 21, (2, 6): 18, (3, 7): 15}
    assert c.pairs_of_interest == ((0, 4, 24.0), (1, 5, 21.0), (2, 6, 18.0), (3, 7, 15.0))
    assert c.n_queries == 1024 // 4
    assert c.strengths == "uniform"


def test_presets_exist_and_match_paper():
    assert set(PRESETS) >= {"default", "single-pair", "100-features", "rope", "over-capacity"}
    sp = preset("single-pair")
    assert (sp.n, sp.d) == (20, 10) and len(sp.pairs) == 1 and sp.pairs[0][:2] == (0, 1)
    hf = preset("100-features")
    assert (hf.n, hf.d) == (100, 50) and len(hf.pairs) == 20
    assert all(a + 20 == b for a, b, _ in hf.pairs)
    vals = [v for _, _, v in hf.pairs_of_interest]
    assert np.allclose(np.diff(vals), vals[1] - vals[0]) and vals[1] < vals[0]  # linearly declining
    oc = preset("over-capacity")
    assert len(oc.pairs) > oc.d_h
    r = preset("rope")
    assert r.rope is not None and r.d_h % 2 == 0
    period1 = 2 * math.pi / r.rope.theta(r.d_h)[1]
    assert abs(period1 - r.rope.context) / r.rope.context < 0.05  # band 1 period ≈ context (App. D)


def test_preset_override_and_unknown():
    assert preset("default", p=0.1).p == 0.1
    with pytest.raises(ValueError, match="unknown toy preset"):
        preset("nope")


def test_from_matrix_roundtrip():
    L = np.zeros((20, 20))
    L[2, 3] = 5.0
    c = ToyConfig.from_matrix(L)
    assert c.pairs == ((2, 3, 5.0),)
    assert np.array_equal(c.Lambda, L)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(pairs=((0, 20, 1.0),)), "beyond the n=20"),
        (dict(pairs=((-1, 2, 1.0),)), "beyond the n=20"),
        (dict(pairs=((0, 1),)), r"\(a, b, value\)"),
        (dict(pairs=((0, 1, float("inf")),)), "not finite"),
        (dict(pairs=((0, 1, 1.0), (0, 1, 2.0))), "given twice"),
        (dict(d_h=11), "d_h=11 > d=10"),
        (dict(p=0.0), r"p=0.0 must lie in \(0, 1\]"),
        (dict(p=-0.2), r"must lie in \(0, 1\]"),
        (dict(p=1.5), r"must lie in \(0, 1\]"),
        (dict(p=float("nan")), r"must lie in \(0, 1\]"),
        (dict(m=1), "at least 2 keys"),
        (dict(m=0), "positive integer"),
        (dict(n=0), "positive integer"),
        (dict(d=2.5), "positive integer"),
        (dict(lam=-1.0), "lam"),
        (dict(lam=float("inf")), "lam"),
        (dict(n=8), "d=10 > n=8"),
        (dict(n_keys=2, m=4), "not even one query"),
        (dict(strengths="gaussian"), "strengths"),
        (dict(rope=RopeConfig(), d_h=9, d=10), "even head dimension"),
        (dict(rope=RopeConfig(positional=((6, 7, 1.0, 5),))), "band 5 out of range"),
        (dict(rope=RopeConfig(positional=((6, 70, 1.0, 1),))), "positional pair"),
        (dict(rope="yes"), "RopeConfig"),
    ],
)
def test_toy_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        ToyConfig(**kw)


@pytest.mark.parametrize("shape", [(19, 20), (20, 21), (20,), (2, 20, 20)])
def test_lambda_wrong_shape(shape):
    with pytest.raises(ValueError, match=r"Λ must have shape \(n, n\)"):
        ToyConfig.from_matrix(np.zeros(shape))


def test_lambda_nonfinite_matrix():
    L = np.zeros((20, 20))
    L[0, 1] = np.nan
    with pytest.raises(ValueError, match="non-finite"):
        ToyConfig.from_matrix(L)


@pytest.mark.parametrize(
    "kw, match",
    [
        (dict(steps=0), "steps"),
        (dict(steps=-5), "steps"),
        (dict(steps=1.5), "steps"),
        (dict(lr=0.0), "lr"),
        (dict(lr=float("nan")), "lr"),
        (dict(weight_decay=-1.0), "weight_decay"),
        (dict(record_every=0), "record_every"),
        (dict(chunk=0), "chunk"),
        (dict(threads=0), "threads"),
        (dict(stop_aligned=0.0), "stop_aligned"),
        (dict(stop_aligned=1.5), "stop_aligned"),
        (dict(stop_patience=100, record_every=250), "stop_patience"),
    ],
)
def test_train_config_rejects(kw, match):
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_rope_config_rejects():
    with pytest.raises(ValueError, match="base"):
        RopeConfig(base=1.0)
    with pytest.raises(ValueError, match="context"):
        RopeConfig(context=0)
    with pytest.raises(ValueError, match="positional"):
        RopeConfig(positional=((1, 2, 3.0),))


def test_over_capacity_builder():
    c = over_capacity(7)
    assert len(c.pairs) == 7 and c.d_h == 5
    vals = [v for _, _, v in c.pairs_of_interest]
    assert vals == sorted(vals, reverse=True)
    with pytest.raises(ValueError, match="over_capacity"):
        over_capacity(11)


def test_configs_are_frozen_and_hashable():
    c = ToyConfig()
    with pytest.raises(dataclasses.FrozenInstanceError):
        c.n = 5  # type: ignore[misc]
    hash(c)
    hash(preset("rope"))
