"""Effect sizes with bootstrap intervals, a one-sided Wilcoxon test and summaries.

The SAD effect of a basis-control comparison is ``mean(S_control − S_svd)`` over paired
values (positive: the SVD basis is sparser). Intervals are percentile bootstrap intervals,
seeded. The trained-vs-random-init contrast is the difference of two such effects from
independent samples (:func:`effect_difference`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats as sps


@dataclass(frozen=True)
class Effect:
    """A point estimate with a percentile bootstrap interval at ``level``."""

    estimate: float
    low: float
    high: float
    level: float
    n: int  # sample size (for a difference: n of the first sample)
    n_boot: int
    seed: int
    n_other: int | None = None  # size of the second sample for a difference

    def excludes_zero(self) -> bool:
        return self.low > 0 or self.high < 0

    def __str__(self) -> str:
        return f"{self.estimate:.4g} [{self.low:.4g}, {self.high:.4g}] ({self.level:.0%} CI, n={self.n})"


@dataclass(frozen=True)
class Summary:
    n: int
    mean: float
    median: float
    std: float
    q25: float
    q75: float
    min: float
    max: float


@dataclass(frozen=True)
class WilcoxonResult:
    """Paired one-sided signed-rank test of H1: S_svd < S_control."""

    statistic: float
    p_value: float
    n: int
    n_nonzero: int  # pairs with a non-zero difference (zeros are dropped, "wilcox" method)


def _vec(x, name: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.isfinite(a).all():
        raise ValueError(f"{name} has {int((~np.isfinite(a)).sum())} non-finite values")
    return a


def _paired(s_control, s_svd) -> np.ndarray:
    c, s = _vec(s_control, "s_control"), _vec(s_svd, "s_svd")
    if c.shape != s.shape:
        raise ValueError(f"paired samples differ in length: {c.size} controls vs {s.size} svd values")
    return c - s


def _check(level: float, n_boot: int) -> None:
    if not 0.0 < level < 1.0:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if n_boot < 100:
        raise ValueError(f"n_boot must be >= 100, got {n_boot}")


def bootstrap_means(cols: np.ndarray, n_boot: int, rng: np.random.Generator, chunk_elems: int = 2_000_000) -> np.ndarray:
    """Means of ``n_boot`` resamples of the columns of ``cols`` (k, n), one set of resampled
    indices shared by all k rows (a paired bootstrap: k means for the cost of one index draw).

    Resamples are drawn ``chunk_elems // n`` at a time to bound memory ((k, chunk, n) values).
    Returns (k, n_boot). The one bootstrap of the project: every interval comes from here.
    """
    cols = np.atleast_2d(cols)
    n = cols.shape[1]
    chunk = max(1, min(n_boot, chunk_elems // max(n, 1)))
    out = np.empty((cols.shape[0], n_boot))
    for start in range(0, n_boot, chunk):
        stop = min(n_boot, start + chunk)
        idx = rng.integers(0, n, size=(stop - start, n))
        out[:, start:stop] = cols[:, idx].mean(axis=-1)
    return out


def _boot_means(x: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """Means of n_boot resamples of the 1-D sample x."""
    return bootstrap_means(x[None], n_boot, rng)[0]


def percentile_intervals(boot: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """Percentile intervals at ``level`` of bootstrap means ``boot`` (..., n_boot): (low, high)."""
    alpha = (1.0 - level) / 2.0
    lo, hi = np.quantile(boot, [alpha, 1.0 - alpha], axis=-1)
    return lo, hi


def _interval(boot: np.ndarray, level: float) -> tuple[float, float]:
    lo, hi = percentile_intervals(boot, level)
    return float(lo), float(hi)


def bootstrap_mean(x, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> Effect:
    """Mean of ``x`` with a percentile bootstrap interval."""
    _check(level, n_boot)
    a = _vec(x, "x")
    boot = _boot_means(a, n_boot, np.random.default_rng(seed))
    lo, hi = _interval(boot, level)
    return Effect(float(a.mean()), lo, hi, level, a.size, n_boot, seed)


def paired_effect(s_control, s_svd, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> Effect:
    """SAD effect ``mean(S_control − S_svd)`` over pairs, with a bootstrap interval."""
    _check(level, n_boot)
    d = _paired(s_control, s_svd)
    boot = _boot_means(d, n_boot, np.random.default_rng(seed))
    lo, hi = _interval(boot, level)
    return Effect(float(d.mean()), lo, hi, level, d.size, n_boot, seed)


def effect_difference(
    control_a, svd_a, control_b, svd_b, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0
) -> Effect:
    """``paired_effect(a) − paired_effect(b)`` for independent samples a (e.g. trained) and
    b (e.g. random init); each sample's pairs are resampled independently."""
    _check(level, n_boot)
    da, db = _paired(control_a, svd_a), _paired(control_b, svd_b)
    rng = np.random.default_rng(seed)
    boot = _boot_means(da, n_boot, rng) - _boot_means(db, n_boot, rng)
    lo, hi = _interval(boot, level)
    return Effect(float(da.mean() - db.mean()), lo, hi, level, da.size, n_boot, seed, n_other=db.size)


def mean_difference(a, b, *, n_boot: int = 10_000, level: float = 0.95, seed: int = 0) -> Effect:
    """``mean(a) − mean(b)`` for independent samples (e.g. S_svd trained vs random init)."""
    _check(level, n_boot)
    x, y = _vec(a, "a"), _vec(b, "b")
    rng = np.random.default_rng(seed)
    boot = _boot_means(x, n_boot, rng) - _boot_means(y, n_boot, rng)
    lo, hi = _interval(boot, level)
    return Effect(float(x.mean() - y.mean()), lo, hi, level, x.size, n_boot, seed, n_other=y.size)


def json_float(x) -> float | None:
    """``x`` rounded to 7 significant digits for JSON (per-pair values), ``None`` if not finite."""
    x = float(x)
    return None if not math.isfinite(x) else float(f"{x:.7g}")


def wilcoxon_svd_lower(s_svd, s_control) -> WilcoxonResult:
    """Paired one-sided Wilcoxon signed-rank test, H1: S_svd < S_control (scipy).

    Zero differences are dropped; if every difference is zero there is no evidence and the
    p-value is 1.0 (``n_nonzero == 0`` reports it).
    """
    d = -_paired(s_control, s_svd)  # S_svd − S_control
    nz = int(np.count_nonzero(d))
    if nz == 0:
        return WilcoxonResult(0.0, 1.0, d.size, 0)
    res = sps.wilcoxon(d, alternative="less", zero_method="wilcox")
    return WilcoxonResult(float(res.statistic), float(res.pvalue), d.size, nz)


def summarize(x) -> Summary:
    """n, mean, median, std (ddof=1; 0 for n=1), quartiles, min, max."""
    a = _vec(x, "x")
    q25, med, q75 = np.quantile(a, [0.25, 0.5, 0.75])
    return Summary(
        a.size, float(a.mean()), float(med), float(a.std(ddof=1)) if a.size > 1 else 0.0,
        float(q25), float(q75), float(a.min()), float(a.max()),
    )


def median(x) -> float:
    return float(np.median(_vec(x, "x")))
