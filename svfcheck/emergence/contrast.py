"""The final-vs-first contrast of SAD over training (docs/math.md §3.8 over checkpoints):
:func:`svfcheck.real.sad.contrast` on the per-pair S columns of two steps, overall and per role."""

from __future__ import annotations

import numpy as np

from .settings import OVERALL

__all__: list[str] = []


class _Sample:
    """Duck-typed stand-in for :class:`svfcheck.real.sad.SADResult` in :func:`contrast`."""

    def __init__(self, pairs: dict, role: str):
        r = np.array(pairs["role"], dtype=object)
        sel = np.ones(len(r), dtype=bool) if role == OVERALL else (r == role)
        vals = {k: np.array([np.nan if v is None else v for v in pairs[k]], dtype=np.float64)[sel]
                for k in ("s_svd", "s_rotated", "s_paper_control")}
        ok = np.isfinite(vals["s_svd"]) & np.isfinite(vals["s_rotated"]) & np.isfinite(vals["s_paper_control"])
        self._v = {k: v[ok] for k, v in vals.items()}

    def __len__(self) -> int:
        return len(self._v["s_svd"])

    def s(self, which: str = "svd", role: str | None = None) -> np.ndarray:
        if role is not None:  # samples are already filtered to one role
            return np.zeros(0)
        return self._v["s_svd" if which == "svd" else f"s_{which}"]

    def roles(self) -> list[str]:
        return []  # per-role contrasts are computed here, one sample per role


def _contrast(first: dict, last: dict, roles, n_boot: int, seed: int) -> dict:
    from ..real.sad import contrast

    out = {}
    for r in roles:
        a, b = _Sample(last["pairs"], r), _Sample(first["pairs"], r)
        if len(a) < 2 or len(b) < 2:
            out[r] = {"skipped": f"too few pairs (final {len(a)}, first {len(b)})"}
            continue
        c = contrast(a, b, n_boot=n_boot, seed=seed).to_json()
        c.pop("per_role", None)
        out[r] = c
    return out
