"""The library's shape stays one a newcomer can hold in mind: no module over 600 lines, no
function over 10 parameters (the numba kernels of ``svfcheck/real/kernels.py`` keep flat
arrays and are exempt), and no import cycle between modules, counting the imports made
inside functions too (a lazy import hides a cycle from Python, not from a reader)."""

from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parents[1] / "svfcheck"
MAX_LINES, MAX_PARAMS = 600, 10
EXEMPT_PARAMS = {"svfcheck.real.kernels"}


def _modules() -> dict[str, Path]:
    out = {}
    for f in sorted(PKG.rglob("*.py")):
        parts = f.relative_to(PKG.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        out[name] = f
    return out


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Modules of the package that ``name`` imports anywhere (top level or inside functions)."""
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = pkg.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            # `from pkg import mod` depends on pkg.mod; `from mod import name` on mod
            subs = [f"{base}.{a.name}" for a in node.names if f"{base}.{a.name}" in known]
            targets = subs if len(subs) == len(node.names) else [base, *subs]
        else:
            continue
        for t in targets:
            while t and t not in known:  # `from pkg import name` where name is an attribute, not a module
                t = t.rpartition(".")[0]
            if t and t != name and t.startswith("svfcheck"):
                found.add(t)
    return found


def test_no_module_is_over_600_lines():
    long = {n: len(p.read_text().splitlines()) for n, p in _modules().items()}
    assert not {n: k for n, k in long.items() if k > MAX_LINES}, sorted(long.items(), key=lambda x: -x[1])[:5]


def test_no_function_takes_more_than_10_parameters():
    bad = []
    for name, path in _modules().items():
        if name in EXEMPT_PARAMS:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                a = node.args
                n = len(a.posonlyargs) + len(a.args) + len(a.kwonlyargs) - (1 if a.args and a.args[0].arg in ("self", "cls") else 0)
                if n > MAX_PARAMS:
                    bad.append(f"{name}.{node.name}: {n}")
    assert not bad, bad


def test_no_import_cycles():
    mods = _modules()
    known = set(mods)
    graph = {n: _imports(n, p, known) for n, p in mods.items()}
    # a package's __init__ importing its own submodules is how packages work, not a cycle
    graph = {n: {t for t in ts if not t.startswith(n + ".")} for n, ts in graph.items()}
    seen, stack, cycles = set(), [], []

    def visit(n: str) -> None:
        if n in stack:
            cycles.append(stack[stack.index(n):] + [n])
            return
        if n in seen:
            return
        seen.add(n)
        stack.append(n)
        for m in sorted(graph[n]):
            visit(m)
        stack.pop()

    for n in sorted(graph):
        visit(n)
    assert not cycles, [" -> ".join(c) for c in cycles[:5]]


def test_the_scan_sees_lazy_imports_and_cycles(tmp_path):
    """The scanner itself: an import inside a function counts, and a two-module cycle is found."""
    a = tmp_path / "a.py"
    a.write_text("def f():\n    from svfcheck.real import sad\n")
    assert _imports("svfcheck.x", a, {"svfcheck.real", "svfcheck.real.sad"}) == {"svfcheck.real.sad"}
    b = tmp_path / "b.py"
    b.write_text("from .models import LoadedModel\n")
    assert _imports("svfcheck.real.pipeline", b, {"svfcheck.real.models"}) == {"svfcheck.real.models"}
