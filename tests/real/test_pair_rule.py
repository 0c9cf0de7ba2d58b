"""The decomposition's pair listing and the task-level selector apply the same rule
(tasks.selection.top_keys): for every architecture, with padding and sliding windows, the
pairs of top_attended_pairs(capture) equal top_key_pairs on each prompt's own views."""

from __future__ import annotations

import pytest

from svfcheck.real.capture import capture
from svfcheck.real.decompose import top_attended_pairs
from svfcheck.real.heads import extract_heads
from svfcheck.tasks.selection import top_key_pairs

ARCHS = ("gpt2", "gpt_neox", "llama", "mistral", "qwen2", "gemma3_text", "bert", "gemma2", "smollm3", "gptj")


@pytest.mark.parametrize("arch", ARCHS)
def test_top_attended_pairs_follow_the_selection_rule(arch, tiny):
    model = tiny.model(arch)
    ids, mask = tiny.inputs(arch, n=12, batch=2, pad=True)
    cap = capture(model, ids, mask, heads=extract_heads(model))
    got = top_attended_pairs(cap)
    got = sorted(zip(got.prompt.tolist(), got.layer.tolist(), got.head.tolist(), got.query_pos.tolist(),
                     got.key_pos.tolist()))
    want = []
    for b in range(cap.batch):
        attn, vis = cap.prompt_views(b)
        want += [(b, p.layer, p.head, p.query, p.key) for p in top_key_pairs(attn, vis, prompt_index=b).pairs]
    assert got == sorted(want) and len(got) > 0
