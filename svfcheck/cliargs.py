"""Command-line input checks shared by every ``svfcheck`` subcommand.

Every check runs before any work starts, and every failure is a :class:`UsageError` (or, for
argparse ``type=`` callables, an ``ArgumentTypeError`` that argparse prefixes with the flag's
name) whose message names the flag, the value and what to do. The subcommands print it and exit
2, without a traceback: see :func:`run_guarded`.

- :func:`bounded_int` / :func:`int_list` / :func:`bounded_float` — argparse types for numbers with bounds;
- :func:`prepare_out_dir` / :func:`prepare_out_file` — create (or check) an output location and
  prove it writable *before* an analysis, so that no result is computed and then lost;
- :func:`input_file` — an existing, readable regular file.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "MAX_PROMPTS",
    "MAX_PROMPT_TOKENS",
    "SEED_MAX",
    "UsageError",
    "bounded_int",
    "bounded_float",
    "int_list",
    "input_file",
    "prepare_out_dir",
    "prepare_out_file",
    "parse_args",
    "run_guarded",
]

# numpy's legacy seeding, torch.manual_seed and every generator used here accept [0, 2**32).
SEED_MAX = 2**32 - 1
# Prompts per analysis: the gate's spec format has the same cap (a larger run is a sweep, not a gate).
MAX_PROMPTS = 10_000
# Tokens per text prompt, before the model's own limit (its position table) is checked.
MAX_PROMPT_TOKENS = 1_000_000


class UsageError(ValueError):
    """Bad input on the command line (a flag, a path, a file): exit 2 with the message."""


def _parse_int(text: str) -> int:
    s = str(text).strip()
    try:
        return int(s, 10)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None


def bounded_int(lo: int, hi: int) -> Callable[[str], int]:
    """An argparse ``type=`` accepting whole numbers in ``[lo, hi]`` (argparse names the flag)."""

    def parse(text: str) -> int:
        v = _parse_int(text)
        if not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected a whole number from {lo} to {hi}")
        return v

    parse.__name__ = f"integer in [{lo}, {hi}]"
    return parse


def bounded_float(lo: float, hi: float, unit: str = "") -> Callable[[str], float]:
    """An argparse ``type=`` accepting finite numbers in ``[lo, hi]`` (argparse names the flag)."""

    def parse(text: str) -> float:
        try:
            v = float(str(text).strip())
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number{unit}, got {text!r}") from None
        if not math.isfinite(v) or not lo <= v <= hi:
            raise argparse.ArgumentTypeError(f"{text!r} is out of range; expected a number{unit} from {lo:g} to {hi:g}")
        return v

    parse.__name__ = f"number in [{lo:g}, {hi:g}]"
    return parse


def int_list(lo: int, hi: int) -> Callable[[str], list[int]]:
    """An argparse ``type=`` for comma-separated whole numbers in ``[lo, hi]``, e.g. ``0,1,2``."""

    one = bounded_int(lo, hi)

    def parse(text: str) -> list[int]:
        parts = [p for p in str(text).split(",") if p.strip()]
        if not parts:
            raise argparse.ArgumentTypeError(f"expected comma-separated whole numbers like 0,1,2, got {text!r}")
        out = []
        for p in parts:
            try:
                out.append(one(p))
            except argparse.ArgumentTypeError as e:
                raise argparse.ArgumentTypeError(f"in {text!r}: {e}") from None
        if len(set(out)) != len(out):
            raise argparse.ArgumentTypeError(f"{text!r} repeats a value")
        return out

    parse.__name__ = "comma-separated integers"
    return parse


def _probe_writable(folder: Path, flag: str) -> None:
    try:
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".svfcheck-write-probe-"):
            pass
    except OSError as e:
        raise UsageError(f"{flag} {folder}: the folder is not writable ({e.strerror or e}); choose a folder you can write to") from None


def prepare_out_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Create the output folder ``path`` (with parents) and prove it writable; return it.

    Raises :class:`UsageError` naming ``flag`` and the path when it is an existing file, cannot
    be created (a parent is a file, a read-only file system, no permission) or is not writable.
    """
    out = Path(path).expanduser()
    if str(path).strip() == "":
        raise UsageError(f"{flag} is empty; give a folder path")
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out}: exists and is not a folder; give a folder path (it is created if missing)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"{flag} {out}: cannot create the folder ({e.strerror or e}); choose a writable location") from None
    _probe_writable(out, flag)
    return out


def prepare_out_file(path: str | os.PathLike, flag: str) -> Path:
    """Check that the file ``path`` can be written (its folder is created); return it.

    Raises :class:`UsageError` naming ``flag`` when ``path`` is a folder, or when its folder
    cannot be created or written to. The file itself is not created.
    """
    f = Path(path).expanduser()
    if str(path).strip() == "":
        raise UsageError(f"{flag} is empty; give a file path")
    if f.is_dir():
        raise UsageError(f"{flag} {f}: is a folder; give a file path")
    prepare_out_dir(f.parent, f"{flag} {f}: its folder")
    if f.exists() and not os.access(f, os.W_OK):
        raise UsageError(f"{flag} {f}: the file is not writable; choose another path")
    return f


def input_file(path: str | os.PathLike, flag: str) -> Path:
    """``path`` as an existing, readable regular file; :class:`UsageError` naming ``flag`` otherwise."""
    f = Path(path).expanduser()
    if not f.exists():
        raise UsageError(f"{flag} {f}: no such file")
    if f.is_dir():
        raise UsageError(f"{flag} {f}: is a folder; give a file")
    if not f.is_file():
        raise UsageError(f"{flag} {f}: is not a regular file")
    if not os.access(f, os.R_OK):
        raise UsageError(f"{flag} {f}: the file is not readable")
    return f


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit code argparse chose (0 for ``--help``, 2 for a
    usage error, whose message argparse has printed) so that every ``main`` returns its code."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2


def run_guarded(prog: str, fn: Callable[[], int], user_errors: tuple[type[BaseException], ...] = ()) -> int:
    """Run ``fn``; print a user error as ``prog: error: …`` and return 2 (no traceback).

    User errors are :class:`ValueError` (which includes :class:`UsageError`), ``IndexError``
    (a layer or head out of range, raised with its range), ``OSError`` about a named file (``FileNotFoundError``, ``IsADirectoryError``, ``NotADirectoryError``,
    ``PermissionError``) and ``user_errors`` (e.g. ``ModelLoadError``). Anything else is a bug
    and propagates with its traceback. ``KeyboardInterrupt`` exits 130 with one line.
    """
    errors = (ValueError, IndexError, FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError, *user_errors)
    try:
        return fn()
    except errors as e:
        msg = str(e) if not isinstance(e, OSError) or not e.filename else f"{e.filename}: {e.strerror or e}"
        print(f"{prog}: error: {msg}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return 130
