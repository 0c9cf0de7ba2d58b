"""Head extraction: layouts against the modules' own projections, GQA, RoPE, bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.real.heads import SUPPORTED_ARCHITECTURES, attention_modules, extract_heads, rope_matrix

ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "bert")
#: The added families (tests/real/conftest.py NEW_ARCHS).
NEW_ARCHS = ("granite", "qwen3", "phi3", "stablelm", "smollm3", "llama-llama3", "llama-linear", "llama-yarn",
             "llama-dynamic", "gptj", "cohere", "olmo2", "gemma2")


def _order(lh):
    """svfcheck's head coordinate c is the model's coordinate ``order[c]`` (interleaved rotary)."""
    r = lh.rotary
    if r is None or r.head_order is None:
        return torch.arange(lh.head_dim)
    return torch.as_tensor(np.concatenate([r.head_order, np.arange(r.rotary_dim, lh.head_dim)]))


def _module_qk(arch, mod, x):
    """Per-head raw queries/keys (H, n, d_h) computed by the module's own projection layers."""
    if arch == "phi3":
        dh, Hkv = mod.head_dim, mod.num_key_value_heads
        qkv = mod.qkv_proj(x)
        nq = qkv.shape[-1] - 2 * Hkv * dh
        q, k = qkv[..., :nq], qkv[..., nq : nq + Hkv * dh]
    elif arch == "gpt2":
        q, k, _ = mod.c_attn(x).split(mod.split_size, dim=-1)
        dh = mod.head_dim
    elif arch == "gpt_neox":
        dh = mod.head_size
        qkv = mod.query_key_value(x).view(x.shape[0], -1, 3 * dh)
        return qkv[..., :dh].transpose(0, 1), qkv[..., dh : 2 * dh].transpose(0, 1)
    elif arch == "bert":
        q, k, dh = mod.query(x), mod.key(x), mod.attention_head_size
    else:
        q, k, dh = mod.q_proj(x), mod.k_proj(x), mod.head_dim
    return q.view(x.shape[0], -1, dh).transpose(0, 1), k.view(x.shape[0], -1, dh).transpose(0, 1)


@pytest.mark.parametrize("arch", ARCHS + NEW_ARCHS)
def test_extracted_maps_reproduce_module_projections(arch, tiny_models):
    """Per head, the extracted maps give the module's own raw queries and keys — for interleaved
    rotary (GPT-J, Cohere) in the permuted coordinates ``head_order`` names (docs/math.md §3.18)."""
    model = tiny_models(arch)
    heads = extract_heads(model)
    assert heads.architecture == arch.split("-")[0]
    x = torch.randn(5, model.config.hidden_size, dtype=torch.float64)
    for lh, mod in zip(heads.layers, attention_modules(model)):
        q_mod, k_mod = (t[..., _order(lh)] for t in _module_qk(arch, mod, x))
        q = torch.einsum("nd,hde->hne", x, lh.W_Q) + (0 if lh.b_Q is None else lh.b_Q[:, None])
        k = torch.einsum("nd,hde->hne", x, lh.W_K) + (0 if lh.b_K is None else lh.b_K[:, None])
        torch.testing.assert_close(q, q_mod, rtol=0, atol=1e-12)
        torch.testing.assert_close(k, k_mod, rtol=0, atol=1e-12)
        assert lh.scale == mod.scaling


def test_feature_flags_per_architecture(tiny_models):
    h = {a: extract_heads(tiny_models(a)) for a in ARCHS}
    assert h["gpt2"].layers[0].rotary is None and h["gpt2"].layers[0].has_bias and h["gpt2"].layers[0].causal
    assert h["bert"].layers[0].causal is False and h["bert"].layers[0].has_bias
    assert h["gpt_neox"].layers[0].rotary.rotary_dim == 4 and h["gpt_neox"].layers[0].head_dim == 16
    assert h["qwen2"].layers[0].has_bias and not h["llama"].layers[0].has_bias
    assert (h["llama"].layers[0].n_heads, h["llama"].layers[0].n_kv_heads) == (4, 2)
    assert [lh.sliding_window for lh in h["mistral"].layers] == [5, 5]
    g = h["gemma3_text"]
    assert [lh.sliding_window for lh in g.layers] == [4, None, 4]
    assert g.layers[0].scale == pytest.approx(24**-0.5)
    np.testing.assert_allclose(g.layers[0].rotary.inv_freq[1], 10.0 ** (-2 / 16))  # local theta
    np.testing.assert_allclose(g.layers[1].rotary.inv_freq[1], 1000.0 ** (-2 / 16))  # global theta


def test_feature_flags_of_the_added_families(tiny_models):
    """Each added family's non-default options reach its extracted heads (docs/math.md §3.17–§3.21)."""
    h = {a: extract_heads(tiny_models(a)) for a in NEW_ARCHS}
    assert h["granite"].layers[0].scale == pytest.approx(0.8)  # attention_multiplier, not d_h^-1/2
    assert (h["phi3"].layers[0].rotary.rotary_dim, h["phi3"].layers[0].head_dim) == (4, 8)
    st = h["stablelm"].layers[0]
    assert (st.rotary.rotary_dim, st.head_dim) == (4, 16) and st.has_bias and st.norm_center
    assert st.q_gain.shape == (2, 16) and st.k_gain.shape == (1, 16)
    assert [lh.rotary is None for lh in h["smollm3"].layers] == [False, True, False]  # the NoPE layer
    gj = h["gptj"].layers[0]
    assert (gj.rotary.convention, gj.rotary.tables, gj.rotary.rotary_dim, gj.head_dim) == ("interleaved", "sin_cos_half", 4, 8)
    co = h["cohere"].layers[0]
    assert co.rotary.convention == "interleaved" and co.norm_center and co.q_gain.shape == (4, 8) and co.has_bias
    ol = h["olmo2"].layers[0]
    assert ol.norm_scope == "all" and ol.q_gain.shape == (4, 8) and ol.k_gain.shape == (2, 8) and not ol.norm_center
    qw = h["qwen3"].layers[0]
    assert qw.q_gain.shape == (16,) and qw.norm_shared and qw.has_bias
    g2 = h["gemma2"]
    assert [lh.softcap for lh in g2.layers] == [0.05, 0.05] and [lh.sliding_window for lh in g2.layers] == [4, None]
    assert g2.layers[0].scale == pytest.approx(24**-0.5)
    default = 100.0 ** (-np.arange(0, 8, 2) / 8)
    for kind in ("llama3", "linear", "yarn"):
        r = h[f"llama-{kind}"].layers[0].rotary
        assert r.rope_type == kind and r.max_positions is None and not np.allclose(r.inv_freq, default)
    assert h["llama-yarn"].layers[0].rotary.attention_scaling > 1.0
    dyn = h["llama-dynamic"].layers[0].rotary
    assert dyn.rope_type == "dynamic" and dyn.max_positions == 16
    np.testing.assert_allclose(dyn.inv_freq, default, rtol=1e-6)  # unscaled up to 16 positions


@pytest.mark.parametrize("arch", ["gemma3_text", "qwen3", "olmo2", "cohere", "stablelm"])
def test_qk_norm_reproduces_the_module_norm(arch, tiny_models):
    """``g ⊙ P a / σ(a)`` from the extracted gains, centring, scope and eps equals the module's own
    query and key norm applied the way its attention applies it (docs/math.md §3.12, §3.19)."""
    model = tiny_models(arch)
    x = torch.randn(5, model.config.hidden_size, dtype=torch.float64)
    for lh, mod in zip(extract_heads(model).layers, attention_modules(model)):
        q_raw, k_raw = _module_qk(arch, mod, x)  # (heads, n, d_h), the model's coordinates
        for raw, norm, gain in ((q_raw, _norm(arch, mod, "q"), lh.q_gain), (k_raw, _norm(arch, mod, "k"), lh.k_gain)):
            expect = norm(raw)[..., _order(lh)]
            a = raw[..., _order(lh)]
            a = a - a.mean(-1, keepdim=True) if lh.norm_center else a
            ms = a.pow(2).mean((0, 2), keepdim=True) if lh.norm_scope == "all" else a.pow(2).mean(-1, keepdim=True)
            got = (gain if gain.dim() == 1 else gain[:, None, :]) * a / torch.sqrt(ms + lh.norm_eps)
            torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)  # most of these norms run in float32


def _norm(arch, mod, which):
    """The module's own q or k norm as a function of raw (heads, n, d_h) projections."""
    if arch == "stablelm":
        ln = getattr(mod, f"{which}_layernorm")
        return lambda a: ln(a[None])[0]  # (batch, heads, n, d_h)
    norm = getattr(mod, f"{which}_norm")
    if arch == "olmo2":  # over the whole projection, before the head split
        return lambda a: norm(a.transpose(0, 1).reshape(a.shape[1], -1)).view(a.shape[1], a.shape[0], -1).transpose(0, 1)
    return lambda a: norm(a.transpose(0, 1)).transpose(0, 1)  # (n, heads, d_h) as the modules see it


def test_gemma_qk_norm_gain_is_one_plus_weight(tiny_models):
    model = tiny_models("gemma3_text")
    mod = attention_modules(model)[1]
    lh = extract_heads(model).layers[1]
    x = torch.randn(3, lh.head_dim, dtype=torch.float64)
    expect = mod.q_norm(x)  # the module's own norm
    got = lh.q_gain * x / torch.sqrt(x.pow(2).mean(-1, keepdim=True) + lh.norm_eps)
    torch.testing.assert_close(got, expect, rtol=1e-6, atol=1e-6)  # the module norms in float32
    assert not torch.allclose(lh.q_gain, mod.q_norm.weight.detach())


def test_gqa_mapping_matches_transformers_repeat_kv(tiny_models):
    from transformers.models.llama.modeling_llama import repeat_kv

    lh = extract_heads(tiny_models("llama")).layers[0]
    groups = lh.n_heads // lh.n_kv_heads
    k = torch.arange(lh.n_kv_heads, dtype=torch.float64).view(1, lh.n_kv_heads, 1, 1)
    rep = repeat_kv(k, groups).view(-1).long().numpy()
    assert rep.tolist() == [lh.kv_head(h) for h in range(lh.n_heads)]
    assert rep.tolist() == [0, 0, 1, 1]


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gemma3_text"])
def test_rope_matrix_is_relative_rotation_of_the_model(arch, tiny_models):
    """qᵀ R_Δ k equals the model's rotated q at position i dotted with rotated k at j = i + Δ."""
    from transformers.models.gpt_neox.modeling_gpt_neox import apply_rotary_pos_emb

    model = tiny_models(arch)
    heads = extract_heads(model)
    rot = next(m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding"))
    lh = heads.layers[0]
    pos = torch.arange(20)[None]
    x = torch.zeros(1, 20, lh.head_dim, dtype=torch.float64)
    cos, sin = rot(x, pos, "sliding_attention") if arch == "gemma3_text" else rot(x, pos)
    q = torch.randn(lh.head_dim, dtype=torch.float64)
    k = torch.randn(lh.head_dim, dtype=torch.float64)
    qq = q.expand(1, 1, 20, -1)
    kk = k.expand(1, 1, 20, -1)
    qr, kr = apply_rotary_pos_emb(qq, kk, cos, sin)
    i, j = 3, 17
    model_logit = float(qr[0, 0, i] @ kr[0, 0, j])
    R = rope_matrix(lh.rotary, lh.head_dim, [j - i])[0]
    assert float(q @ R @ k) == pytest.approx(model_logit, rel=1e-6)  # model angles are float32
    wrong = rope_matrix(lh.rotary, lh.head_dim, [j - i + 1])[0]
    assert abs(float(q @ wrong @ k) - model_logit) > 1e-3


def test_unsupported_architecture_names_supported_ones():
    import transformers as tf

    t5 = tf.T5Model(tf.T5Config(vocab_size=32, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=4))
    with pytest.raises(ValueError, match="unsupported architecture 't5'.*gpt2.*llama"):
        extract_heads(t5)

    class Fake(torch.nn.Module):
        config = type("C", (), {"model_type": "my_arch"})()

    with pytest.raises(ValueError, match="supported: " + ", ".join(sorted(SUPPORTED_ARCHITECTURES))):
        extract_heads(Fake())


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_name_the_layer(bad, tiny):
    model = tiny.model("llama")
    with torch.no_grad():
        attention_modules(model)[1].k_proj.weight[2, 3] = bad
    with pytest.raises(ValueError, match="layer 1: W_K contains NaN or inf"):
        extract_heads(model)


def test_layer_and_head_out_of_range(tiny_models):
    heads = extract_heads(tiny_models("gpt2"))
    with pytest.raises(IndexError, match=r"heads 0\.\.3"):
        heads.check(0, 4)
    with pytest.raises(IndexError, match=r"heads 0\.\.3"):
        heads.check(0, -1)
    with pytest.raises(IndexError, match=r"layers 0\.\.1"):
        heads.layer(2)
    assert heads.check(1, 3) == (1, 3)


def test_cached_heads_follow_weight_changes(tiny):
    from svfcheck.real.heads import cached_heads

    model = tiny.model("gpt2")
    a = cached_heads(model)
    assert cached_heads(model) is a
    with torch.no_grad():
        attention_modules(model)[0].c_attn.weight[0, 0] += 1.0
    b = cached_heads(model)
    assert b is not a
    assert float(b.layers[0].W_Q[0, 0, 0] - a.layers[0].W_Q[0, 0, 0]) == pytest.approx(1.0)
