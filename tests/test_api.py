"""The public API: ``import svfcheck`` stays light, every documented name resolves to the object
its module defines, and the README's "From Python" example runs as written."""

from __future__ import annotations

import contextlib
import importlib
import io
import re
import subprocess
import sys
from pathlib import Path

import pytest

import svfcheck

README = Path(__file__).resolve().parent.parent / "README.md"


def test_import_is_light():
    """``import svfcheck`` must not import torch or transformers (a CLI's --help, a plugin)."""
    code = "import sys, svfcheck; print(sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules))"
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert r.stdout.strip() == "[]"


@pytest.mark.parametrize("name", [n for n in svfcheck.__all__ if n != "__version__"])
def test_every_public_name_is_its_module_object(name):
    module, attr = svfcheck._API[name]
    assert getattr(svfcheck, name) is getattr(importlib.import_module(module), attr)
    assert name in dir(svfcheck)


def test_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="no_such_thing"):
        svfcheck.no_such_thing  # noqa: B018


def test_documented_names_are_the_api():
    """Every name the package docstring documents as ``:func:`x```/``:class:`x``` is exported,
    and every exported name is documented."""
    documented = set(re.findall(r":(?:func|class|data):`(\w+)`", svfcheck.__doc__))
    assert documented == set(svfcheck._API)


def _readme_example() -> str:
    text = README.read_text()
    section = text.split("## From Python", 1)[1]
    m = re.search(r"```python\n(.*?)```", section, re.S)
    assert m, "README has no python example under 'From Python'"
    return m.group(1)


@pytest.mark.gpu
def test_readme_example_runs_as_written():
    """Loads MiniLM (offline package) trained and at random init; the trained model's SVD terms
    must be sparser (lower mean S) than the random init's, as the printed contrast says."""
    ns: dict = {}
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        exec(compile(_readme_example(), "README.md", "exec"), ns)  # noqa: S102 - our own README
    printed = out.getvalue()
    L, H = ns["svd"].S.shape[:2]
    assert (L, H) == (6, 12) and ns["svd"].U.shape[-1] == ns["svd"].S.shape[-1]
    assert ns["trained"].summary["mean_s_svd"] < ns["random"].summary["mean_s_svd"]
    assert "difference" in printed and "S_svd trained - random" in printed
