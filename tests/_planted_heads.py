"""Planted heads for the readout tests: known query/key maps written into tiny models.

- :func:`tiny_llama` / :func:`plant_head`: a float64 model whose head (layer, h) has exactly the
  given ``W_Q`` (d×d_h) and ``W_K`` (the maps of its key head kv(h)), zero q/k biases; checked
  against :func:`svfcheck.real.heads.extract_heads` (itself tested against the modules' own
  projections in tests/real/test_heads.py).
- :func:`train_toy_head`: the paper's toy head trained on a *frozen* dictionary (App. C.3,
  :mod:`svfcheck.toy.anisotropy`): only W_Q, W_K learn, so its singular vectors align with
  planted features (or, with the whitened teacher, with the whitened detectors of Theorem 1).
- :func:`frame`: orthonormal columns, optionally orthogonal to given vectors.
"""

from __future__ import annotations

import numpy as np
import torch


def frame(d: int, k: int, rng: np.random.Generator, avoid: np.ndarray | None = None) -> np.ndarray:
    """(d, k) orthonormal columns; with ``avoid`` (d, m) also orthogonal to its columns."""
    Z = rng.standard_normal((d, k))
    if avoid is not None:
        B, _ = np.linalg.qr(avoid)
        Z = Z - B @ (B.T @ Z)
    Q, R = np.linalg.qr(Z)
    return Q * np.sign(np.diag(R))


def tiny_llama(d: int, d_h: int, n_heads: int, n_kv: int, *, vocab: int = 32, layers: int = 1, seed: int = 0, tie: bool = True):
    """A seeded float64 LlamaForCausalLM (RoPE, RMSNorm gain 1, GQA when n_kv < n_heads)."""
    from transformers import AutoModelForCausalLM, LlamaConfig

    cfg = LlamaConfig(vocab_size=vocab, hidden_size=d, num_attention_heads=n_heads, num_key_value_heads=n_kv,
                      head_dim=d_h, intermediate_size=2 * d, num_hidden_layers=layers, max_position_embeddings=64,
                      tie_word_embeddings=tie)
    torch.manual_seed(seed)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float64, attn_implementation="eager").eval()


def plant_head(model, layer: int, head: int, WQ: np.ndarray, WK: np.ndarray) -> None:
    """Write ``W_Q[head] = WQ`` and ``W_K[kv(head)] = WK`` (d×d_h each) into a GPT-2 or Llama
    model, zeroing that head's q/k biases; asserts the extracted maps are exactly these."""
    from svfcheck.real.heads import attention_modules, extract_heads

    mod = attention_modules(model)[layer]
    lh = extract_heads(model).layer(layer)
    g, dh, d = int(lh.kv_head(head)), lh.head_dim, lh.d_model
    q, k = torch.from_numpy(np.asarray(WQ, dtype=np.float64)), torch.from_numpy(np.asarray(WK, dtype=np.float64))
    with torch.no_grad():
        if hasattr(mod, "c_attn"):  # GPT-2 Conv1D: y = x @ w + b, columns [q | k | v]
            w, b = mod.c_attn.weight, mod.c_attn.bias
            w[:, head * dh : (head + 1) * dh] = q.to(w.dtype)
            w[:, d + g * dh : d + (g + 1) * dh] = k.to(w.dtype)
            b[head * dh : (head + 1) * dh] = 0
            b[d + g * dh : d + (g + 1) * dh] = 0
        else:  # Llama family: nn.Linear rows per head
            mod.q_proj.weight[head * dh : (head + 1) * dh] = q.T.to(mod.q_proj.weight.dtype)
            mod.k_proj.weight[g * dh : (g + 1) * dh] = k.T.to(mod.k_proj.weight.dtype)
            for proj, h in ((mod.q_proj, head), (mod.k_proj, g)):
                if proj.bias is not None:
                    proj.bias[h * dh : (h + 1) * dh] = 0
    got = extract_heads(model).layer(layer)
    assert torch.equal(got.W_Q[head].double(), q) and torch.equal(got.W_K[g].double(), k)


def train_toy_head(A: np.ndarray, teacher: str, steps: int = 4000, seed: int = 0):
    """``(WQ, WK)`` (d×d_h, d_h = d) of the paper's toy head trained on the frozen dictionary
    ``A`` (d, 20), as in :func:`svfcheck.toy.anisotropy.anisotropy_experiment` (only W_Q, W_K
    learn; AdamW at a constant lr 1e-3; query and key features are both A).

    ``teacher="toy"``: the default pairs (0,4)…(3,7) with logits 24…15 and uniform strengths,
    so u_t aligns with a_t and v_t with a_{4+t} when the features of interest are orthonormal
    eigenvectors of Σ_A; ``"whitened"``: one pair (0,4), binary presence, the Theorem 1 teacher
    ``β Σ_A⁻¹a_0 a_4ᵀΣ_A⁻¹`` (β = 24c², c from ``isotropy``), whose unique minimiser has
    u ∝ Σ_A⁻¹a_0 and v ∝ Σ_A⁻¹a_4 (docs/math.md §2.3)."""
    from svfcheck.theory.dictionaries import frame_operator, isotropy
    from svfcheck.toy.config import ToyConfig, TrainConfig
    from svfcheck.toy.model import ToyModel
    from svfcheck.toy.train import train

    d, n = A.shape
    if teacher == "toy":
        cfg = ToyConfig(n=n, d=d, d_h=d, p=0.52, pairs=((0, 4, 24.0), (1, 5, 21.0), (2, 6, 18.0), (3, 7, 15.0)),
                        strengths="uniform", name="planted-toy")
        T = None
    else:
        c, _ = isotropy(A)
        cfg = ToyConfig(n=n, d=d, d_h=d, p=0.52, pairs=(), strengths="binary", name="planted-whitened")
        Si = np.linalg.inv(frame_operator(A))
        T = (24.0 * c * c * np.outer(Si @ A[:, 0], Si @ A[:, 4]))[None]
    model = ToyModel([cfg], [seed], features=[A], teacher=T)
    tcfg = TrainConfig(steps=steps, cosine=False, weight_decay=0.0, train_features=False,
                       record_every=max(1, steps // 4), progress=False)
    w = train(model, tcfg, desc="planted")[0].weights
    return w["WQ"], w["WK"]
