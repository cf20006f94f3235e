"""A faster forward for segment_anything's ViT-Det ``Block``, numerically the same function.

The decomposed relative position bias of MViTv2 (Li et al. 2022, arXiv 2112.01526) is
``bias[i, j] = q_i . R_h[h_i - h_j] + q_i . R_w[w_i - w_j]``, built from two small einsums. On GPU
it is handed to :func:`torch.nn.functional.scaled_dot_product_attention` as its float
``attn_mask`` (the memory-efficient kernel takes a bias that needs gradients); on CPU, where no
fused kernel takes one, the attention runs block by block without ever materialising the bias
(:mod:`~mergekit_vision.students.rel_pos_attention`). What else this saves over
segment_anything's ``Block.forward``:

- windowed blocks pad the grid to a multiple of the window *after* the qkv projection (the padded
  tokens' q, k, v are exactly the qkv bias, as when zeros are projected), so the qkv and output
  projections never run on padding (at 1024 px the 64-token grid pads to 70: 20% of those
  FLOPs; at 512 px, 32 -> 42: 72%);
- no ``[heads, N, N]`` bias or score tensor of a global block (N = 4096 at 1024 px: 805 MB per
  copy in fp32) is ever written whole: on GPU the query rows run in chunks, on CPU in
  cache-sized blocks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from segment_anything.modeling.image_encoder import Block, get_rel_pos
from torch import Tensor

from mergekit_vision.students.rel_pos_attention import rel_pos_attention

# Scores of one query chunk of a global block on GPU: at most this many elements (256 MB in fp32).
GLOBAL_CHUNK_ELEMENTS = 1 << 26


class ViTDetBlock(Block):
    """segment_anything's ``Block`` (same submodules and state dict) whose forward is
    :func:`block_forward_sdpa` when ``attention == "sdpa"``, else ``Block.forward``.

    The choice lives in the block's own ``forward``, so ``block(x)`` runs every module hook on the
    fast path too: FSDP2 can shard block by block, and activation checkpointing wraps the call.
    A built ``Block`` becomes one with :meth:`adopt` (no new parameters or buffers).
    """

    attention: str = "sdpa"

    @classmethod
    def adopt(cls, block: Block, attention: str) -> ViTDetBlock:
        block.__class__ = cls
        block.attention = attention
        return block  # type: ignore[return-value]

    def forward(self, x: Tensor) -> Tensor:
        if self.attention == "sdpa":
            return block_forward_sdpa(self, x)
        return super().forward(x)


def block_forward_sdpa(block: Block, x: Tensor) -> Tensor:
    """``block(x)`` of a segment_anything ViT-Det ``Block``, through SDPA on GPU and blockwise
    attention on CPU.

    Args:
        block: a ``Block`` with ``use_rel_pos=True``.
        x: ``[B, H, W, C]`` tokens.

    Returns:
        ``[B, H, W, C]``, equal to ``block(x)`` up to float rounding.
    """
    attn = block.attn
    if not attn.use_rel_pos:
        raise ValueError("block_forward_sdpa needs a block with relative position bias")
    shortcut = x
    x = block.norm1(x)
    if block.window_size > 0:
        x = _windowed_attention(x, block.window_size, attn)
    else:
        x = _global_attention(x, attn)
    x = shortcut + F.linear(x, attn.proj.weight, attn.proj.bias)
    return x + block.mlp(block.norm2(x))


def attend(q: Tensor, k: Tensor, v: Tensor, attn: torch.nn.Module, grid: tuple[int, int]) -> Tensor:
    """Attention of ``[B, heads, h * w, d]`` q, k, v with ``attn``'s decomposed bias.

    On CPU through :func:`~mergekit_vision.students.rel_pos_attention.rel_pos_attention`
    (blockwise, bias never materialised: PyTorch has no fused CPU kernel for a bias that needs a
    gradient); elsewhere through :func:`~torch.nn.functional.scaled_dot_product_attention` with
    the bias as ``attn_mask`` (on CUDA the memory-efficient kernel takes it with its gradient).
    """
    rel_h, rel_w = _rel_pos_terms(q, attn, grid)
    if q.device.type != "cpu":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=_bias(rel_h, rel_w))
    batch, heads, tokens, dim = q.shape
    out = rel_pos_attention(
        *(t.reshape(batch * heads, -1, t.shape[-1]) for t in (q, k, v)),
        rel_h.reshape(batch * heads, tokens, -1),
        rel_w.reshape(batch * heads, tokens, -1),
        scale=attn.scale,
    )
    return out.view(batch, heads, tokens, dim)


def _split_heads(qkv: Tensor, num_heads: int) -> tuple[Tensor, Tensor, Tensor]:
    """``[B, N, 3C]`` -> q, k, v ``[B, heads, N, C/heads]`` (views, no copy)."""
    batch, tokens, width = qkv.shape
    qkv = qkv.view(batch, tokens, 3, num_heads, width // (3 * num_heads))
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    return q, k, v


def _rel_pos_terms(
    q: Tensor, attn: torch.nn.Module, grid: tuple[int, int], rows: slice | None = None
) -> tuple[Tensor, Tensor]:
    """The two einsum terms of the decomposed bias for the query rows ``rows`` of the grid.

    Args:
        q: ``[B, heads, h * w, d]`` queries (unscaled, as segment_anything uses them).

    Returns:
        ``rel_h [B, heads, r, w, h]`` and ``rel_w [B, heads, r, w, w]`` for ``r`` query rows.
    """
    height, width = grid
    r_h = get_rel_pos(height, height, attn.rel_pos_h)
    r_w = get_rel_pos(width, width, attn.rel_pos_w)
    q = q.unflatten(2, (height, width))
    if rows is not None:
        q, r_h = q[:, :, rows], r_h[rows]
    rel_h = torch.einsum("bnhwc,hkc->bnhwk", q, r_h)
    rel_w = torch.einsum("bnhwc,wkc->bnhwk", q, r_w)
    return rel_h, rel_w


def _bias(rel_h: Tensor, rel_w: Tensor) -> Tensor:
    """``[B, heads, r, w, kh]`` and ``[B, heads, r, w, kw]`` -> mask ``[B, heads, r*w, kh*kw]``."""
    bias = rel_h.unsqueeze(-1) + rel_w.unsqueeze(-2)
    return bias.flatten(-2).flatten(2, 3)


def _windowed_attention(x: Tensor, window: int, attn: torch.nn.Module) -> Tensor:
    """Attention within ``window x window`` windows; ``[B, H, W, C]`` -> ``[B, H, W, C]``."""
    batch, height, width, channels = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight)
    pad_h, pad_w = -height % window, -width % window
    if pad_h or pad_w:
        qkv = F.pad(qkv, (0, 0, 0, pad_w, 0, pad_h))
    if attn.qkv.bias is not None:
        qkv = qkv + attn.qkv.bias
    rows, cols = (height + pad_h) // window, (width + pad_w) // window
    windows = qkv.view(batch, rows, window, cols, window, 3 * channels).transpose(2, 3)
    windows = windows.reshape(batch * rows * cols, window * window, 3 * channels)
    q, k, v = _split_heads(windows, heads)
    out = attend(q, k, v, attn, (window, window))
    # [B*nW, heads, ws*ws, d] -> [B, rows, ws, cols, ws, heads, d] -> [B, Hp, Wp, C]
    out = out.view(batch, rows, cols, heads, window, window, -1).permute(0, 1, 4, 2, 5, 3, 6)
    out = out.reshape(batch, rows * window, cols * window, channels)
    return out[:, :height, :width] if pad_h or pad_w else out


def _global_attention(x: Tensor, attn: torch.nn.Module) -> Tensor:
    """Attention over the whole grid; ``[B, H, W, C]`` -> same."""
    batch, height, width, channels = x.shape
    heads = attn.num_heads
    qkv = F.linear(x, attn.qkv.weight, attn.qkv.bias).view(batch, height * width, 3 * channels)
    q, k, v = _split_heads(qkv, heads)
    if x.device.type == "cpu":
        out = attend(q, k, v, attn, (height, width))
    else:
        out = _global_attention_in_row_chunks(q, k, v, attn, (height, width))
    return out.transpose(1, 2).reshape(batch, height, width, channels)


def _global_attention_in_row_chunks(
    q: Tensor, k: Tensor, v: Tensor, attn: torch.nn.Module, grid: tuple[int, int]
) -> Tensor:
    """SDPA over chunks of query rows, so one chunk's ``[B, heads, rows, N]`` bias stays small."""
    q, k, v = (t.contiguous() for t in (q, k, v))  # once, not once per chunk
    batch, heads, tokens, _ = q.shape
    height, width = grid
    chunk_rows = max(1, GLOBAL_CHUNK_ELEMENTS // (batch * heads * width * tokens))
    outputs = []
    for start in range(0, height, chunk_rows):
        rows = slice(start, min(start + chunk_rows, height))
        rel_h, rel_w = _rel_pos_terms(q, attn, grid, rows)
        q_rows = q[:, :, rows.start * width : rows.stop * width]
        mask = _bias(rel_h, rel_w)
        outputs.append(F.scaled_dot_product_attention(q_rows, k, v, attn_mask=mask))
    return outputs[0] if len(outputs) == 1 else torch.cat(outputs, dim=2)
