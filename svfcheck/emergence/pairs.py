"""Pair selection per prompt for SAD over training (``EmergenceSettings.selection``).

``"task"``: training-independent pairs fixed by the task structure — an induction head's query
in the repeated half → the induction target (``i - d + 1``); a previous-token head's query
``i`` → ``i - 1``; an IOI head's labelled positions; a head of a role without such a rule its
top-attended key. ``"top"``: each query's top-attended non-first key. With ``all_heads`` every
other head adds its top-attended keys (role ``"other"``).
"""

from __future__ import annotations

from ..tasks.selection import top_keys
from .prompts import _Prompt
from .settings import INDUCTION, OTHER, PREVIOUS_TOKEN, HeadSet

__all__: list[str] = []


def _pairs_for_prompt(settings, heads: HeadSet, p: _Prompt, attn, vis, n: int, b: int, all_pairs: list[tuple[str, int, int]]):
    """Append (role, layer, head, batch row, query, key) rows for one prompt."""
    out = []

    def top_key(l, h, q):
        best, ok = top_keys(attn[l][h, q], vis[l][q])
        return int(best) if bool(ok) else None

    def structural(role):
        if settings.task == "induction":
            s1, L, d = p.meta["s1"], p.meta["L"], p.meta["d"]
            if role == INDUCTION:
                return [(q, q - d + 1) for q in range(s1, s1 + L)]
            if role == PREVIOUS_TOKEN:
                return [(q, q - 1) for q in range(2, s1 + L)]
        elif settings.task == "text" and role == PREVIOUS_TOKEN:
            return [(q, q - 1) for q in range(2, n)]
        return None

    queries_all = range(1, n)
    pos = p.meta.get("positions")
    table = {(c.layer, c.head, c.role): c for c in heads.circuit} if heads.circuit is not None else {}
    for role, hl in heads.roles.items():
        for (l, h) in hl:
            if settings.selection == "task":
                if settings.task == "ioi":
                    c = table[(l, h, role)]
                    qk = [(pos[c.query], pos[c.key])]
                else:
                    qk = structural(role)
            else:
                qk = None
            if qk is None:
                if settings.task == "ioi" and (l, h, role) in table:
                    qs = [pos[table[(l, h, role)].query]]
                else:
                    qs = queries_all
                qk = [(q, top_key(l, h, q)) for q in qs]
            for q, k in qk:
                if k is None or int(vis[l][q].sum()) < 2 or not bool(vis[l][q, k]):
                    continue
                out.append((role, l, h, b, q, k))
    if settings.all_heads:
        chosen = {lh for hl in heads.roles.values() for lh in hl}
        for (l, h) in all_pairs:
            if (l, h) in chosen:
                continue
            for q in queries_all:
                k = top_key(l, h, q)
                if k is not None:
                    out.append((OTHER, l, h, b, q, k))
    return out
