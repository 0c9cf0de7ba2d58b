"""The added attention families (docs/math.md §3.17–§3.21): a negative control per mechanism
that must fail the exactness gate, the soft-cap convention, length-dependent RoPE, bad input.

That every family reproduces the model's own attention is tested with the first seven in
test_exactness.py (its ``ARCHS``; tiny configs with the non-default options on in
conftest.py). Each control here breaks one mechanism of an otherwise exact decomposition and
must push the gate's error above 1e-3 (``BROKEN``, > 200× the float64 tolerances); the
measured errors are in the docstrings.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from svfcheck.real.capture import capture
from svfcheck.real.decompose import Pairs, decompose, top_attended_pairs
from svfcheck.real.heads import LayerHeads, ModelHeads, attention_modules, extract_heads

BROKEN = 1e-3
EXACT = 5e-6  # the largest float64 tolerance of these families (test_exactness.TOL64)


@pytest.fixture(scope="module")
def setup(tiny):
    cache = {}

    def get(arch, n=16):
        if (arch, n) not in cache:
            model = tiny.model(arch)
            heads = extract_heads(model)
            ids, mask = tiny.inputs(arch, n=n, batch=2)
            cap = capture(model, ids, mask, heads=heads)
            cache[arch, n] = (model, heads, cap, top_attended_pairs(cap))
        return cache[arch, n]

    return get


def _broken(heads: ModelHeads, fn) -> ModelHeads:
    return ModelHeads(heads.architecture, tuple(dataclasses.replace(lh, **fn(lh)) for lh in heads.layers))


def _error(heads, cap, pairs) -> float:
    return decompose(heads, cap, pairs, controls=False).max_reconstruction_error


def _tables_for(cap, heads: ModelHeads):
    """A copy of ``cap`` whose cos/sin are rebuilt from ``heads``' rotary specs (None where a
    layer has none), in the rotate-half layout: what a capture of a model with those specs gives."""
    cos, sin = [], []
    for l, lh in enumerate(heads.layers):
        if lh.rotary is None:
            cos.append(None), sin.append(None)
            continue
        ang = cap.positions[..., None].double() * torch.as_tensor(lh.rotary.inv_freq)
        ang = torch.cat([ang, ang], -1)
        a = lh.rotary.attention_scaling
        cos.append((a * torch.cos(ang)).to(cap.hidden[l].dtype))
        sin.append((a * torch.sin(ang)).to(cap.hidden[l].dtype))
    return dataclasses.replace(cap, cos=tuple(cos), sin=tuple(sin))


def _check_control(setup, arch, breakage, pairs_of=None):
    """The unbroken decomposition is exact, the broken one fails the gate; returns both errors."""
    _, heads, cap, pairs = setup(arch)
    if pairs_of is not None:
        pairs = pairs_of(pairs)
    good = _error(heads, cap, pairs)
    bad_heads, bad_cap = breakage(heads, cap)
    bad = _error(bad_heads, bad_cap, pairs)
    print(f"\n{arch}: exact {good:.2e}, broken {bad:.3g}")
    assert good < EXACT and bad > BROKEN, (good, bad)
    return good, bad


# ---------- negative controls: one per mechanism ----------


def test_gate_detects_an_ignored_softcap(setup):
    """Gemma-2 with the cap ignored (the pre-cap logits compared with the model's attention):
    measured 1.6e-7 exact, 8.2e-3 broken (the cap, 0.05, bends the tiny logits by up to 30%)."""
    _check_control(setup, "gemma2", lambda h, c: (_broken(h, lambda lh: {"softcap": None}), c))


def _model_order(lh: LayerHeads) -> dict:
    """The per-coordinate tensors back in the model's own (interleaved) coordinate order."""
    r = lh.rotary
    inv = torch.as_tensor(np.argsort(np.concatenate([r.head_order, np.arange(r.rotary_dim, lh.head_dim)])))
    names = ("W_Q", "W_K", "b_Q", "b_K", "q_gain", "k_gain")
    return {n: getattr(lh, n).index_select(-1, inv) for n in names if getattr(lh, n) is not None}


@pytest.mark.parametrize("arch", ["gptj", "cohere"])
def test_gate_detects_interleaved_rotary_treated_as_rotate_half(arch, setup):
    """The model's pairs (2t, 2t+1) rotated as if they were (t, t + rotary_dim/2): the head
    coordinates left in the model's order under the rotate-half rotation. Measured: gptj
    5.4e-9 exact, 0.044 broken; cohere 6.9e-7 exact, 3.0 broken."""
    _check_control(setup, arch, lambda h, c: (_broken(h, _model_order), c))


def test_gate_detects_a_full_width_norm_treated_as_per_head(setup):
    """OLMo-2's QK RMSNorm taken over each head instead of the whole projection: measured 9.3e-7
    exact, 0.40 broken."""
    _check_control(setup, "olmo2", lambda h, c: (_broken(h, lambda lh: {"norm_scope": "head"}), c))


def test_gate_detects_a_rotated_nope_layer(setup):
    """SmolLM3's NoPE layer (layer 1) rotated like its RoPE neighbours (the tables a rotating
    layer would get): measured 1.6e-7 exact, 0.067 broken on that layer's pairs."""

    def rotate_all(heads, cap):
        bad = ModelHeads(heads.architecture, tuple(
            dataclasses.replace(lh, rotary=heads.layers[0].rotary) if lh.rotary is None else lh for lh in heads.layers))
        return bad, _tables_for(cap, bad)

    _, heads, _, _ = setup("smollm3")
    assert heads.layers[1].rotary is None and heads.layers[0].rotary is not None
    _check_control(setup, "smollm3", rotate_all, pairs_of=lambda p: _layer_pairs(p, 1))


def _layer_pairs(pairs: Pairs, layer: int) -> Pairs:
    s = pairs.layer == layer
    return Pairs(*(getattr(pairs, f)[s] for f in ("prompt", "layer", "head", "query_pos", "key_pos")))


@pytest.mark.parametrize("arch", ["cohere", "stablelm"])
def test_gate_detects_a_dropped_layernorm_mean_subtraction(arch, setup):
    """A QK LayerNorm treated as an RMSNorm (no centring): measured cohere 6.9e-7 exact, 2.8
    broken; stablelm 2.6e-7 exact, 0.76 broken."""
    _check_control(setup, arch, lambda h, c: (_broken(h, lambda lh: {"norm_center": False}), c))


@pytest.mark.parametrize("kind", ["llama3", "linear", "yarn"])
def test_gate_detects_unscaled_rope_frequencies(kind, setup):
    """Llama's scaled RoPE replaced by the unscaled one (θ^(−2t/d_h), attention_scaling 1), the
    rotations applied consistently with it: measured llama3 1.7e-7 exact, 0.070 broken;
    linear 1.6e-7 / 0.069; yarn 1.7e-7 / 0.093."""

    def unscaled(heads, cap):
        def fn(lh):
            dh = lh.head_dim
            return {"rotary": dataclasses.replace(lh.rotary, inv_freq=100.0 ** (-np.arange(0, dh, 2) / dh),
                                                  attention_scaling=1.0, rope_type="default")}

        bad = _broken(heads, fn)
        return bad, _tables_for(cap, bad)

    _check_control(setup, f"llama-{kind}", unscaled)


def test_gate_detects_qwen3_gain_read_as_gemma(setup):
    """Qwen3's QK-norm gain is ``w``, not Gemma's ``1 + w``: measured 5.1e-7 exact, 7.7 broken."""
    _check_control(setup, "qwen3", lambda h, c: (_broken(h, lambda lh: {"q_gain": 1 + lh.q_gain, "k_gain": 1 + lh.k_gain}), c))


def test_gate_detects_granite_scale_read_as_default(setup):
    """Granite's ``attention_multiplier`` (0.8 here) replaced by 1/√d_h: measured 1.8e-7 exact,
    0.066 broken."""
    _check_control(setup, "granite", lambda h, c: (_broken(h, lambda lh: {"scale": lh.head_dim**-0.5}), c))


# ---------- soft-capping (docs/math.md §3.21) ----------


def test_softcap_terms_sum_to_the_precap_logit_and_relative_attention_is_capped(setup):
    """Terms sum to the pre-cap logit; ``capped_logit = cap·tanh(logit/cap)``; relative attention
    (Σ of the contributions) is that of the capped logits, i.e. the model's log-attention
    contrast; it differs from the pre-cap one (the cap bites); both controls keep the totals."""
    _, heads, cap, pairs = setup("gemma2")
    c = heads.layers[0].softcap
    d = decompose(heads, cap, pairs, keep_key_terms=True)
    np.testing.assert_allclose(d.terms.sum(1), d.logit, rtol=0, atol=1e-15)
    np.testing.assert_allclose(d.capped_logit, c * np.tanh(d.logit / c), rtol=1e-14)
    assert np.abs(d.capped_logit - d.logit).max() > 0.1 * np.abs(d.logit).max()
    np.testing.assert_allclose(d.contributions.sum(1), d.relative_attention, rtol=0, atol=1e-15)
    np.testing.assert_allclose(d.contributions_rotated.sum(1), d.relative_attention, rtol=0, atol=1e-12)
    precap_rel = []
    for p in range(len(pairs)):
        lg = d.key_terms[p].sum(1)
        jj = int(np.flatnonzero(d.keys[p] == pairs.key_pos[p])[0])
        lc = c * np.tanh(lg / c)
        m = len(lg)
        np.testing.assert_allclose(d.relative_attention[p], lc[jj] - (lc.sum() - lc[jj]) / (m - 1), rtol=0, atol=1e-14)
        precap_rel.append(lg[jj] - (lg.sum() - lg[jj]) / (m - 1))
    assert np.abs(np.array(precap_rel) - d.relative_attention).max() > 1e-3


def test_softcapped_layers_take_the_per_key_route(setup):
    """The cap's factor couples query and key, so capped layers never sum keys first: the default
    call gives exactly what ``per_key=True`` gives (and without a cap the other layers' fields
    ``capped_logit == logit``)."""
    _, heads, cap, pairs = setup("gemma2")
    a, b = decompose(heads, cap, pairs, seed=3), decompose(heads, cap, pairs, seed=3, per_key=True)
    for f in ("terms", "contributions", "contributions_rotated", "contributions_paper_control", "logit", "capped_logit"):
        assert np.array_equal(getattr(a, f), getattr(b, f)), f
    _, heads, cap, pairs = setup("llama")
    d = decompose(heads, cap, pairs, controls=False)
    assert np.array_equal(d.capped_logit, d.logit)


def test_a_cap_the_module_does_not_apply_is_not_applied(tiny):
    """Gemma3's attention keeps ``attn_logit_softcapping`` but never passes it on: with one set
    the model's attention is uncapped, and so is the decomposition (exact, no cap read)."""
    from transformers import AutoModel

    cfg = tiny.config("gemma3_text")
    cfg.attn_logit_softcapping = 0.01
    torch.manual_seed(0)
    model = AutoModel.from_config(cfg, attn_implementation="eager", dtype=torch.float64).eval()
    heads = extract_heads(model)
    assert all(lh.softcap is None for lh in heads.layers)
    ids, mask = tiny.inputs("gemma3_text", n=16, batch=2)
    cap = capture(model, ids, mask, heads=heads)
    assert _error(heads, cap, top_attended_pairs(cap)) < EXACT


# ---------- length-dependent RoPE (docs/math.md §3.20) ----------


def test_dynamic_rope_is_refused_beyond_its_original_length(tiny):
    """Dynamic NTK scaling keeps its frequencies up to max_position_embeddings (16 here) and
    rescales them beyond: a longer prompt is a ValueError before the forward pass."""
    model = tiny.model("llama-dynamic")
    heads = extract_heads(model)
    ids, mask = tiny.inputs("llama-dynamic", n=20, batch=1)
    with pytest.raises(ValueError, match="'dynamic' RoPE changes its frequencies.*at most 16 tokens"):
        capture(model, ids, mask, heads=heads)


def test_dynamic_rope_state_left_by_a_long_forward_is_caught(tiny):
    """A forward pass over a long prompt leaves the rotary module's inv_freq rescaled, and
    transformers keeps it for prompts up to the original length (it restores the original
    frequencies only for a shorter prompt). Heads describe the original frequencies, so a capture
    rotated with the stale ones is refused, naming the remedy; after a shorter prompt it is exact."""
    model = tiny.model("llama-dynamic")
    rot = next(m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding"))
    heads = extract_heads(model)
    with torch.no_grad():
        model(input_ids=torch.randint(1, 60, (1, 24)))
    assert not torch.equal(rot.inv_freq, rot.original_inv_freq)  # rescaled by the long prompt
    ids, mask = tiny.inputs("llama-dynamic", n=16, batch=2)
    with pytest.raises(ValueError, match="rotated this batch with frequencies other than its original ones.*reload"):
        capture(model, ids, mask, heads=heads)
    with torch.no_grad():
        model(input_ids=torch.randint(1, 60, (1, 8)))  # shorter than 16: the module restores them
    assert extract_heads(model).layers[0].rotary.inv_freq.tolist() == heads.layers[0].rotary.inv_freq.tolist()
    cap = capture(model, ids, mask, heads=heads)
    assert _error(heads, cap, top_attended_pairs(cap)) < 2e-6


# ---------- bad input: options that cannot be decomposed exactly ----------


def test_qk_layernorm_bias_is_refused(tiny):
    model = tiny.model("stablelm")
    mod = attention_modules(model)[1]
    mod.k_layernorm.norms[0] = torch.nn.LayerNorm(mod.head_dim, bias=True, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"layer 1: k_layernorm\.norms\[0\] has a bias.*cannot decompose it exactly"):
        extract_heads(model)


def test_unsupported_rope_type_is_refused(tiny):
    model = tiny.model("llama")
    rot = next(m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding"))
    rot.rope_type = "proportional"
    with pytest.raises(ValueError, match="RoPE type 'proportional' is not supported.*dynamic"):
        extract_heads(model)


def test_gptj_rotary_table_of_another_width_is_refused(tiny):
    """A GPT-J attention that rotates its whole head (``rotary_dim`` None) while the model's
    table covers 4 dims."""
    model = tiny.model("gptj")
    attention_modules(model)[0].rotary_dim = None
    with pytest.raises(ValueError, match="rotary table covers 4 dims but the attention rotates 8"):
        extract_heads(model)


def test_layer_heads_refuse_inconsistent_norm_options(setup):
    _, heads, _, _ = setup("olmo2")
    lh = heads.layers[0]
    with pytest.raises(ValueError, match="whole projection"):
        dataclasses.replace(lh, norm_center=True)
    with pytest.raises(ValueError, match="norm_scope"):
        dataclasses.replace(lh, norm_scope="token")
    with pytest.raises(ValueError, match="softcap"):
        dataclasses.replace(lh, softcap=0.0)
