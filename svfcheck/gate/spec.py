"""Analysis spec files (TOML) → validated frozen dataclasses.

A spec names a model, a prompt task, a pair selection, an optional random-init baseline and
the pass conditions of one model analysis. :func:`load_spec` parses a file with ``tomllib``
and validates every key; anything wrong raises :class:`SpecError` (a ``ValueError``) whose
message names the file, the dotted key (``condition[2].margin``) and the expected form.
The ``[pairs]`` and ``[analysis]`` tables are read straight into the pipeline's
:class:`~svfcheck.real.settings.SADSettings` (``Spec.settings``), the one settings object
the CLI, the report and the gate share. This module imports only the standard library (and
that settings module, which does too), so the pytest plugin can use it at collection time
without loading torch. The file format is documented in
``analyses/README.md``; the condition semantics in :mod:`svfcheck.gate.evaluate`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..real.settings import DEFAULT_MEMORY_BUDGET_GB, MAX_MEMORY_BUDGET_GB, MIN_MEMORY_BUDGET_GB, SADSettings
from ..tomltables import TableError, TableReader, read_toml, show as _show, tname as _tname

__all__ = [
    "SpecError",
    "ModelSpec",
    "TaskSpec",
    "BaselineSpec",
    "Condition",
    "Spec",
    "CONDITION_KINDS",
    "SAD_KINDS",
    "load_spec",
    "spec_files",
]

#: condition kind -> (required keys, optional keys) besides ``kind`` and ``name``
CONDITION_KINDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "sad_effect_vs_random_init": (("control",), ("margin", "level")),
    "s_svd_below_random_init": ((), ("margin", "level")),
    "median_k_at_most": (("bound",), ("heads",)),
    "max_reconstruction_error": (("bound",), ()),
}
#: kinds that test the SAD prediction; they need a random-init baseline and must discriminate
#: expected form of each required condition key, for "missing required key" errors
REQUIRED_FORMS = {
    ("sad_effect_vs_random_init", "control"): "one of 'rotated', 'paper_control'",
    ("median_k_at_most", "bound"): "a number >= 1 (and at most the model's d_h)",
    ("max_reconstruction_error", "bound"): "a number in (0, 1]",
}
SAD_KINDS = frozenset({"sad_effect_vs_random_init", "s_svd_below_random_init", "median_k_at_most"})
CONTROLS = ("rotated", "paper_control")
MAX_MARGIN = 0.5  # S and its differences lie in [-1, 1]; a margin >= 0.5 cannot be met by design
MIN_PAIRS_FLOOR = 1


class SpecError(TableError):
    """A spec file is malformed, incomplete or asks for something impossible.

    ``file`` and ``key`` (dotted, e.g. ``condition[1].bound``; ``None`` for the whole file)
    are kept as attributes; the message has the form ``FILE: KEY: problem; expected FORM``.
    """


class _Reader(TableReader):
    error = SpecError


@dataclass(frozen=True)
class ModelSpec:
    """``[model]``: what to load (offline name, hub id or folder; revision), in which dtype;
    ``random_init`` analyses a seeded random initialisation instead (negative-control specs)."""

    name: str
    revision: str | None = None
    random_init: bool = False
    seed: int = 0
    dtype: str = "float32"


@dataclass(frozen=True)
class TaskSpec:
    """``[task]``: ``ioi`` prompts (``n_prompts`` from the generator with ``seed``) or ``text``
    (``n_prompts`` consecutive chunks of ``prompt_tokens`` tokens of ``text_file``, or of the
    built-in paragraph when no file is given)."""

    kind: str
    n_prompts: int
    seed: int = 0
    prompt_tokens: int = 64
    text_file: Path | None = None


@dataclass(frozen=True)
class BaselineSpec:
    """``[baseline]``: the seeded random initialisation of the same architecture, analysed on
    the same prompts with the same heads and selection."""

    random_init: bool = True
    seed: int = 0


@dataclass(frozen=True)
class Condition:
    """One ``[[condition]]``; ``index`` is its position in the file (for error keys)."""

    kind: str
    name: str
    index: int
    control: str | None = None
    margin: float = 0.0
    level: float = 0.99
    bound: float | None = None
    heads: tuple[tuple[int, int], ...] | None = None

    @property
    def sad(self) -> bool:
        return self.kind in SAD_KINDS

    @property
    def key(self) -> str:
        return f"condition[{self.index}]"


@dataclass(frozen=True)
class Spec:
    """A whole analysis spec (see module docstring)."""

    path: Path
    name: str
    description: str
    model: ModelSpec
    task: TaskSpec
    settings: SADSettings  # [pairs] and [analysis]: heads, selection, dtype, basis, seed, bootstraps
    min_pairs: int  # [pairs] min_pairs: a SAD condition fails on fewer valid pairs (docs/math.md §3.8)
    baseline: BaselineSpec | None
    conditions: tuple[Condition, ...] = field(default=())


# ---------------------------------------------------------------------------------------------
# validation helpers


def _required_table(file: Path, doc: dict, name: str, form: str) -> dict:
    if name not in doc:
        raise SpecError(file, name, "missing required table", form)
    return doc[name]


# ---------------------------------------------------------------------------------------------
# sections


def _model(file: Path, t: Any) -> ModelSpec:
    r = _Reader(file, "model", t, ("name", "revision", "random_init", "seed", "dtype"))
    return ModelSpec(
        name=r.str_("name"),
        revision=r.str_("revision", None),
        random_init=r.bool_("random_init", False),
        seed=r.int_("seed", 0, lo=0),
        dtype=r.str_("dtype", "float32", choices=("float32", "float64")),
    )


def _task(file: Path, t: Any) -> TaskSpec:
    r = _Reader(file, "task", t, ("kind", "n_prompts", "seed", "prompt_tokens", "text_file"))
    kind = r.str_("kind", choices=("ioi", "text"))
    n = r.int_("n_prompts", lo=1, hi=10_000)
    seed = r.int_("seed", 0, lo=0)
    if kind == "ioi":
        for k in ("prompt_tokens", "text_file"):
            if r.has(k):
                raise r.err(k, 'only applies to kind = "text"', f"no {k} for IOI prompts")
        return TaskSpec(kind, n, seed)
    tokens = r.int_("prompt_tokens", 64, lo=3, hi=100_000)
    text_file = None
    if r.has("text_file"):
        rel = r.str_("text_file")
        text_file = (file.parent / rel).resolve()
        if not text_file.is_file():
            raise r.err("text_file", f"{rel!r} does not exist (looked for {text_file})",
                        "a path to a text file, relative to the spec file")
    return TaskSpec(kind, n, seed, tokens, text_file)


def _settings(file: Path, pairs: Any, analysis: Any, task: TaskSpec) -> tuple[SADSettings, int]:
    """``[pairs]`` and ``[analysis]`` → the analysis settings (per-head bootstraps:
    ``min(n_boot, 1000)``) and ``pairs.min_pairs``."""
    r = _Reader(file, "pairs", pairs, ("heads", "selection", "circuit", "discover_top", "min_pairs"))
    heads: Any = "all"
    form = '"all", "paper", "discover" or a list of [layer, head] pairs'
    if r.has("heads"):
        v = r.table["heads"]
        if isinstance(v, str):
            if v not in ("all", "paper", "discover"):
                raise r.err("heads", f"got {v!r}", form)
            heads = v
        elif isinstance(v, list):
            heads = r.heads("heads")
        else:
            raise r.err("heads", f"got {_show(v)}", form)
    selection = r.str_("selection", None, choices=("top", "threshold", "circuit"))
    circuit = r.str_("circuit", None)
    if circuit is not None and heads != "paper":
        raise r.err("circuit", 'only applies to heads = "paper"', "no circuit key, or heads = \"paper\"")
    if selection == "circuit" and heads not in ("paper", "discover"):
        raise r.err("selection", f'"circuit" needs a head table, but heads = {heads!r}',
                    'heads = "paper" or "discover" with selection = "circuit", or selection = "top"/"threshold"')
    needs_ioi = heads == "discover" or (heads == "paper" and selection in (None, "circuit"))
    if needs_ioi and task.kind != "ioi":
        raise r.err("heads", f'{heads!r} with selection {selection or "circuit"!r} needs IOI prompts (labelled positions)',
                    'task.kind = "ioi", or heads = "all"/a list with selection = "top"')
    discover_top = r.int_("discover_top", 3, lo=1, hi=1000)
    min_pairs = r.int_("min_pairs", 500, lo=MIN_PAIRS_FLOOR)
    a = _Reader(file, "analysis", analysis, ("dtype", "basis", "seed", "n_boot", "batch_size", "memory_budget_gb"))
    n_boot = a.int_("n_boot", 10_000, lo=100, hi=1_000_000)
    settings = SADSettings(
        heads=heads, selection=selection, circuit=circuit, discover_top=discover_top,
        dtype=a.str_("dtype", None, choices=("float32", "float64")),
        basis=a.str_("basis", "pair", choices=("pair", "zero")),
        seed=a.int_("seed", 0, lo=0, hi=2**32 - 1),
        n_boot=n_boot, n_boot_head=min(n_boot, 1000),
        batch_size=a.int_("batch_size", 8, lo=1, hi=4096),
        memory_budget_gb=a.float_("memory_budget_gb", DEFAULT_MEMORY_BUDGET_GB, lo=MIN_MEMORY_BUDGET_GB,
                                  hi=MAX_MEMORY_BUDGET_GB),
    )
    return settings, min_pairs


def _baseline(file: Path, t: Any) -> BaselineSpec:
    r = _Reader(file, "baseline", t, ("random_init", "seed"))
    ri = r.bool_("random_init", True)
    if not ri:
        raise r.err("random_init", "got false; the only baseline is the seeded random initialisation",
                    "random_init = true (or omit [baseline] when no SAD condition is given)")
    return BaselineSpec(True, r.int_("seed", 0, lo=0))


def _condition(file: Path, i: int, t: Any) -> Condition:
    prefix = f"condition[{i}]"
    if not isinstance(t, dict):
        raise SpecError(file, prefix, f"is a {_tname(t)}", "a [[condition]] table")
    kinds = ", ".join(repr(k) for k in CONDITION_KINDS)
    if "kind" not in t:
        raise SpecError(file, f"{prefix}.kind", "missing required key", f"one of {kinds}")
    kind = t["kind"]
    if kind not in CONDITION_KINDS:
        raise SpecError(file, f"{prefix}.kind", f"got {_show(kind)}", f"one of {kinds}")
    req, opt = CONDITION_KINDS[kind]
    r = _Reader(file, prefix, t, ("kind", "name", *req, *opt))
    for k in req:
        r._get(k, ..., REQUIRED_FORMS[(kind, k)])
    kw: dict[str, Any] = {}
    if kind == "sad_effect_vs_random_init":
        kw["control"] = r.str_("control", choices=CONTROLS)
    if "margin" in opt:
        # relative conditions: margin >= 0 keeps them discriminating (a random model measured
        # against another random init has difference ~0, which cannot exceed a margin >= 0)
        kw["margin"] = r.float_("margin", 0.0, lo=0.0, hi=MAX_MARGIN, hi_open=True)
    if "level" in opt:
        kw["level"] = r.float_("level", 0.99, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
    if kind == "median_k_at_most":
        kw["bound"] = r.float_("bound", lo=1.0)  # upper limit d_h is checked once the model is loaded
        kw["heads"] = r.heads("heads") if r.has("heads") else None
    if kind == "max_reconstruction_error":
        # an error in log-attention; > 1 would accept a decomposition that is off by e in probability
        kw["bound"] = r.float_("bound", lo=0.0, hi=1.0, lo_open=True)
    name = r.str_("name", None) or _default_name(kind, kw)
    return Condition(kind=kind, name=name, index=i, **kw)


def _default_name(kind: str, kw: dict) -> str:
    if kind == "sad_effect_vs_random_init":
        return f"sad_effect_{kw['control']}"
    if kind == "median_k_at_most" and kw.get("heads"):
        return "median_k_" + "_".join(f"L{l}H{h}" for l, h in kw["heads"][:4]) + ("_etc" if len(kw["heads"]) > 4 else "")
    return kind


TOP_KEYS = ("name", "description", "model", "task", "pairs", "analysis", "baseline", "condition")


def load_spec(path: str | Path) -> Spec:
    """Parse and validate one spec file; :class:`SpecError` on any problem."""
    file = Path(path)
    doc = read_toml(file, SpecError, "a path to a .toml analysis spec")
    top = _Reader(file, "", doc, TOP_KEYS)
    name = top.str_("name", file.stem)
    description = top.str_("description", "")
    model = _model(file, _required_table(file, doc, "model", '[model] with name = "<offline name, hub id or folder>"'))
    task = _task(file, _required_table(file, doc, "task", '[task] with kind = "ioi" or "text" and n_prompts'))
    settings, min_pairs = _settings(file, doc.get("pairs", {}), doc.get("analysis", {}), task)
    baseline = _baseline(file, doc["baseline"]) if "baseline" in doc else None
    raw = doc.get("condition")
    if raw is None:
        raise SpecError(file, "condition", "no [[condition]] given", "at least one [[condition]] table with a kind")
    if not isinstance(raw, list):
        raise SpecError(file, "condition", f"is a {_tname(raw)}", "an array of tables: [[condition]] (double brackets)")
    if not raw:
        raise SpecError(file, "condition", "is empty", "at least one [[condition]] table with a kind")
    conds = tuple(_condition(file, i, c) for i, c in enumerate(raw))
    seen: dict[str, int] = {}
    for c in conds:
        if c.name in seen:
            raise SpecError(file, f"{c.key}.name", f"{c.name!r} is already the name of condition[{seen[c.name]}]",
                            "a unique name per condition (set name = \"...\")")
        seen[c.name] = c.index
    sad = [c for c in conds if c.sad]
    if sad and baseline is None:
        raise SpecError(file, "baseline", f"missing, but {sad[0].key} ({sad[0].kind}) is a SAD condition",
                        "a [baseline] table with random_init = true: a SAD condition is only evidence "
                        "when measured against the seeded random initialisation")
    return Spec(file, name, description, model, task, settings, min_pairs, baseline, conds)


def spec_files(paths: Iterable[str | Path]) -> list[Path]:
    """Expand files and directories (their ``*.toml``, sorted, not recursive) into spec files.

    SpecError for a path that does not exist, a file that is not ``.toml`` or a directory
    without spec files."""
    out: list[Path] = []
    for p in paths:
        p = Path(p)
        if p.is_dir():
            found = sorted(p.glob("*.toml"))
            if not found:
                raise SpecError(p, None, "directory holds no *.toml spec files", "a spec file or a directory of *.toml specs")
            out.extend(found)
        elif p.is_file():
            if p.suffix != ".toml":
                raise SpecError(p, None, "is not a .toml file", "a spec file ending in .toml")
            out.append(p)
        elif p.exists():
            raise SpecError(p, None, "is not a regular file or a directory", "a spec file or a directory of *.toml specs")
        else:
            raise SpecError(p, None, "no such file or directory", "a spec file or a directory of *.toml specs")
    return list(dict.fromkeys(out))
