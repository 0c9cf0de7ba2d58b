"""svfcheck.real.capture.pad_batches: right padding, masks, order and batch sizes of ragged prompts.

Expected tensors are written out by hand; the capture check compares a padded batch with each
prompt run alone (no padding), so it does not depend on the batcher under test.
"""

from __future__ import annotations

import pytest
import torch

from svfcheck.real.capture import capture, pad_batches

RAGGED = [(5, 6, 7), (8,), (9, 10, 11, 12, 13), (14, 15), (16, 17, 18, 19)]


def test_ragged_prompts_exact_ids_masks_and_starts():
    got = list(pad_batches(RAGGED, 2, pad_id=-3))
    assert [s for s, _, _ in got] == [0, 2, 4]
    want_ids = [
        [[5, 6, 7], [8, -3, -3]],
        [[9, 10, 11, 12, 13], [14, 15, -3, -3, -3]],
        [[16, 17, 18, 19]],
    ]
    want_mask = [
        [[1, 1, 1], [1, 0, 0]],
        [[1, 1, 1, 1, 1], [1, 1, 0, 0, 0]],
        [[1, 1, 1, 1]],
    ]
    for (_, ids, mask), wi, wm in zip(got, want_ids, want_mask, strict=True):
        assert ids.dtype == torch.long and mask.dtype == torch.long
        assert ids.tolist() == wi  # right padding with pad_id, width = longest prompt of this batch
        assert mask.tolist() == wm  # 1 on real tokens, 0 on padding


@pytest.mark.parametrize("batch_size", [1, 2, 3, 5, 7])
def test_order_preserved_and_batch_size_respected(batch_size):
    got = list(pad_batches(RAGGED, batch_size, pad_id=0))
    sizes = [ids.shape[0] for _, ids, _ in got]
    assert all(b == batch_size for b in sizes[:-1]) and 1 <= sizes[-1] <= batch_size
    assert sum(sizes) == len(RAGGED)
    rows = []
    for s, ids, mask in got:
        assert s == len(rows)  # row r of the batch starting at s is prompt s + r
        assert ids.shape == mask.shape
        for r in range(ids.shape[0]):
            n = int(mask[r].sum())
            assert mask[r, :n].all() and not mask[r, n:].any()  # a prefix: padding only on the right
            rows.append(tuple(ids[r, :n].tolist()))
    assert rows == RAGGED


def test_accepts_lists_and_tensors_and_is_deterministic():
    a = list(pad_batches([list(p) for p in RAGGED], 3, 1))
    b = list(pad_batches([torch.tensor(p) for p in RAGGED], 3, 1))
    for (sa, ia, ma), (sb, ib, mb) in zip(a, b, strict=True):
        assert sa == sb and torch.equal(ia, ib) and torch.equal(ma, mb)


def test_bad_input_is_rejected_before_iteration():
    with pytest.raises(ValueError, match="no prompts"):
        pad_batches([], 2, 0)  # raised by the call itself, not on the first next()
    with pytest.raises(ValueError, match=r"prompts \[1\] have no tokens"):
        pad_batches([(1, 2), (), (3,)], 2, 0)
    for bad in (0, -1, 1.5, True, None):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            pad_batches(RAGGED, bad, 0)


def test_padded_batch_captures_like_each_prompt_alone():
    """Right padding is what capture expects: a prompt's attention in a padded batch equals its
    attention run alone (GPT-2, causal: the padding sits after every real query)."""
    from svfcheck.real.models import tiny_random_model

    model = tiny_random_model("gpt2", seed=0, vocab_size=32, n_layer=2, n_head=4, n_embd=32,
                              bos_token_id=0, eos_token_id=0)
    prompts = [(3, 4, 5, 6, 7, 8), (9, 10, 11), (12, 13, 14, 15)]
    (s, ids, mask), = list(pad_batches(prompts, 3, pad_id=0))
    assert s == 0
    cap = capture(model, ids, mask)
    for b, p in enumerate(prompts):
        alone = capture(model, torch.tensor([p]))
        n = len(p)
        for l in range(cap.n_layers):
            torch.testing.assert_close(cap.attn[l][b, :, :n, :n], alone.attn[l][0], rtol=1e-5, atol=1e-6)
            assert torch.equal(cap.visible[l][b, :n, :n], alone.visible[l][0])
            assert not cap.visible[l][b, :, n:].any()  # padded keys are never visible
