"""svfcheck: checks of 'Singular Vectors of Attention Heads Align with Features'.

The public API, by level (every name loads its module on first use, so ``import svfcheck``
stays light; see the README's "From Python" section for a worked example):

Models
    :func:`load_model` (an offline name, a folder or a hub id; ``random_init=True`` for a seeded
    random initialisation of the same architecture), :class:`LoadedModel`,
    :class:`ModelLoadError`, :data:`OFFLINE_MODELS`.
Heads and their SVD
    :func:`extract_heads` / :func:`cached_heads` (every head's query/key factors, biases, RoPE,
    QK-norm), :class:`ModelHeads`; :func:`all_heads_svd` → :class:`HeadsSVD` (U, S, V of every
    head's Ω without forming it).
Decomposition of given pairs
    :func:`capture` (one forward pass: head inputs, attention, masks) → :class:`Capture`;
    :class:`Pairs`, :func:`top_attended_pairs`; :func:`decompose` (with
    :class:`DecomposeOptions`) → :class:`Decomposition`
    (exact per-pair terms, relative attention, k and Rolls–Tovee S with both rotation controls).
Analysis of prompts
    :func:`generate_ioi_prompts`, :func:`text_prompts`, :data:`DEFAULT_TEXT`; :func:`analyze`
    (with :class:`SADSettings`) → :class:`SADResult`; :func:`contrast` (trained vs random init)
    → :class:`Contrast`; :func:`run_sad` (a model, its random init, the contrast) → :class:`SADRun`.
Readouts (what a singular vector means; docs/math.md §5)
    :func:`singular_readouts` (per head and singular index: the tokens scoring highest and
    lowest on the query and key side, and the unembedding's top tokens);
    :func:`load_dictionary` (a ``.safetensors`` / ``.npy`` matrix of residual-stream directions,
    oriented and checked), :func:`dictionary_alignment` (cosines of singular vectors with those
    directions, raw and whitened, best matches, one-to-one matching, random baseline),
    :func:`alignment_scores` (the same scores for given singular vectors).
Metrics
    :func:`rolls_tovee`, :func:`reconstruction_count`.
Toy model and theory
    :class:`ToyConfig`, :func:`toy_preset`, :func:`train_toy`; :func:`theory_summary`.
Sweeps (models × checkpoints × analyses × seeds as resumable tasks; ``plans/README.md``)
    :func:`load_plan` (a checked TOML plan; :class:`PlanError` names file and key) →
    :func:`run_sweep` (in this process or on Ray) → :class:`SweepResult` (the merged rows,
    ``sweep.json``'s content, failures).

The mathematics behind each name is in ``docs/math.md``.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> (module, attribute)
_API: dict[str, tuple[str, str]] = {
    # models
    "load_model": ("svfcheck.real.models", "load_model"),
    "LoadedModel": ("svfcheck.real.models", "LoadedModel"),
    "ModelLoadError": ("svfcheck.real.errors", "ModelLoadError"),
    "OFFLINE_MODELS": ("svfcheck.real.models", "OFFLINE_MODELS"),
    # heads and their SVD
    "extract_heads": ("svfcheck.real.heads", "extract_heads"),
    "cached_heads": ("svfcheck.real.heads", "cached_heads"),
    "ModelHeads": ("svfcheck.real.heads", "ModelHeads"),
    "all_heads_svd": ("svfcheck.real.svd", "all_heads_svd"),
    "HeadsSVD": ("svfcheck.real.svd", "HeadsSVD"),
    # decomposition of given pairs
    "capture": ("svfcheck.real.capture", "capture"),
    "Capture": ("svfcheck.real.capture", "Capture"),
    "Pairs": ("svfcheck.real.decompose", "Pairs"),
    "top_attended_pairs": ("svfcheck.real.decompose", "top_attended_pairs"),
    "decompose": ("svfcheck.real.decompose", "decompose"),
    "DecomposeOptions": ("svfcheck.real.decompose", "DecomposeOptions"),
    "Decomposition": ("svfcheck.real.decompose", "Decomposition"),
    # analysis of prompts
    "generate_ioi_prompts": ("svfcheck.tasks.ioi", "generate_ioi_prompts"),
    "text_prompts": ("svfcheck.tasks.prompts", "text_prompts"),
    "DEFAULT_TEXT": ("svfcheck.tasks.prompts", "DEFAULT_TEXT"),
    "analyze": ("svfcheck.real.sad", "analyze"),
    "SADSettings": ("svfcheck.real.settings", "SADSettings"),
    "run_sad": ("svfcheck.real.pipeline", "run_sad"),
    "SADRun": ("svfcheck.real.pipeline", "SADRun"),
    "SADResult": ("svfcheck.real.sad", "SADResult"),
    "contrast": ("svfcheck.real.sad", "contrast"),
    "Contrast": ("svfcheck.real.sad", "Contrast"),
    # readouts
    "singular_readouts": ("svfcheck.real.readouts", "singular_readouts"),
    "load_dictionary": ("svfcheck.real.dictionary", "load_dictionary"),
    "dictionary_alignment": ("svfcheck.real.dictionary", "dictionary_alignment"),
    "alignment_scores": ("svfcheck.real.dictionary", "alignment_scores"),
    # metrics
    "rolls_tovee": ("svfcheck.metrics", "rolls_tovee"),
    "reconstruction_count": ("svfcheck.metrics", "reconstruction_count"),
    # toy model and theory
    "ToyConfig": ("svfcheck.toy.config", "ToyConfig"),
    "toy_preset": ("svfcheck.toy.config", "preset"),
    "train_toy": ("svfcheck.toy.train", "train_many"),
    "theory_summary": ("svfcheck.theory.summary", "theory_summary"),
    # sweeps
    "load_plan": ("svfcheck.sweep.plan", "load_plan"),
    "PlanError": ("svfcheck.sweep.plan", "PlanError"),
    "run_sweep": ("svfcheck.sweep.driver", "run_sweep"),
    "SweepResult": ("svfcheck.sweep.driver", "SweepResult"),
}

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> Any:
    try:
        module, attr = _API[name]
    except KeyError:
        raise AttributeError(f"module 'svfcheck' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module), attr)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
