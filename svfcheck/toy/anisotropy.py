"""App. C.3: alignment under controlled anisotropy, against Theorem 2 (docs/math.md §2.5).

Frozen dictionaries ``A`` (d=10, n=20) with an exactly controlled isotropy ε
(``dictionary=``):

- ``"paper"`` (default) — the paper's construction: the 8 features of interest are the unit
  vectors e_0..e_7 (their own orthogonal subspace), the 12 auxiliary features are 6 antipodal
  pairs at angles kπ/6 in the remaining 2-D subspace at norm 1/√6, so ``Σ_A = I`` exactly;
  then ``A ← (I + α z zᵀ) A`` for a random unit z with ``α = √((1+ε)/(1−ε)) − 1``, which makes
  the eigenvalues of Σ_A equal to (1+α)² (once) and 1, i.e. isotropy ε exactly
  (checked with :func:`svfcheck.theory.dictionaries.isotropy`).
- ``"near_isotropic"`` — :func:`svfcheck.theory.dictionaries.near_isotropic`: a random
  unit-norm tight frame distorted to isotropy ε (features of interest then interfere with the
  others even at ε = 0).

Query and key features are the same dictionary (B = A). Only W_Q, W_K are trained (no
reconstruction term), AdamW at a constant lr 1e-3 (as in the paper).

Two teachers:

- ``"toy"`` — the paper's Fig. 4 setting: the standard target logits ``f_rᵀ Λ f_s`` with the
  default four pairs (0,4)…(3,7) = 24…15 and the standard strengths Bernoulli(p)·U[0,1). Theorem 2 is stated for a single whitened teacher,
  so here the bound is a reference curve, as in the paper.
- ``"whitened"`` — the theorem's own setting: single pair (0,4), teacher
  ``M_T = β Σ_A⁻¹ a_0 a_4ᵀ Σ_A⁻¹`` with β = 24·c² (c from ``isotropy``) so the logit of a
  present pair is ≈ 24, binary presence (tokens ``q = Σ_{i∈S} a_i``). Its minimiser is M_T
  exactly (Theorem 1), so the bound applies.

Measurement (paper App. C.3): for each pair, max over singular indices of |cos(a_t, u_j)|
(raw) and of |cos(a_t, Σ_A u_j)| (anti-whitened), likewise b_t with V; averaged over the
pairs and over query/key. The Theorem 2 lower bound on |cos| is ``√(1 − (η/(1−η))²)`` where
``η < 1`` (ε < 0.293), and the rank-1 bound ``√(1 − δ²)`` (docs/math.md §2.5).
"""

from __future__ import annotations

import math

import numpy as np

from .config import ToyConfig, TrainConfig
from .metrics import omega_svd, unit
from .model import ToyModel
from .train import train

__all__ = ["anisotropy_experiment", "paper_dictionary", "DEFAULT_EPS"]

DEFAULT_EPS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7)


def _bounds(eps: float) -> dict:
    from svfcheck.theory.bounds import delta_bound, theorem2_bounds

    out = {"eps": eps}
    try:
        delta = delta_bound(eps)
        out["delta"] = delta
        out["cos_bound_rank1"] = math.sqrt(max(0.0, 1 - min(1.0, delta) ** 2))
    except ValueError:
        out["delta"] = None
        out["cos_bound_rank1"] = None
    try:
        _d, eta, paper = theorem2_bounds(eps)
        out["eta"] = eta
        out["paper_sin_bound"] = paper
        out["cos_bound_paper"] = math.sqrt(1 - paper**2) if paper < 1 else None
    except ValueError:
        out["eta"] = None
        out["paper_sin_bound"] = None
        out["cos_bound_paper"] = None
    return out


def paper_dictionary(eps: float, rng: np.random.Generator) -> np.ndarray:
    """The App. C.3 dictionary (see module doc): d=10, n=20, isotropy exactly ``eps``."""
    if not (0 <= eps < 1):
        raise ValueError(f"eps must lie in [0, 1); got {eps}")
    d, n = 10, 20
    A = np.zeros((d, n))
    A[:8, :8] = np.eye(8)
    ang = np.arange(6) * np.pi / 6
    aux = np.stack([np.cos(ang), np.sin(ang)]) / np.sqrt(6)
    A[8:, 8:14] = aux
    A[8:, 14:20] = -aux
    z = rng.standard_normal(d)
    z /= np.linalg.norm(z)
    alpha = np.sqrt((1 + eps) / (1 - eps)) - 1
    return (np.eye(d) + alpha * np.outer(z, z)) @ A


def anisotropy_experiment(
    eps_values=DEFAULT_EPS,
    seeds=(0, 1, 2, 3, 4),
    teacher: str = "toy",
    steps: int = 4000,
    p: float = 0.52,
    dictionary: str = "paper",
    device: str = "cpu",
    progress: bool = False,
) -> dict:
    """Train heads on frozen dictionaries for every ε × seed (one batched model); see module doc."""
    from svfcheck.theory.dictionaries import frame_operator, isotropy, near_isotropic

    if teacher not in ("toy", "whitened"):
        raise ValueError(f"teacher must be 'toy' or 'whitened'; got {teacher!r}")
    if dictionary not in ("paper", "near_isotropic"):
        raise ValueError(f"dictionary must be 'paper' or 'near_isotropic'; got {dictionary!r}")
    eps_values = [float(e) for e in eps_values]
    for e in eps_values:
        if not (0 <= e < 1):
            raise ValueError(f"eps must lie in [0, 1); got {e}")
    d, n = 10, 20
    if teacher == "toy":
        pairs = ((0, 4, 24.0), (1, 5, 21.0), (2, 6, 18.0), (3, 7, 15.0))
    else:
        pairs = ((0, 4, 24.0),)
    configs, seeds_, feats, teachers, meta = [], [], [], [], []
    for e in eps_values:
        for s in seeds:
            rng = np.random.default_rng([int(s), int(round(e * 1e6))])
            A = paper_dictionary(e, rng) if dictionary == "paper" else near_isotropic(d, n, e, rng)
            c, got = isotropy(A)
            if abs(got - e) > 1e-9:  # pragma: no cover - exact by construction
                raise RuntimeError(f"dictionary has isotropy {got}, wanted {e}")
            cfg = ToyConfig(n=n, d=d, d_h=d, p=p, pairs=pairs if teacher == "toy" else (),
                            strengths="uniform" if teacher == "toy" else "binary",
                            name=f"aniso-{teacher}-eps{e:g}")
            configs.append(cfg)
            seeds_.append(int(s))
            feats.append(A)
            if teacher == "whitened":
                Si = np.linalg.inv(frame_operator(A))
                teachers.append(24.0 * c * c * np.outer(Si @ A[:, 0], Si @ A[:, 4]))
            meta.append({"eps": e, "seed": int(s), "eps_measured": got, "A": A})
    model = ToyModel(configs, seeds_, device=device, features=feats,
                     teacher=np.stack(teachers) if teachers else None)
    tcfg = TrainConfig(steps=steps, cosine=False, weight_decay=0.0, train_features=False,
                       record_every=max(1, steps // 10), progress=progress)
    res = train(model, tcfg, desc=f"anisotropy ({teacher})")
    rows = []
    for r, mt in zip(res, meta):
        A = mt["A"]
        U, S, V = omega_svd(r.weights["WQ"], r.weights["WK"])
        Sig = frame_operator(A)
        Ua, Va = unit(Sig @ U), unit(Sig @ V)
        raw, anti = [], []
        An = unit(A)
        for a, b, _v in pairs:
            raw += [np.abs(An[:, a] @ U).max(), np.abs(An[:, b] @ V).max()]
            anti += [np.abs(An[:, a] @ Ua).max(), np.abs(An[:, b] @ Va).max()]
        rows.append({"eps": mt["eps"], "seed": mt["seed"], "eps_measured": mt["eps_measured"],
                     "raw": float(np.mean(raw)), "anti_whitened": float(np.mean(anti)),
                     "raw_min": float(np.min(raw)), "anti_min": float(np.min(anti)),
                     "final_loss_attn": float(r.trajectory["loss_attn"][-1]),
                     "spectrum": S[:4].tolist()})
    summary = []
    for e in eps_values:
        rs = [x for x in rows if x["eps"] == e]
        summary.append({**_bounds(e),
                        "raw_mean": float(np.mean([x["raw"] for x in rs])),
                        "raw_std": float(np.std([x["raw"] for x in rs])),
                        "anti_mean": float(np.mean([x["anti_whitened"] for x in rs])),
                        "anti_std": float(np.std([x["anti_whitened"] for x in rs])),
                        "raw_min": float(np.min([x["raw_min"] for x in rs]))})
    return {"teacher": teacher, "dictionary": dictionary, "steps": steps, "p": p, "rows": rows, "summary": summary}
