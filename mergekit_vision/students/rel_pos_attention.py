"""Attention with a decomposed relative position bias, computed block by block (CPU training).

``softmax(scale * q k^T + bias) v`` with MViTv2's decomposed bias (Li et al. 2022, arXiv
2112.01526), ``bias[i, (a, b)] = rel_h[i, a] + rel_w[i, b]`` over a ``Kh x Kw`` key grid: the
attention of segment_anything's ViT-Det blocks.

PyTorch has no fused CPU kernel for attention whose bias needs a gradient, and the unfused math
writes and rereads ``[heads, N, N]`` scores several times (805 MB per pass for a 1024 px global
block), each pass out of main memory. This autograd function does what flash attention does
(Dao et al., "FlashAttention", NeurIPS 2022, arXiv 2205.14135), at the granularity of PyTorch
ops: it walks blocks of (batch x head, query rows) small enough to stay in the CPU's cache, keeps
only each query's log-sum-exp from the forward, and recomputes the block's probabilities in the
backward. The bias is never materialised beyond one block, and its gradient is reduced to
``rel_h`` and ``rel_w`` block by block. The cost is one more ``q k^T`` product in the backward.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

# Scores per block: 2M fp32 elements (8 MB) keep a block and its probabilities in a 2-core
# EPYC's cache; measured on 1024 px global blocks against 1M, 4M and 16M.
BLOCK_ELEMENTS = 1 << 21


def rel_pos_attention(
    q: Tensor,
    k: Tensor,
    v: Tensor,
    rel_h: Tensor,
    rel_w: Tensor,
    *,
    scale: float,
    block_elements: int | None = None,
) -> Tensor:
    """``softmax(scale * q k^T + rel_h[..., :, None] + rel_w[..., None, :]) v``.

    Args:
        q: ``[G, Nq, d]`` queries (``G`` = batch x heads).
        k, v: ``[G, Kh * Kw, d]`` keys and values of a ``Kh x Kw`` grid, row-major.
        rel_h: ``[G, Nq, Kh]`` the bias term of each key row.
        rel_w: ``[G, Nq, Kw]`` the bias term of each key column.
        scale: the factor on ``q k^T``.
        block_elements: scores per block (default :data:`BLOCK_ELEMENTS`).

    Returns:
        ``[G, Nq, d]``.
    """
    if k.shape[1] != rel_h.shape[-1] * rel_w.shape[-1]:
        raise ValueError(
            f"{k.shape[1]} keys do not form the {rel_h.shape[-1]} x {rel_w.shape[-1]} grid "
            "that rel_h and rel_w describe"
        )
    budget = block_elements or BLOCK_ELEMENTS
    return _BlockwiseAttention.apply(q, k, v, rel_h, rel_w, scale, budget)


def _blocks(groups: int, queries: int, keys: int, budget: int) -> Iterator[tuple[slice, slice]]:
    """(group slice, query slice) pairs covering ``[groups, queries]``, each with at most
    ``budget`` scores where possible: whole groups first, then runs of query rows."""
    group_step = max(1, min(groups, budget // (queries * keys)))
    query_step = min(queries, max(1, budget // (group_step * keys)))
    for g in range(0, groups, group_step):
        for i in range(0, queries, query_step):
            yield slice(g, min(g + group_step, groups)), slice(i, min(i + query_step, queries))


def _scores(q: Tensor, k: Tensor, rel_h: Tensor, rel_w: Tensor, scale: float) -> Tensor:
    """``[g, n, Kh * Kw]`` biased scores of one block."""
    groups, queries, _ = q.shape
    key_rows, key_cols = rel_h.shape[-1], rel_w.shape[-1]
    scores = (rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)).view(groups, queries, key_rows * key_cols)
    return scores.baddbmm_(q, k.transpose(1, 2), alpha=scale)


class _BlockwiseAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, rel_h, rel_w, scale: float, budget: int):
        groups, queries, _ = q.shape
        out = q.new_empty(groups, queries, v.shape[-1])
        lse = q.new_empty(groups, queries, 1)
        for g, i in _blocks(groups, queries, k.shape[1], budget):
            scores = _scores(q[g, i], k[g], rel_h[g, i], rel_w[g, i], scale)
            lse[g, i] = torch.logsumexp(scores, dim=-1, keepdim=True)
            probabilities = scores.sub_(lse[g, i]).exp_()
            out[g, i] = torch.bmm(probabilities, v[g])
        ctx.save_for_backward(q, k, v, rel_h, rel_w, out, lse)
        ctx.scale, ctx.budget = scale, budget
        return out

    @staticmethod
    def backward(ctx, grad_out):
        q, k, v, rel_h, rel_w, out, lse = ctx.saved_tensors
        scale = ctx.scale
        grad_out = grad_out.contiguous()
        # D_i = sum_j P_ij dP_ij = dO_i . O_i (FlashAttention's backward, arXiv 2205.14135)
        delta = (grad_out * out).sum(-1, keepdim=True)
        grad_q, grad_k, grad_v = torch.empty_like(q), torch.zeros_like(k), torch.zeros_like(v)
        grad_h, grad_w = torch.empty_like(rel_h), torch.empty_like(rel_w)
        groups, queries, _ = q.shape
        key_rows, key_cols = rel_h.shape[-1], rel_w.shape[-1]
        for g, i in _blocks(groups, queries, k.shape[1], ctx.budget):
            probabilities = _scores(q[g, i], k[g], rel_h[g, i], rel_w[g, i], scale)
            probabilities.sub_(lse[g, i]).exp_()
            grad_v[g].baddbmm_(probabilities.transpose(1, 2), grad_out[g, i])
            # dS = P * (dO v^T - D), in place in the dP buffer
            grad_scores = torch.bmm(grad_out[g, i], v[g].transpose(1, 2))
            grad_scores.sub_(delta[g, i]).mul_(probabilities)
            grid = grad_scores.view(*grad_scores.shape[:2], key_rows, key_cols)
            grad_h[g, i] = grid.sum(-1)
            grad_w[g, i] = grid.sum(-2)
            grad_q[g, i] = torch.bmm(grad_scores, k[g]).mul_(scale)
            grad_k[g].baddbmm_(grad_scores.transpose(1, 2), q[g, i], alpha=scale)
        return grad_q, grad_k, grad_v, grad_h, grad_w, None, None
