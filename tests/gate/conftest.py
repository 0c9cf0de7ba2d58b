"""Fixtures for the gate tests: spec-file writers and a tiny local model folder (no download).

The tiny folder holds a randomly initialised llama (2 layers, 4 query / 2 kv heads, d_h = 16,
RoPE) and a word-level tokenizer over the built-in SAD paragraph, so specs can point at it with
``name = "<folder>"`` and run the whole gate in seconds.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from tests._tiny_models import paragraph_word_tokenizer, save_tiny_folder

ROOT = Path(__file__).resolve().parents[2]
ANALYSES = ROOT / "analyses"


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> str:
    """A saved tiny random llama + tokenizer; the path is a valid ``[model] name``."""
    tok = paragraph_word_tokenizer()
    return save_tiny_folder(tmp_path_factory.mktemp("gate_tiny") / "tiny-llama", "llama", tok, seed=0)


@pytest.fixture(scope="session")
def unsupported_folder(tmp_path_factory) -> str:
    """A saved tiny random OPT (1 layer, 2 heads, d = 16) + tokenizer: it loads, but OPT is not
    among the architectures the decomposition supports (svfcheck.real.heads)."""
    from tests._tiny_models import save_unsupported_folder

    return save_unsupported_folder(tmp_path_factory.mktemp("gate_opt") / "tiny-opt", paragraph_word_tokenizer())


def tiny_spec_text(folder: str, conditions: str, *, baseline: bool = True, n_prompts: int = 4,
                   prompt_tokens: int = 24, extra_pairs: str = "") -> str:
    """A spec for the tiny folder: text task (built-in paragraph), all heads, top selection.

    4 prompts x 24 tokens x 8 heads gives 8 * 4 * 23 = 736 pairs (one per head and query with
    a non-first key), above min_pairs = 500. Model and decomposition in float64."""
    base = "[baseline]\nrandom_init = true\nseed = 7\n" if baseline else ""
    return textwrap.dedent(f"""\
        [model]
        name = "{folder}"
        dtype = "float64"

        [task]
        kind = "text"
        n_prompts = {n_prompts}
        prompt_tokens = {prompt_tokens}

        [analysis]
        dtype = "float64"

        [pairs]
        heads = "all"
        selection = "top"
        {extra_pairs}
        """) + base + "\n" + textwrap.dedent(conditions)


@pytest.fixture(scope="session")
def tiny_spec():
    """:func:`tiny_spec_text` as a fixture (test modules are not importable as a package)."""
    return tiny_spec_text


@pytest.fixture
def write_spec(tmp_path):
    """``write_spec(text, name="spec.toml") -> Path`` in a fresh temporary directory."""

    def write(text: str, name: str = "spec.toml") -> Path:
        p = tmp_path / name
        p.write_text(textwrap.dedent(text))
        return p

    return write
