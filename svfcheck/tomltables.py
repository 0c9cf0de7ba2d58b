"""Reading TOML files whose every key is checked: the one reader of the gate's analysis specs
(:mod:`svfcheck.gate.spec`) and the sweep plans (:mod:`svfcheck.sweep.plan`).

:class:`TableReader` gives typed access to one table (strings with choices, booleans, ranged
integers and numbers, ``[layer, head]`` lists) and refuses unknown keys; each file format
subclasses it with its own :class:`TableError` subclass, so that a problem reads
``FILE: dotted.key: problem; expected FORM``. :func:`read_toml` loads a file with the same
errors. Standard library only: the pytest plugin imports this at collection time.
"""

from __future__ import annotations

import math
import tomllib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["TableError", "TableReader", "read_toml", "tname", "show", "range_form"]


class TableError(ValueError):
    """``FILE: KEY: problem; expected FORM``; ``file``, ``key`` (dotted; None for the whole
    file), ``problem`` and ``expected`` are kept as attributes."""

    def __init__(self, file: str | Path, key: str | None, problem: str, expected: str | None = None):
        self.file, self.key, self.problem, self.expected = str(file), key, problem, expected
        msg = f"{file}: " + (f"{key}: " if key else "") + problem + (f"; expected {expected}" if expected else "")
        super().__init__(msg)


def read_toml(file: Path, error: type[TableError], what: str) -> dict:
    """The parsed document of ``file``; ``error`` for a missing, non-UTF-8 or malformed file
    (``what`` describes the file expected, e.g. "a path to a plan .toml")."""
    if not file.is_file():
        raise error(file, None, "no such file" if not file.exists() else "is not a file", what)
    try:
        return tomllib.loads(file.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise error(file, None, f"is not UTF-8 text ({e})", "a TOML file") from None
    except tomllib.TOMLDecodeError as e:
        raise error(file, None, f"malformed TOML: {e}", "valid TOML (https://toml.io)") from None


def tname(v: Any) -> str:
    return {dict: "table", list: "list", str: "string", bool: "boolean", int: "integer", float: "number"}.get(type(v), type(v).__name__)


def show(v: Any) -> str:
    r = repr(v)
    return f"{tname(v)} {r if len(r) < 60 else r[:57] + '...'}"


def range_form(what: str, lo, hi, lo_open: bool = False, hi_open: bool = False) -> str:
    if lo is not None and hi is not None:
        return f"{what} in {'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{what} {'>' if lo_open else '>='} {lo:g}"
    if hi is not None:
        return f"{what} {'<' if hi_open else '<='} {hi:g}"
    return what


class TableReader:
    """Typed access to one TOML table; every problem becomes an :attr:`error` (a subclass of
    :class:`TableError` set by the file format) naming the dotted key. Unknown keys are refused."""

    error: type[TableError] = None  # type: ignore[assignment]

    def __init__(self, file: Path, prefix: str, table: Any, allowed: Iterable[str]):
        self.file, self.prefix = file, prefix
        if not isinstance(table, dict):
            raise self.error(file, prefix, f"is a {tname(table)}", f"a table [{prefix}]" if "[" not in prefix else "a table")
        allowed = tuple(allowed)
        unknown = sorted(set(table) - set(allowed))
        if unknown:
            raise self.error(file, self.key(unknown[0]), "unknown key", "one of " + ", ".join(allowed))
        self.table = table

    def key(self, k: str) -> str:
        return f"{self.prefix}.{k}" if self.prefix else k

    def err(self, k: str, problem: str, expected: str | None = None) -> TableError:
        return self.error(self.file, self.key(k), problem, expected)

    def has(self, k: str) -> bool:
        return k in self.table

    def str_(self, k: str, default: Any = ..., choices: tuple[str, ...] | None = None) -> Any:
        form = "one of " + ", ".join(repr(c) for c in choices) if choices else "a string"
        v = self._get(k, default, form)
        if v is default and k not in self.table:
            return v
        if not isinstance(v, str):
            raise self.err(k, f"got {show(v)}", form)
        if choices and v not in choices:
            raise self.err(k, f"got {v!r}", form)
        if not choices and not v.strip():
            raise self.err(k, "is empty", "a non-empty string")
        return v

    def bool_(self, k: str, default: Any = ...) -> Any:
        v = self._get(k, default, "true or false")
        if k in self.table and not isinstance(v, bool):
            raise self.err(k, f"got {show(v)}", "true or false")
        return v

    def int_(self, k: str, default: Any = ..., lo: int | None = None, hi: int | None = None) -> Any:
        form = range_form("an integer", lo, hi)
        v = self._get(k, default, form)
        if k not in self.table:
            return v
        if isinstance(v, bool) or not isinstance(v, int):
            raise self.err(k, f"got {show(v)}", form)
        if (lo is not None and v < lo) or (hi is not None and v > hi):
            raise self.err(k, f"got {v}, out of range", form)
        return v

    def float_(self, k: str, default: Any = ..., lo: float | None = None, hi: float | None = None,
               lo_open: bool = False, hi_open: bool = False) -> Any:
        form = range_form("a number", lo, hi, lo_open, hi_open)
        v = self._get(k, default, form)
        if k not in self.table:
            return v
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            raise self.err(k, f"got {show(v)}", form)
        v = float(v)
        bad = (lo is not None and (v < lo or (lo_open and v == lo))) or (hi is not None and (v > hi or (hi_open and v == hi)))
        if bad:
            raise self.err(k, f"got {v:g}, out of range", form)
        return v

    def heads(self, k: str) -> tuple[tuple[int, int], ...]:
        v = self.table[k]
        form = "a non-empty list of [layer, head] pairs of integers >= 0, e.g. [[0, 3], [9, 6]]"
        if not isinstance(v, list) or not v:
            raise self.err(k, f"got {show(v)}", form)
        out = []
        for i, h in enumerate(v):
            ok = isinstance(h, list) and len(h) == 2 and all(isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in h)
            if not ok:
                raise self.error(self.file, f"{self.key(k)}[{i}]", f"got {show(h)}", form)
            out.append((h[0], h[1]))
        if len(set(out)) != len(out):
            raise self.err(k, "lists a head twice", form + " without repeats")
        return tuple(out)

    def _get(self, k: str, default: Any, form: str) -> Any:
        if k in self.table:
            return self.table[k]
        if default is ...:
            raise self.err(k, "missing required key", form)
        return default
