"""Fixtures for the gate tests: spec-file writers and a tiny local model folder (no download).

The tiny folder holds a randomly initialised llama (2 layers, 4 query / 2 kv heads, d_h = 16,
RoPE) and a word-level tokenizer over the built-in SAD paragraph, so specs can point at it with
``name = "<folder>"`` and run the whole gate in seconds.
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ANALYSES = ROOT / "analyses"


def word_tokenizer():
    """Word-level fast tokenizer over the built-in paragraph (every word is in the vocabulary)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    from svfcheck.real.sad import DEFAULT_TEXT

    words = sorted(set(re.findall(r"\w+|[^\w\s]+", DEFAULT_TEXT)))
    vocab = {"[UNK]": 0, "[PAD]": 1}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


@pytest.fixture(scope="session")
def tiny_folder(tmp_path_factory) -> str:
    """A saved tiny random llama + tokenizer; the path is a valid ``[model] name``."""
    from svfcheck.real.models import tiny_random_model

    tok = word_tokenizer()
    path = tmp_path_factory.mktemp("gate_tiny") / "tiny-llama"
    model = tiny_random_model("llama", seed=0, vocab_size=len(tok), pad_token_id=1, bos_token_id=1, eos_token_id=1)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


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
