"""The rotation controls' seeded Haar matrices (docs/math.md §3.7)."""

from __future__ import annotations

import numpy as np
import torch

from ...metrics import haar_orthogonal
from ..heads import ModelHeads


_ROTATIONS: dict = {}  # (seed, layer shapes, dtype) -> the controls' Haar matrices (a few calls' worth)


def _control_rotations(heads: ModelHeads, seed: int, dtype) -> tuple:
    """The seeded Haar matrices of both controls, ``(basis, paper Q₁, paper Q₂)``, each a list
    over layers of (n_heads, d_h, d_h): drawn in a fixed order from ``default_rng(seed)``, so
    the same seed gives the same rotations for every prompt; cached (drawing them costs ~90 QRs
    for a 30-layer model, comparable to a forward pass)."""
    key = (int(seed), tuple((lh.head_dim, lh.n_heads) for lh in heads.layers), dtype)
    if key not in _ROTATIONS:
        rng = np.random.default_rng(seed)
        qs = tuple(
            [torch.as_tensor(haar_orthogonal(lh.head_dim, rng, size=(lh.n_heads,))).to(dtype) for lh in heads.layers]
            for _ in range(3)
        )
        if len(_ROTATIONS) >= 8:
            _ROTATIONS.pop(next(iter(_ROTATIONS)))
        _ROTATIONS[key] = qs
    return _ROTATIONS[key]
