"""Token readouts of singular vectors (docs/math.md §5.1–§5.2).

References are computed here without the readout code: the head inputs are captured from the
model itself (a forward pre-hook on the attention module, one-token prompts), the singular
vectors come from a dense numpy SVD of ``W̃_Q G_q G_k W̃_Kᵀ`` for the key head h // (H/H_kv),
QK-norm's ``1/rms`` from the module's own ``q_proj``/``k_proj`` and norm eps, and the
unembedding from the final norm module applied to the direction. The library reads its basis
from the SVD cache and its inputs through its own code path, so the two meet only in the model.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from svfcheck.real.heads import SUPPORTED_ARCHITECTURES, attention_modules, extract_heads, rope_matrix
from svfcheck.real.readouts import HeadBasis, head_basis, norm_map, singular_readouts, token_readouts
from svfcheck.toy.anisotropy import paper_dictionary
from tests._planted_heads import plant_head, tiny_llama, train_toy_head

#: float64 models; scores are dot products of float64 vectors of norm ≲ 10, so both paths agree
#: to ~1e-14 relative. Gemma3's RMSNorm computes in float32 inside the module, identically in
#: both paths for the head inputs, but the unembedding's final norm is applied to a different
#: vector (the reference calls the module on u, the library measures the gain once): 1e-5.
RTOL = 1e-9
RTOL_UNEMBED = {"gemma3_text": 1e-5}


def _zero_positions(model, arch: str) -> None:
    """GPT-2 and BERT add absolute position embeddings; the readout leaves them out (§5.2)."""
    with torch.no_grad():
        if arch == "gpt2":
            model.wpe.weight.zero_()
        if arch == "bert":
            model.embeddings.position_embeddings.weight.zero_()


def _captured_inputs(model, layer: int) -> torch.Tensor:
    """Every token's head input at ``layer`` as the model computes it, from one-token prompts."""
    got = {}

    def hook(mod, args, kwargs):
        got["x"] = kwargs.get("hidden_states", args[0] if args else None).detach()

    h = attention_modules(model)[layer].register_forward_pre_hook(hook, with_kwargs=True)
    V = model.get_input_embeddings().weight.shape[0]
    with torch.no_grad():
        model(input_ids=torch.arange(V)[:, None], attention_mask=torch.ones(V, 1, dtype=torch.long))
    h.remove()
    return got["x"][:, 0, :].double()


def _dense_basis(model, layer: int, head: int, r: int):
    """(U, S, V) top-r of the dense Ω̃(0) = W̃_Q L_qᵀ R_0 L_k W̃_Kᵀ (numpy SVD) and the key head,
    from the extracted weights; L = diag(g)·P is the QK-norm's linear part (P removes the mean
    for a LayerNorm; docs/math.md §3.19), R_0 the rotation at offset 0 (attention_scaling²)."""
    lh = extract_heads(model).layer(layer)
    g = head // (lh.n_heads // lh.n_kv_heads)
    dh = lh.head_dim

    def aug(W, b, i):
        W = W[i].double().numpy()
        if not lh.has_bias:
            return W
        return np.vstack([W, np.zeros(W.shape[1]) if b is None else b[i].double().numpy()])

    def lin(gain, i):
        gain = gain.double().numpy()
        gain = gain if gain.ndim == 1 else gain[i]
        P = np.eye(dh) - (1.0 / dh if getattr(lh, "norm_center", False) else 0.0)
        return gain[:, None] * P

    WQ, WK = aug(lh.W_Q, lh.b_Q, head), aug(lh.W_K, lh.b_K, g)
    R0 = np.eye(dh) if lh.rotary is None else rope_matrix(lh.rotary, dh, [0])[0].numpy()
    M = R0 if not lh.qk_norm else lin(lh.q_gain, head).T @ R0 @ lin(lh.k_gain, g)
    U, S, Vt = np.linalg.svd(WQ @ M @ WK.T)
    return U[:, :r], S[:r], Vt[:r].T, g


def _sigmas(model, layer: int, head: int, g: int, Xt: np.ndarray):
    """QK-norm's per-token σ of the raw query and key (docs/math.md §3.12, §3.19), from the
    extracted maps: over the head's coordinates (mean removed for a LayerNorm), or over the whole
    projection (OLMo-2). (1, 1) without QK-norm."""
    lh = extract_heads(model).layer(layer)
    if not lh.qk_norm:
        return 1.0, 1.0
    wq, wk = (w.double().numpy() for w in lh.augmented(torch.float64))

    def sigma(W, i):
        if getattr(lh, "norm_scope", "head") == "all":
            a = np.einsum("nd,hde->nhe", Xt, W)
            return np.sqrt((a ** 2).mean((1, 2)) + lh.norm_eps)
        a = Xt @ W[i]
        if getattr(lh, "norm_center", False):
            a = a - a.mean(-1, keepdims=True)
        return np.sqrt((a ** 2).mean(-1) + lh.norm_eps)

    return sigma(wq, head), sigma(wk, g)


def _qk_norm_factors(model, layer: int, head: int, g: int, X: torch.Tensor):
    """Gemma3: ``1/rms`` of the raw query and key of every token, from the module's own
    ``q_proj``/``k_proj`` and its ``q_norm`` eps (a check on :func:`_sigmas`)."""
    attn = attention_modules(model)[layer]
    dh = attn.head_dim
    with torch.no_grad():
        a = attn.q_proj(X.to(attn.q_proj.weight.dtype)).double().view(len(X), -1, dh)[:, head]
        b = attn.k_proj(X.to(attn.k_proj.weight.dtype)).double().view(len(X), -1, dh)[:, g]
    eps = attn.q_norm.eps
    return (1 / torch.sqrt(a.pow(2).mean(-1) + eps)).numpy(), (1 / torch.sqrt(b.pow(2).mean(-1) + eps)).numpy()


def _ids(lst):
    return [t["id"] for t in lst]


def _check_poles(row: dict, alpha: np.ndarray, beta: np.ndarray, k: int, prefix=("query", "key"), rtol=RTOL) -> int:
    """The row's poles are the top/bottom k of σα (query) and σβ (key) with one sign σ for both
    sides (flipping u alone would pair the wrong poles); returns σ."""
    q, kk = prefix
    top = list(np.argsort(-alpha, kind="stable")[:k])
    sigma = 1 if _ids(row[f"{q}_top"]) == top else -1
    for side, score in ((q, alpha), (kk, beta)):
        s = sigma * score
        assert _ids(row[f"{side}_top"]) == list(np.argsort(-s, kind="stable")[:k]), side
        assert _ids(row[f"{side}_bottom"]) == list(np.argsort(s, kind="stable")[:k]), side
        for pole in ("top", "bottom"):
            got = np.array([t["score"] for t in row[f"{side}_{pole}"]])
            np.testing.assert_allclose(got, s[_ids(row[f"{side}_{pole}"])], rtol=rtol, atol=1e-13)
    return sigma


ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "bert")
#: The further families of docs/math.md §3.17 (tiny configs in tests/real/conftest.py with their
#: special options on): per-head / LayerNorm / whole-projection QK-norm, no input norm (OLMo-2),
#: Cohere's own LayerNorm, Gemma-2's scaled embedding, Granite's multipliers, scaled RoPE.
NEW_ARCHS = ("granite", "qwen3", "phi3", "stablelm", "smollm3", "gptj", "cohere", "olmo2", "gemma2", "llama-yarn")


@pytest.mark.parametrize("arch", ARCHS + NEW_ARCHS)
def test_layer0_readouts_match_the_model(arch, tiny):
    """Layer 0, the last head (a GQA key head ≠ the query head), top 3 triples, 5 tokens per
    pole: ids and scores equal the reference built from the model's own head inputs (position
    embeddings zeroed for GPT-2/BERT), a dense SVD, and QK-norm's σ of the raw query and key."""
    if arch.split("-")[0] not in SUPPORTED_ARCHITECTURES:
        pytest.skip(f"{arch} is not among the supported architectures of this checkout")
    model = tiny.model(arch, dtype=torch.float64, seed=4)
    _zero_positions(model, arch)
    H = extract_heads(model).layer(0).n_heads
    r, k = 3, 5
    rows = singular_readouts(model, [(0, H - 1)], top_r=r, top_tokens=k)
    assert [row["index"] for row in rows] == list(range(r))
    X = _captured_inputs(model, 0)
    U, S, V, g = _dense_basis(model, 0, H - 1, r)
    Xt = np.hstack([X.numpy(), np.ones((len(X), 1))]) if U.shape[0] == X.shape[1] + 1 else X.numpy()
    sq, sk = _sigmas(model, 0, H - 1, g, Xt)
    if arch == "gemma3_text":  # the reference σ against the module's own projections and norm eps
        nq, nk = _qk_norm_factors(model, 0, H - 1, g, X)
        np.testing.assert_allclose(1 / sq, nq, rtol=1e-12)
        np.testing.assert_allclose(1 / sk, nk, rtol=1e-12)
    for i, row in enumerate(rows):
        assert row["kv_head"] == g and row["singular_value"] == pytest.approx(S[i], rel=1e-10)
        assert row["token_path"] == ("layer input" if arch not in ("gpt2", "bert") else "layer input without position embedding")
        _check_poles(row, (Xt @ U[:, i]) / sq, (Xt @ V[:, i]) / sk, k)


@pytest.mark.parametrize("arch", ["gpt2", "gemma3_text"])
def test_unembedding_readouts_match_the_final_norm_and_tied_embeddings(arch, tiny):
    """Base models that tie their embeddings: scores W_E · N_f(u)/‖N_f(u)‖ with N_f(u) = f(u) − f(0)
    by the final norm module itself; the unembedding's poles carry the same sign as the query's."""
    model = tiny.model(arch, dtype=torch.float64, seed=5)
    _zero_positions(model, arch)
    rows = singular_readouts(model, [(0, 1)], top_r=2, top_tokens=4)
    U, _, V, _ = _dense_basis(model, 0, 1, 2)
    d = model.get_input_embeddings().weight.shape[1]
    fnorm = model.ln_f if arch == "gpt2" else model.norm
    W = model.get_input_embeddings().weight.detach().double().numpy()
    X = _captured_inputs(model, 0)
    for i, row in enumerate(rows):
        assert row["unembedding"].startswith("tied input embeddings")
        with torch.no_grad():
            f = [(fnorm(torch.from_numpy(x[:d])[None]) - fnorm(torch.zeros(1, d, dtype=torch.float64)))[0].numpy()
                 for x in (U[:, i], V[:, i])]
        su, sv = (W @ (x / np.linalg.norm(x)) for x in f)
        sigma = _check_poles(row, su, sv, 4, prefix=("unembed_u", "unembed_v"), rtol=RTOL_UNEMBED.get(arch, RTOL))
        # the query poles have the unembedding's orientation (the same u_r)
        Xt = np.hstack([X.numpy(), np.ones((len(X), 1))]) if U.shape[0] == d + 1 else X.numpy()
        alpha = Xt @ U[:, i]
        if arch == "gemma3_text":
            alpha = alpha * _qk_norm_factors(model, 0, 1, 0, X)[0]
        assert _ids(row["query_top"])[0] == int(np.argmax(sigma * alpha))


def test_deeper_layers_read_the_direct_path_through_their_own_norm(tiny):
    """Layer 1 of a Llama: x_t = layers[1].input_layernorm(E[t]) (not layer 0's norm: the tiny
    model's norm gains are random per layer)."""
    model = tiny.model("llama", dtype=torch.float64, seed=6)
    rows = singular_readouts(model, [(1, 2)], top_r=2, top_tokens=5)
    with torch.no_grad():
        X = model.layers[1].input_layernorm(model.embed_tokens.weight).double().numpy()
    U, _, V, _ = _dense_basis(model, 1, 2, 2)
    for i, row in enumerate(rows):
        assert row["token_path"] == "direct path" and row["input_norm"].endswith("layers.1.input_layernorm")
        _check_poles(row, X @ U[:, i], X @ V[:, i], 5)
        assert row["unembedding"].startswith("none")  # a base Llama: no lm_head, untied


def test_flipping_a_singular_pair_changes_nothing_but_flipping_one_side_does(tiny):
    """(u_r, v_r) → (−u_r, −v_r) is the same matrix: identical output. Negating u_r alone is a
    different matrix (negative control): its query poles swap relative to the key poles."""
    model = tiny.model("qwen2", dtype=torch.float64, seed=7)
    from svfcheck.real.heads import cached_heads

    b = head_basis(cached_heads(model), 1, 3, 3)
    flip = np.array([-1.0, 1.0, -1.0])
    both = HeadBasis(b.layer, b.head, b.kv_head, b.U * flip, b.S, b.V * flip, b.d_model, b.scale)
    one = HeadBasis(b.layer, b.head, b.kv_head, b.U * flip, b.S, b.V, b.d_model, b.scale)
    ref = token_readouts(model, [b], top_tokens=4)
    assert token_readouts(model, [both], top_tokens=4) == ref
    bad = token_readouts(model, [one], top_tokens=4)
    assert bad[1] == ref[1] and bad[0] != ref[0]
    assert _ids(bad[0]["key_top"]) == _ids(ref[0]["key_bottom"])


@pytest.fixture(scope="module")
def planted_tokens():
    """The toy head trained on planted features (App. C.3 dictionary, ε = 0: u_0 ↔ a_0, v_0 ↔ a_4,
    Λ[0, 4] = 24 > 0) in head 1 of a tiny tied Llama; embedding rows: token 2 = a_0, 3 = −a_0,
    4 = a_4, 5 = −a_4, the rest the model's N(0, 0.02²) initialisation."""
    A = paper_dictionary(0.0, np.random.default_rng(0))
    WQ, WK = train_toy_head(A, "toy", steps=4000)
    model = tiny_llama(10, 10, 2, 1, vocab=40, tie=True)
    plant_head(model, 0, 1, WQ, WK)
    with torch.no_grad():
        E = model.get_input_embeddings().weight
        for tok, vec in ((2, A[:, 0]), (3, -A[:, 0]), (4, A[:, 4]), (5, -A[:, 4])):
            E[tok] = torch.from_numpy(vec)
    return model


def test_planted_tokens_land_in_the_right_poles(planted_tokens):
    """Singular index 0: the pole whose top query token is a_0's token (2) has a_4's token (4) as
    its top key (their term is positive: Λ[0,4] > 0); the other pole has −a_0 (3) and −a_4 (5).
    The unembedding (tied) of u_0 and v_0 points at the same tokens, in the same poles."""
    row = singular_readouts(planted_tokens, [(0, 1)], top_r=1, top_tokens=3)[0]
    pos, neg = ("top", "bottom") if row["query_top"][0]["id"] == 2 else ("bottom", "top")
    assert row[f"query_{pos}"][0]["id"] == 2 and row[f"key_{pos}"][0]["id"] == 4
    assert row[f"query_{neg}"][0]["id"] == 3 and row[f"key_{neg}"][0]["id"] == 5
    assert row[f"unembed_u_{pos}"][0]["id"] == 2 and row[f"unembed_v_{pos}"][0]["id"] == 4
    assert row[f"unembed_u_{neg}"][0]["id"] == 3 and row[f"unembed_v_{neg}"][0]["id"] == 5
    assert row["unembedding"] == "lm_head (tied to the input embeddings)"


def test_tokenizer_names_the_tokens(tiny):
    from tests._tiny_models import word_tokenizer

    tok = word_tokenizer([" ".join(f"w{i}" for i in range(80))])
    model = tiny.model("gpt2", dtype=torch.float64)
    row = singular_readouts(model, [(0, 0)], tokenizer=tok, top_r=1, top_tokens=3)[0]
    for t in row["query_top"] + row["key_bottom"]:
        assert t["token"] == tok.decode([t["id"]])
    assert singular_readouts(model, [(0, 0)], top_r=1, top_tokens=3)[0]["query_top"][0]["token"] is None


# ----------------------------------------------------------------------------- bad input


@pytest.mark.parametrize("heads, match", [
    ([(2, 0)], r"layer 2 is out of range; the model has layers 0\.\.1"),
    ([(0, 4)], r"head 4 is out of range; layer 0 has heads 0\.\.3"),
    ([(0, -1)], r"head -1 is out of range"),
    ([(0, 1), (0, 1)], "listed twice"),
    ([], "no heads given"),
    ([(0,)], "pair of whole numbers"),
    ([(0, 1.0)], "pair of whole numbers"),
    ([(True, 1)], "pair of whole numbers"),
    ([3], "pair of whole numbers"),
])
def test_bad_heads_are_named(heads, match, tiny_models):
    with pytest.raises(ValueError, match=match):
        singular_readouts(tiny_models("gpt2"), heads, top_r=1, top_tokens=1)


@pytest.mark.parametrize("top_r", [0, 9, -1, True, 2.0])
def test_bad_top_r_names_the_head_dimension(top_r, tiny_models):
    with pytest.raises(ValueError, match="head dimension d_h = 8"):
        singular_readouts(tiny_models("gpt2"), [(0, 0)], top_r=top_r)


@pytest.mark.parametrize("top_tokens", [0, 65, 1.5])
def test_bad_top_tokens_names_the_vocabulary(top_tokens, tiny_models):
    with pytest.raises(ValueError, match="vocabulary size 64"):
        singular_readouts(tiny_models("gpt2"), [(0, 0)], top_r=1, top_tokens=top_tokens)


def test_unsupported_models_and_norms_are_refused():
    with pytest.raises(ValueError, match="transformers model or a LoadedModel"):
        singular_readouts(np.zeros(3))
    from transformers import OPTConfig, OPTForCausalLM

    opt = OPTForCausalLM(OPTConfig(vocab_size=16, hidden_size=8, word_embed_proj_dim=8, num_hidden_layers=1,
                                   num_attention_heads=2, ffn_dim=16, max_position_embeddings=8))
    with pytest.raises(ValueError, match="unsupported architecture 'opt'"):
        singular_readouts(opt)
    with pytest.raises(ValueError, match="not supported"):
        norm_map(torch.nn.Tanh(), "fake", 8)  # not a gain on directions
    assert norm_map(torch.nn.Identity(), "id", 8).gain == pytest.approx(np.ones(8))


@pytest.mark.parametrize("arch, center, gain", [
    ("gpt2", True, "weight"), ("llama", False, "weight"), ("gemma3_text", False, "1+weight"), ("bert", None, None),
    ("cohere", True, "weight"), ("gemma2", False, "1+weight"), ("olmo2", None, None), ("stablelm", True, "weight"),
])
def test_input_norm_maps_are_the_norms_linear_parts(arch, center, gain, tiny):
    """The map from a residual-stream direction to the head's input, per family, against the
    norm's parameters (the tiny models' norm weights are random): LayerNorm (GPT-2, StableLM,
    Cohere's own class) centres and multiplies by its weight, RMSNorm multiplies by its weight,
    Gemma's by 1 + weight; post-norm BERT and OLMo-2 (no input norm) map nothing."""
    from svfcheck.real.readouts import input_norm_maps

    if arch not in SUPPORTED_ARCHITECTURES:
        pytest.skip(f"{arch} is not among the supported architectures of this checkout")
    model = tiny.model(arch, dtype=torch.float64, seed=8)
    maps = input_norm_maps(model)
    assert len(maps) == len(attention_modules(model))
    for layer, nm in enumerate(maps):
        if center is None:
            assert nm.gain is None and not nm.center
            continue
        block = attention_modules(model)[layer]
        names = {id(m): n for n, m in model.named_modules()}
        norm = model.get_submodule(names[id(block)].rpartition(".")[0] + (".ln_1" if arch == "gpt2" else ".input_layernorm"))
        w = norm.weight.detach().double().numpy()
        assert nm.center is center and nm.name.endswith("ln_1" if arch == "gpt2" else "input_layernorm")
        want = w if gain == "weight" else 1 + w
        scale = nm.gain[0] / want[0]  # a positive factor per map is irrelevant to directions
        assert scale > 0
        np.testing.assert_allclose(nm.gain, scale * want, rtol=1e-6)  # Gemma computes 1 + w in float32
