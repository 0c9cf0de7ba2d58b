"""Evaluate analysis specs: one load + analysis per model and per baseline, then the conditions.

Conditions (``[[condition]] kind = ...``; the figures are from :func:`svfcheck.real.sad.analyze`
on the spec's prompts, heads and selection):

``sad_effect_vs_random_init`` (``control``, ``margin`` ≥ 0, ``level``)
    SAD effect ``mean(S_control − S_svd)`` of the model minus that of the random-init baseline,
    percentile-bootstrap interval at ``level`` (default 99%). PASS when the interval's lower
    bound is > ``margin``. Measured: the lower bound.
``s_svd_below_random_init`` (``margin`` ≥ 0, ``level``)
    ``mean S_svd`` model − baseline; PASS when the interval's upper bound is < −``margin``.
``median_k_at_most`` (``bound``, optional ``heads``)
    median reconstruction count k over the pairs of the named heads (default: all analysed
    pairs); PASS when the model's median is ≤ ``bound`` **and** the baseline's is > ``bound``.
``max_reconstruction_error`` (``bound`` in (0, 1])
    exactness gate: max |log_softmax(Σ terms) − log attention| of the model < ``bound``.

Discrimination rule (a condition a random-init model also meets is not a SAD condition):
the two contrast conditions are defined *relative to* the baseline with a margin ≥ 0, so a
random model measured against another random initialisation (difference ≈ 0, interval
straddling 0) cannot pass them; ``median_k_at_most`` is absolute, so it is evaluated on the
baseline too and FAILS as *non-discriminating* when the baseline also meets the bound
(docs/math.md §3.5: k is small in near-uniform random attention, so this happens). Every SAD
condition also FAILS when fewer than ``pairs.min_pairs`` valid pairs were analysed in the
model or the baseline. ``max_reconstruction_error`` is not a SAD condition: exactness is a
property of the decomposition and must hold for any weights, random ones included (the
baseline's error is reported alongside).

Errors that can only be seen once the model is loaded are user errors and raise
:class:`~svfcheck.gate.spec.SpecError` naming the spec file and key: a model that cannot be
loaded (``ModelLoadError``, ``OSError``, ``ValueError`` from loading), a model the
decomposition does not support (``ValueError`` from the head extraction: architecture not
among ``SUPPORTED_ARCHITECTURES``, unsupported attention variant, non-finite weights), a bound
above d_h or a head outside the model, prompts the tokenizer cannot make (``IOIError``, a text
too short or not UTF-8) and settings the analysis rejects (``ValueError`` from
:func:`svfcheck.real.sad.analyze`). Any other exception is a bug of the gate and propagates
(``svfcheck gate`` exits 3).
"""

from __future__ import annotations

import math
import sys
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .spec import Condition, Spec, SpecError

__all__ = ["ConditionResult", "SpecResult", "Evaluator", "evaluate_specs", "results_json"]


@dataclass(frozen=True)
class ConditionResult:
    """The verdict of one condition: measured figure vs threshold, and why."""

    spec: str  # spec name
    file: str
    condition: str  # condition name
    kind: str
    passed: bool
    measured: float | None
    threshold: float | None
    comparison: str  # how measured is compared with threshold, e.g. ">" (pass when measured > threshold)
    detail: str
    baseline_measured: float | None = None
    discriminating: bool | None = None  # None: not a SAD condition
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "FAIL"

    def to_json(self) -> dict[str, Any]:
        return {
            "spec": self.spec, "file": self.file, "condition": self.condition, "kind": self.kind,
            "passed": self.passed, "verdict": self.verdict, "measured": _num(self.measured),
            "threshold": _num(self.threshold), "comparison": self.comparison, "detail": self.detail,
            "baseline_measured": _num(self.baseline_measured), "discriminating": self.discriminating,
            "figures": self.figures,
        }

    def line(self) -> str:
        """``measured 0.1300 > 0.0500 (threshold)`` plus the detail."""
        return f"{self.condition}: {self.verdict}: measured {_fmt(self.measured)} (pass when {self.comparison} {_fmt(self.threshold)}); {self.detail}"


@dataclass(frozen=True)
class SpecResult:
    """All condition results of one spec, plus the analyses' summaries."""

    spec: Spec
    conditions: tuple[ConditionResult, ...]
    model_summary: dict[str, Any]
    baseline_summary: dict[str, Any] | None
    seconds: float

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.conditions)

    def to_json(self) -> dict[str, Any]:
        s = self.spec
        return {
            "spec": s.name, "file": str(s.path), "description": s.description, "passed": self.passed,
            "model": {"name": s.model.name, "revision": s.model.revision, "random_init": s.model.random_init,
                      "seed": s.model.seed, "dtype": s.model.dtype},
            "task": {"kind": s.task.kind, "n_prompts": s.task.n_prompts, "seed": s.task.seed,
                     "prompt_tokens": s.task.prompt_tokens if s.task.kind == "text" else None,
                     "text_file": None if s.task.text_file is None else str(s.task.text_file)},
            "pairs": {"heads": s.settings.heads if isinstance(s.settings.heads, str) else [list(h) for h in s.settings.heads],
                      "selection": s.settings.selection, "min_pairs": s.min_pairs},
            "baseline": None if s.baseline is None else {"random_init": True, "seed": s.baseline.seed},
            "analysis": self.model_summary, "baseline_analysis": self.baseline_summary,
            "conditions": [c.to_json() for c in self.conditions], "seconds": round(self.seconds, 2),
        }


def _num(x):
    return None if x is None or not math.isfinite(x) else float(x)


def _fmt(x) -> str:
    if x is None:
        return "n/a"
    return f"{x:.3g}" if (x != 0 and (abs(x) < 1e-3 or abs(x) >= 1e4)) else f"{x:.4f}"


class Evaluator:
    """Evaluates specs through the SAD pipeline (:func:`svfcheck.real.pipeline.run_sad`),
    sharing loaded models (LRU of ``max_models``) and analyses between specs (one
    :class:`~svfcheck.real.pipeline.AnalysisMemo`): two specs with the same model, prompts,
    heads and settings analyse it once."""

    def __init__(self, progress: bool = True, max_models: int = 2):
        from svfcheck.real.pipeline import AnalysisMemo

        self.progress = progress
        self.max_models = max_models
        self._models: OrderedDict[tuple, Any] = OrderedDict()
        self._memo = AnalysisMemo()

    # -- loading ---------------------------------------------------------------------------
    def _load(self, spec: Spec, random_init: bool, seed: int):
        import torch

        from svfcheck.real.models import ModelLoadError, load_model

        m = spec.model
        key = (m.name, m.revision, random_init, seed if random_init else None, m.dtype)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        try:
            lm = load_model(m.name, revision=m.revision, dtype=getattr(torch, m.dtype),
                            random_init=random_init, seed=seed, progress=self.progress)
        except (ModelLoadError, OSError, ValueError) as e:
            raise SpecError(spec.path, "model.name", f"cannot load {m.name!r}"
                            + (f" at revision {m.revision!r}" if m.revision else "") + f": {e}",
                            "an offline name (smollm2-135m, minilm-l6, gemma3-270m), a hub id or a model folder") from e
        self._models[key] = lm
        while len(self._models) > self.max_models:
            self._models.popitem(last=False)
        return lm

    # -- prompts -----------------------------------------------------------------------------
    def _prompts(self, spec: Spec, tok):
        t = spec.task
        if t.kind == "ioi":
            from svfcheck.tasks.ioi import IOIError, generate_ioi_prompts

            try:
                return generate_ioi_prompts(tok, t.n_prompts, seed=t.seed)
            except IOIError as e:
                raise SpecError(spec.path, "task.kind", f"cannot make IOI prompts with the tokenizer of {spec.model.name!r}: {e}",
                                'a model whose tokenizer has single-token names, or kind = "text"') from None
        from svfcheck.tasks.prompts import DEFAULT_TEXT, text_prompts

        try:
            text = DEFAULT_TEXT if t.text_file is None else t.text_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise SpecError(spec.path, "task.text_file", f"cannot read {str(t.text_file)!r}: {e}", "a UTF-8 text file") from None
        try:
            return text_prompts(tok, text, t.n_prompts, t.prompt_tokens)
        except ValueError as e:
            raise SpecError(spec.path, "task.n_prompts", str(e),
                            "n_prompts * prompt_tokens at most the number of tokens in the text") from None

    # -- checks that need the model ---------------------------------------------------------
    def _check_against_model(self, spec: Spec, lm) -> None:
        from svfcheck.real.heads import SUPPORTED_ARCHITECTURES, architecture_of, cached_heads

        try:
            architecture_of(lm.model)
        except ValueError:
            mt = getattr(getattr(lm.model, "config", None), "model_type", None)
            raise SpecError(spec.path, "model.name", f"{lm.name!r} ({type(lm.model).__name__}) has architecture {mt!r}, "
                            "which the decomposition does not support",
                            "a model of a supported architecture: " + ", ".join(sorted(SUPPORTED_ARCHITECTURES))) from None
        try:
            mh = cached_heads(lm.model)
        except ValueError as e:  # extract_heads: an attention variant it cannot decompose, or non-finite weights
            raise SpecError(spec.path, "model.name", f"cannot decompose {lm.name!r}: {e}",
                            "a model whose attention the decomposition supports") from e
        L, H, dh = mh.n_layers, mh.layers[0].n_heads, mh.layers[0].head_dim
        lists = []
        if not isinstance(spec.settings.heads, str):
            lists.append(("pairs.heads", spec.settings.heads))
        for c in spec.conditions:
            if c.kind == "median_k_at_most":
                if c.bound > dh:
                    raise SpecError(spec.path, f"{c.key}.bound", f"got {c.bound:g}, but {lm.name} has d_h = {dh} "
                                    "terms per logit (k <= d_h always holds)", f"a number in [1, {dh}]")
                if c.heads:
                    lists.append((f"{c.key}.heads", c.heads))
        for key, hl in lists:
            for i, (l, h) in enumerate(hl):
                if not (0 <= l < L and 0 <= h < H):
                    raise SpecError(spec.path, f"{key}[{i}]", f"head [{l}, {h}] is outside {lm.name} ({L} layers x {H} heads)",
                                    f"layer in 0..{L - 1}, head in 0..{H - 1}")

    # -- analysis ------------------------------------------------------------------------------
    def evaluate(self, spec: Spec) -> SpecResult:
        """Load, analyse (model and baseline once each, through the pipeline) and judge every
        condition of ``spec``."""
        from svfcheck.real.pipeline import run_sad

        t0 = time.perf_counter()
        lm = self._load(spec, spec.model.random_init, spec.model.seed)
        self._check_against_model(spec, lm)
        prompts = self._prompts(spec, lm.tokenizer)
        random = None if spec.baseline is None else self._load(spec, True, spec.baseline.seed)
        try:
            run = run_sad(lm, prompts, spec.settings, random=random, progress=self.progress, memo=self._memo)
        except SpecError:
            raise
        except ValueError as e:  # not IndexError: every head list is checked before (_check_against_model)
            raise SpecError(spec.path, "pairs", f"the analysis rejected the pair settings: {e}",
                            "heads/selection that fit the model and the prompts") from e
        results = tuple(_judge(spec, c, run) for c in spec.conditions)
        base = run.random
        return SpecResult(spec, results, _summary(run.trained), None if base is None else _summary(base),
                          time.perf_counter() - t0)


def _summary(res) -> dict[str, Any]:
    s = res.summary
    return {
        "model": res.model, "architecture": res.architecture, "random_init": res.random_init, "seed": res.seed,
        "heads": res.heads_mode, "selection": res.selection, "settings": res.settings,
        "n_pairs": len(res), "n_valid_pairs": s["n_pairs"], "n_dropped": res.n_dropped,
        "d_h": res.singular_values_dim,
        "discovered_heads": None if res.heads_mode != "discover" else sorted({(c.layer, c.head) for c in res.circuit}),
        "mean_s_svd": s.get("mean_s_svd"), "mean_s_rotated": s.get("mean_s_rotated"),
        "mean_s_paper_control": s.get("mean_s_paper_control"), "median_k": s.get("median_k"),
        "median_k_rotated": s.get("median_k_rotated"),
        "effect_rotated": s.get("effect_rotated"), "effect_paper_control": s.get("effect_paper_control"),
        "max_reconstruction_error": res.max_reconstruction_error,
    }


def _median_k(res, heads) -> tuple[float | None, int]:
    r = res.records
    m = res.valid() & (r["k"] >= 0)
    if heads:
        hm = np.zeros(len(res), dtype=bool)
        for l, h in heads:
            hm |= (r["layer"] == l) & (r["head"] == h)
        m &= hm
    n = int(m.sum())
    return (float(np.median(r["k"][m])) if n else None), n


def _judge(spec: Spec, c: Condition, run) -> ConditionResult:
    """One condition's verdict from the spec's :class:`~svfcheck.real.pipeline.SADRun`."""
    res, base = run.trained, run.random
    common = dict(spec=spec.name, file=str(spec.path), condition=c.name, kind=c.kind)
    if c.kind == "max_reconstruction_error":
        err = float(res.max_reconstruction_error)
        extra = "" if base is None else f"; baseline {base.max_reconstruction_error:.2e}"
        return ConditionResult(**common, passed=err < c.bound, measured=err, threshold=c.bound, comparison="<",
                               detail=f"max |log_softmax(sum of terms) - log attention| over {len(res)} pairs{extra}",
                               baseline_measured=None if base is None else float(base.max_reconstruction_error))
    n_model, n_base = int(res.summary["n_pairs"]), int(base.summary["n_pairs"])
    few = n_model < spec.min_pairs or n_base < spec.min_pairs
    few_note = f"; too few pairs: {n_model} (model) / {n_base} (baseline) < pairs.min_pairs = {spec.min_pairs}" if few else ""
    if c.kind == "sad_effect_vs_random_init":
        ctl, ct = c.control, run.contrast_at(c.level)
        d, et, er = ct.effect_difference[ctl], ct.effect_trained[ctl], ct.effect_random[ctl]
        ok = d.low > c.margin and not few
        pct = f"{100 * c.level:g}%"
        detail = (f"effect difference (model - random init) {d.estimate:.4f} [{d.low:.4f}, {d.high:.4f}] ({pct}); "
                  f"effect model {et.estimate:.4f}, random init {er.estimate:.4f}; n = {n_model}/{n_base}{few_note}")
        return ConditionResult(**common, passed=ok, measured=d.low, threshold=c.margin, comparison=">", detail=detail,
                               baseline_measured=er.estimate, discriminating=True,
                               figures={"estimate": d.estimate, "low": d.low, "high": d.high, "level": c.level,
                                        "effect_model": et.estimate, "effect_random_init": er.estimate,
                                        "n_model": n_model, "n_baseline": n_base})
    if c.kind == "s_svd_below_random_init":
        d = run.contrast_at(c.level).s_svd_difference
        ok = d.high < -c.margin and not few
        detail = (f"mean S_svd model - random init {d.estimate:.4f} [{d.low:.4f}, {d.high:.4f}] ({100 * c.level:g}%); "
                  f"model {res.s('svd').mean():.4f}, random init {base.s('svd').mean():.4f}; n = {n_model}/{n_base}{few_note}")
        return ConditionResult(**common, passed=ok, measured=d.high, threshold=-c.margin, comparison="<", detail=detail,
                               baseline_measured=float(base.s("svd").mean()), discriminating=True,
                               figures={"estimate": d.estimate, "low": d.low, "high": d.high, "level": c.level,
                                        "n_model": n_model, "n_baseline": n_base})
    if c.kind == "median_k_at_most":
        km, nm = _median_k(res, c.heads)
        kb, nb = _median_k(base, c.heads)
        if km is None:
            where = "the named heads" if c.heads else "the analysed pairs"
            raise SpecError(spec.path, f"{c.key}.heads", f"no analysed pair of {where} has a defined k",
                            "heads that are among the analysed heads (pairs.heads)")
        few = few or nm < spec.min_pairs or nb < spec.min_pairs
        meets_model = km <= c.bound
        meets_base = kb is not None and kb <= c.bound
        disc = not meets_base
        ok = meets_model and disc and not few
        notes = []
        if meets_base:
            notes.append(f"NON-DISCRIMINATING: random init median k = {kb:g} also <= {c.bound:g}")
        if few:
            notes.append(f"too few pairs: {nm} (model) / {nb} (baseline) < pairs.min_pairs = {spec.min_pairs}")
        heads = "named heads " + ", ".join(f"L{l}H{h}" for l, h in c.heads) if c.heads else "all analysed pairs"
        detail = f"median k over {heads}: model {km:g} ({nm} pairs), random init {_fmt(kb)} ({nb} pairs)" + (
            "; " + "; ".join(notes) if notes else "")
        return ConditionResult(**common, passed=ok, measured=km, threshold=c.bound, comparison="<=", detail=detail,
                               baseline_measured=kb, discriminating=disc,
                               figures={"n_model": nm, "n_baseline": nb})
    raise AssertionError(c.kind)  # pragma: no cover


def evaluate_specs(specs: list[Spec], progress: bool = True) -> tuple[list[SpecResult], list[SpecError]]:
    """Evaluate every spec (sharing loads); spec errors found during evaluation are collected."""
    ev = Evaluator(progress=progress)
    out, errors = [], []
    for i, s in enumerate(specs):
        if progress:
            print(f"svfcheck gate: [{i + 1}/{len(specs)}] {s.path} ({s.model.name}, {len(s.conditions)} condition(s))",
                  file=sys.stderr, flush=True)
        try:
            out.append(ev.evaluate(s))
        except SpecError as e:
            errors.append(e)
    return out, errors


def results_json(results: list[SpecResult], errors: list[SpecError] | None = None) -> dict[str, Any]:
    """The ``gate.json`` document."""
    errors = errors or []
    return {
        "passed": all(r.passed for r in results) and not errors,
        "n_specs": len(results) + len(errors),
        "n_conditions": sum(len(r.conditions) for r in results),
        "n_failed": sum(not c.passed for r in results for c in r.conditions),
        "specs": [r.to_json() for r in results],
        "errors": [{"file": e.file, "key": e.key, "message": str(e)} for e in errors],
    }
