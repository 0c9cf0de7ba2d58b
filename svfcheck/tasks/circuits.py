"""The paper's IOI head tables as data.

Position labels are those of :mod:`svfcheck.tasks.ioi`: ``S1``, ``S1+1``, ``IO``, ``S2``,
``END``. A head entry says which (query, key) pair the paper analyses for that head.

Sources
-------
- Pythia-160M: the paper's Table 2 (App. G), taken from Tigges et al. (2024), copied exactly
  (``PYTHIA160M_IOI_HEADS``).
- GPT-2 small: the paper lists the heads it used for Fig. 9a — (8,6) (4,11) (3,0) (9,9)
  (9,6) (10,0) — but not their token pairs. We assign each head the role and pair Wang et al.
  (2023, "Interpretability in the wild", Fig. 2 / Sec. 3) give it:
  name movers 9.9, 9.6, 10.0 (END→IO); S-inhibition 8.6 (END→S2); duplicate-token 3.0
  (S2→S1); previous-token 4.11 (S1+1→S1). This mapping is ours, not stated in the paper.
  ``GPT2_IOI_WANG_HEADS`` holds Wang et al.'s main heads of those classes plus induction
  heads 5.5, 6.9 (S2→S1+1) for wider use.
"""

from __future__ import annotations

from dataclasses import dataclass

POSITION_LABELS = ("S1", "S1+1", "IO", "S2", "END")

NAME_MOVER = "name mover"
S_INHIBITION = "s-inhibition"
INDUCTION = "induction"
DUPLICATE_TOKEN = "duplicate token"
PREVIOUS_TOKEN = "previous token"
COPY_SUPPRESSION = "copy suppression"


@dataclass(frozen=True)
class CircuitHead:
    """One head of a circuit and the (query, key) position labels analysed for it."""

    layer: int
    head: int
    role: str
    query: str  # position label of the query (destination) token
    key: str  # position label of the key (source) token
    name: str = ""  # the name used in the source table, e.g. "Name Mover 1"

    def __post_init__(self) -> None:
        for label in (self.query, self.key):
            if label not in POSITION_LABELS:
                raise ValueError(f"unknown position label {label!r}; use one of {POSITION_LABELS}")
        if self.layer < 0 or self.head < 0:
            raise ValueError(f"layer and head must be >= 0, got ({self.layer}, {self.head})")


def _h(layer: int, head: int, role: str, q: str, k: str, name: str = "") -> CircuitHead:
    return CircuitHead(layer, head, role, q, k, name)


# Paper Table 2 (App. G), in the paper's order.
PYTHIA160M_IOI_HEADS: tuple[CircuitHead, ...] = (
    _h(2, 6, PREVIOUS_TOKEN, "S1+1", "S1", "Previous Token"),
    _h(4, 11, INDUCTION, "S2", "S1+1", "Induction 1"),
    _h(4, 6, INDUCTION, "S2", "S1+1", "Induction 2"),
    _h(5, 0, INDUCTION, "S2", "S1+1", "Induction 3"),
    _h(10, 7, NAME_MOVER, "END", "IO", "Name Mover 1"),
    _h(9, 4, NAME_MOVER, "END", "IO", "Name Mover 2"),
    _h(8, 2, NAME_MOVER, "END", "IO", "Name Mover 3"),
    _h(8, 10, NAME_MOVER, "END", "IO", "Name Mover 4"),
    _h(7, 9, S_INHIBITION, "END", "S2", "S-Inhibition 1"),
    _h(6, 6, S_INHIBITION, "END", "S2", "S-Inhibition 2"),
    _h(7, 2, S_INHIBITION, "END", "S2", "S-Inhibition 3"),
    _h(8, 9, COPY_SUPPRESSION, "END", "S2", "Positive Copy Suppression 1"),
)

# The six GPT-2 small heads the paper analyses (Fig. 9a), pairs per Wang et al. (2023).
GPT2_IOI_PAPER_HEADS: tuple[CircuitHead, ...] = (
    _h(8, 6, S_INHIBITION, "END", "S2", "S-Inhibition 8.6"),
    _h(4, 11, PREVIOUS_TOKEN, "S1+1", "S1", "Previous Token 4.11"),
    _h(3, 0, DUPLICATE_TOKEN, "S2", "S1", "Duplicate Token 3.0"),
    _h(9, 9, NAME_MOVER, "END", "IO", "Name Mover 9.9"),
    _h(9, 6, NAME_MOVER, "END", "IO", "Name Mover 9.6"),
    _h(10, 0, NAME_MOVER, "END", "IO", "Name Mover 10.0"),
)

# Wang et al. (2023) main heads of the classes with a single query/key pair.
GPT2_IOI_WANG_HEADS: tuple[CircuitHead, ...] = (
    _h(9, 9, NAME_MOVER, "END", "IO"),
    _h(9, 6, NAME_MOVER, "END", "IO"),
    _h(10, 0, NAME_MOVER, "END", "IO"),
    _h(8, 6, S_INHIBITION, "END", "S2"),
    _h(8, 10, S_INHIBITION, "END", "S2"),
    _h(7, 3, S_INHIBITION, "END", "S2"),
    _h(7, 9, S_INHIBITION, "END", "S2"),
    _h(5, 5, INDUCTION, "S2", "S1+1"),
    _h(6, 9, INDUCTION, "S2", "S1+1"),
    _h(0, 1, DUPLICATE_TOKEN, "S2", "S1"),
    _h(3, 0, DUPLICATE_TOKEN, "S2", "S1"),
    _h(2, 2, PREVIOUS_TOKEN, "S1+1", "S1"),
    _h(4, 11, PREVIOUS_TOKEN, "S1+1", "S1"),
)

# Model ids (as passed to load_model) with a published table.
PAPER_CIRCUITS: dict[str, tuple[CircuitHead, ...]] = {
    "gpt2": GPT2_IOI_PAPER_HEADS,
    "openai-community/gpt2": GPT2_IOI_PAPER_HEADS,
    "EleutherAI/pythia-160m": PYTHIA160M_IOI_HEADS,
    "EleutherAI/pythia-160m-deduped": PYTHIA160M_IOI_HEADS,
}


@dataclass(frozen=True)
class CircuitShape:
    """The architecture and head grid a table was published for: its (layer, head) indices mean
    nothing on another family or grid. (Width is not part of it: a narrower stand-in of the same
    grid, as the tests use, keeps the indices' meaning as positions in the grid.)"""

    model_type: str  # the transformers config's model_type
    n_layers: int
    n_heads: int


_GPT2_SMALL = CircuitShape("gpt2", 12, 12)
_PYTHIA_160M = CircuitShape("gpt_neox", 12, 12)
CIRCUIT_SHAPES: dict[str, CircuitShape] = {
    "gpt2": _GPT2_SMALL,
    "openai-community/gpt2": _GPT2_SMALL,
    "EleutherAI/pythia-160m": _PYTHIA_160M,
    "EleutherAI/pythia-160m-deduped": _PYTHIA_160M,
}


def config_shape(config) -> CircuitShape:
    """(model_type, layers, heads) of a transformers config."""
    return CircuitShape(
        str(getattr(config, "model_type", "?")),
        int(getattr(config, "num_hidden_layers", -1)),
        int(getattr(config, "num_attention_heads", -1)),
    )


def paper_circuit(model_name: str, config=None) -> tuple[CircuitHead, ...]:
    """The paper's head table for ``model_name``; KeyError lists the models that have one.

    With ``config`` (the analysed model's transformers config), ``ValueError`` unless the model
    has the architecture and shape the table was published for — GPT-2's head indices applied
    to a LLaMA model would name arbitrary heads without a word.
    """
    try:
        table = PAPER_CIRCUITS[model_name]
    except KeyError:
        raise KeyError(
            f"no published IOI head table for {model_name!r}; tables exist for "
            f"{sorted(PAPER_CIRCUITS)}. Use svfcheck.tasks.selection.discover_heads instead."
        ) from None
    if config is not None:
        want, got = CIRCUIT_SHAPES[model_name], config_shape(config)
        if got != want:
            raise ValueError(
                f"the IOI head table of {model_name!r} was published for a {want.model_type} model with "
                f"{want.n_layers} layers x {want.n_heads} heads; the model analysed is "
                f"{got.model_type} with {got.n_layers} layers x {got.n_heads} heads. "
                "Its head indices mean nothing here: use heads='discover' (--heads discover) or list heads."
            )
    return table
