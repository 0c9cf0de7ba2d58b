"""Shared test helpers: a tiny word-level tokenizer and tiny random model folders (no download).

Import as ``from tests._tiny_models import ...``: ``tests/`` has no ``__init__.py`` and the test
directories are not packages, but pytest puts the rootdir on ``sys.path`` (it holds the
project ``conftest.py``), so ``tests`` resolves as a namespace package.

Vocabulary layout of :func:`word_tokenizer`: ``[UNK]`` = 0, ``[PAD]`` = 1, then every word and
punctuation run of the given texts in sorted order. :func:`save_tiny_folder` uses id 1 as pad,
bos and eos, as every caller did before these helpers were shared.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

UNK_ID = 0
PAD_ID = 1  # also the bos / eos id of the saved tiny models


def word_tokenizer(texts: Iterable[str]):
    """A word-level fast tokenizer whose vocabulary is every word (``\\w+``) and punctuation
    run (``[^\\w\\s]+``) of ``texts``: whitespace pre-tokenizer, WordPiece decoder."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w in re.findall(r"\w+|[^\w\s]+", t)})
    vocab = {"[UNK]": UNK_ID, "[PAD]": PAD_ID}
    for w in words:
        vocab.setdefault(w, len(vocab))
    tk = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    tk.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="[UNK]", pad_token="[PAD]")


def ioi_word_tokenizer(with_names: bool = True):
    """:func:`word_tokenizer` over the IOI templates, places, objects, ``"Then,"`` and (by
    default) names, so every IOI name is one token."""
    from svfcheck.tasks import ioi

    texts = list(ioi.TEMPLATES) + list(ioi.PLACES) + list(ioi.OBJECTS) + ["Then,"]
    if with_names:
        texts += list(ioi.NAMES)
    return word_tokenizer(texts)


def paragraph_word_tokenizer():
    """:func:`word_tokenizer` over the built-in SAD paragraph (``svfcheck.tasks.prompts.DEFAULT_TEXT``)."""
    from svfcheck.tasks.prompts import DEFAULT_TEXT

    return word_tokenizer([DEFAULT_TEXT])


def save_tiny_folder(path, arch: str, tok, *, seed: int = 0, **overrides) -> str:
    """Save a seeded tiny random ``arch`` model (:func:`svfcheck.real.models.tiny_random_model`,
    vocabulary of ``tok``, pad/bos/eos = :data:`PAD_ID`, config ``overrides``) and ``tok`` in
    ``path``; returns ``str(path)``, a valid local model name."""
    from svfcheck.real.models import tiny_random_model

    model = tiny_random_model(arch, seed=seed, vocab_size=len(tok), bos_token_id=PAD_ID, eos_token_id=PAD_ID,
                              pad_token_id=PAD_ID, **overrides)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)


def save_unsupported_folder(path, tok) -> str:
    """Save a seeded tiny random OPT (1 layer, 2 heads, d = 16) and ``tok`` in ``path``: it loads
    like any folder, but OPT is not among the architectures the decomposition supports."""
    import torch
    from transformers import OPTConfig, OPTForCausalLM

    cfg = OPTConfig(vocab_size=len(tok), hidden_size=16, word_embed_proj_dim=16, num_hidden_layers=1,
                    num_attention_heads=2, ffn_dim=32, max_position_embeddings=64,
                    pad_token_id=PAD_ID, bos_token_id=PAD_ID, eos_token_id=PAD_ID)
    torch.manual_seed(0)
    OPTForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return str(path)
