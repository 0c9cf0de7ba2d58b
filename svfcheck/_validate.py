"""Argument checks shared across the package (one home for the integer tests). Imports nothing
at module level, so that light modules can use it."""

from __future__ import annotations

__all__ = ["is_int", "is_int_like", "pos_int"]


def is_int(x) -> bool:
    """``x`` is a Python ``int`` and not a ``bool`` (numpy integers are refused: ``json.dumps``
    cannot write them)."""
    return isinstance(x, int) and not isinstance(x, bool)


def is_int_like(x) -> bool:
    """``x`` is a Python or numpy integer and not a ``bool``."""
    import numpy as np

    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def pos_int(name: str, x) -> None:
    """Raise ``ValueError`` naming ``name`` unless ``x`` is a positive :func:`is_int`."""
    if not is_int(x) or x < 1:
        raise ValueError(f"{name} must be a positive int, got {x!r}")
