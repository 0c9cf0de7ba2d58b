"""Shared pieces of the sweep tests: plan files and a tiny gate spec."""

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


@pytest.fixture
def tiny_spec(tmp_path) -> Path:
    """A gate spec (``tmp_path/tiny.toml``) on a tiny random llama folder: two 16-token text
    prompts in float64, one condition (reconstruction error below 1e-5). About a second."""
    from tests._tiny_models import paragraph_word_tokenizer, save_tiny_folder

    folder = save_tiny_folder(tmp_path / "tiny", "llama", paragraph_word_tokenizer(), seed=0)
    spec = tmp_path / "tiny.toml"
    spec.write_text(textwrap.dedent(f"""\
        [model]
        name = "{folder}"
        dtype = "float64"
        [task]
        kind = "text"
        n_prompts = 2
        prompt_tokens = 16
        [pairs]
        min_pairs = 1
        [[condition]]
        kind = "max_reconstruction_error"
        bound = 1e-5
        """))
    return spec
