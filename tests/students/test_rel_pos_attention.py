"""Blockwise attention with a decomposed relative position bias: the softmax attention it replaces,
outputs and gradients, whatever the block size."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.students.rel_pos_attention import _blocks, rel_pos_attention


def _reference(q, k, v, rel_h, rel_w, scale):
    bias = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).flatten(-2)
    return torch.softmax(scale * q @ k.transpose(1, 2) + bias, dim=-1) @ v


def _inputs(groups=6, queries=35, key_grid=(5, 7), dim=8, seed=0):
    torch.manual_seed(seed)
    keys = key_grid[0] * key_grid[1]
    shapes = [(groups, queries, dim), (groups, keys, dim), (groups, keys, dim),
              (groups, queries, key_grid[0]), (groups, queries, key_grid[1])]  # fmt: skip
    # large logits, so an unstabilised softmax would overflow
    return [(torch.randn(s, dtype=torch.double) * 6).requires_grad_(True) for s in shapes]


@pytest.mark.parametrize(
    "block_elements",
    [1 << 20, 3 * 35 * 35, 200, 1],
    ids=["one-block", "groups-per-block", "query-runs", "one-score"],
)
def test_outputs_and_gradients_equal_softmax_attention(block_elements):
    inputs = _inputs()
    weights = torch.randn(6, 35, 8, dtype=torch.double)
    want = _reference(*inputs, 0.3)
    want_grads = torch.autograd.grad((want * weights).sum(), inputs)
    got = rel_pos_attention(*inputs, scale=0.3, block_elements=block_elements)
    got_grads = torch.autograd.grad((got * weights).sum(), inputs)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    for got_grad, want_grad in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got_grad, want_grad, rtol=1e-9, atol=1e-11)


def test_queries_and_keys_may_differ_in_number():
    inputs = _inputs(queries=11)
    got = rel_pos_attention(*inputs, scale=0.5, block_elements=40)
    torch.testing.assert_close(got, _reference(*inputs, 0.5))


def test_blocks_cover_every_score_once_within_the_budget():
    covered = torch.zeros(7, 13, dtype=torch.long)
    for g, i in _blocks(7, 13, keys=10, budget=60):
        covered[g, i] += 1
        assert (g.stop - g.start) * (i.stop - i.start) * 10 <= 60
    assert bool((covered == 1).all())


def test_keys_must_form_the_bias_grid():
    q, k, v, rel_h, rel_w = _inputs()
    with pytest.raises(ValueError, match="5 x 6 grid"):
        rel_pos_attention(q, k, v, rel_h, rel_w[..., :6], scale=1.0)
