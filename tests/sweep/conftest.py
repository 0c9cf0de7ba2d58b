"""Shared pieces of the sweep tests: plan files and a minimal task list."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest


@pytest.fixture
def write_plan(tmp_path):
    """``write_plan(text, name="plan.toml") -> Path`` in a fresh temporary directory."""

    def write(text: str, name: str = "plan.toml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write
