"""Prompts for SAD: the :class:`Prompt` every analysis takes, conversions from what users pass
(IOI prompts, strings, token-id lists) and plain-text chunks (:func:`text_prompts`).

IOI prompts with labelled positions are made by :mod:`svfcheck.tasks.ioi`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from .ioi import IOIPrompt

__all__ = ["DEFAULT_TEXT", "Prompt", "as_prompts", "text_prompts"]

DEFAULT_TEXT = (
    "The old harbour town wakes slowly. Before the first ferry leaves, the baker has already "
    "opened his shutters and the smell of bread drifts down to the water. Fishermen sort their "
    "nets on the quay while gulls wait on the roofs for whatever falls. By eight o'clock the "
    "market square is full: farmers from the valley sell cheese and apples, a woman mends "
    "shoes under a striped awning, and children run between the stalls on their way to school. "
    "In the afternoon the wind turns and clouds come in from the sea. Most people go indoors, "
    "but the harbour master stays at his window, watching the boats return one by one and "
    "writing their names in a thick book that his father kept before him."
)


@dataclass(frozen=True)
class Prompt:
    """One analysed prompt: its text, the token ids used and (IOI) labelled positions."""

    text: str
    token_ids: tuple[int, ...]
    positions: dict[str, int] | None = field(default=None, hash=False)

    @property
    def ioi(self) -> bool:
        return self.positions is not None


def as_prompts(tokenizer, prompts) -> list[Prompt]:
    """IOI prompts, strings (tokenized with special tokens) or token-id sequences → prompts."""
    out = []
    for p in prompts:
        if isinstance(p, Prompt):
            out.append(p)
        elif isinstance(p, IOIPrompt):
            out.append(Prompt(p.text, tuple(int(t) for t in p.token_ids), dict(p.positions)))
        elif isinstance(p, str):
            ids = tokenizer(p)["input_ids"]
            out.append(Prompt(p, tuple(int(t) for t in ids)))
        else:
            ids = tuple(int(t) for t in p)
            out.append(Prompt(tokenizer.decode(list(ids)) if tokenizer is not None else "", ids))
    if not out:
        raise ValueError("no prompts given")
    for n, p in enumerate(out):
        if len(p.token_ids) < 3:
            raise ValueError(
                f"prompt {n} has {len(p.token_ids)} token(s); SAD needs at least 3 (a query must "
                "see a non-first key and one other key)"
            )
    return out


def text_prompts(tokenizer, text: str, n: int, n_tokens: int = 64) -> list[Prompt]:
    """``n`` consecutive chunks of ``n_tokens`` tokens of ``text`` (with the tokenizer's special
    tokens around each chunk). ValueError if the text is too short."""
    if n < 1 or n_tokens < 3:
        raise ValueError(f"need n >= 1 and n_tokens >= 3, got n={n}, n_tokens={n_tokens}")
    body = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(body) < n * n_tokens:
        raise ValueError(
            f"text has {len(body)} tokens, too short for {n} prompts of {n_tokens} tokens; "
            "give a longer text, fewer prompts or shorter prompts"
        )
    out = []
    for c in range(n):
        chunk = body[c * n_tokens : (c + 1) * n_tokens]
        ids = tokenizer.build_inputs_with_special_tokens(chunk) if hasattr(tokenizer, "build_inputs_with_special_tokens") else chunk
        out.append(Prompt(tokenizer.decode(chunk), tuple(int(t) for t in ids)))
    return out
