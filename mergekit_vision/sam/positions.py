"""Fitting a SAM image encoder's position tables to another token grid.

An encoder run at another input size than its weights were made for needs two kinds of table
resampled: the absolute position embedding ``pos_embed`` ``[1, h, w, C]`` (bicubic) and, in the
global-attention blocks, the decomposed relative position tables ``rel_pos_h``/``rel_pos_w``
``[2 * grid - 1, C]`` (linear, as segment_anything's ``get_rel_pos`` does at run time). Windowed
blocks' tables depend on the window only and never change.

Two bicubic conventions are in use, and they give different numbers when up- and downsampling
alike, so each caller names its own (``antialias``):

- ``antialias=False``: detectron2 ViTDet's ``get_abs_pos`` (Li et al. 2022, arXiv 2203.16527).
  The SAM teacher fits a released checkpoint to its ``image_size`` this way (e.g. vit_b's 1024 px
  table run at 256 px), so the targets of existing recipes depend on it.
- ``antialias=True``: timm's ``resample_abs_pos_embed``. The ViT-Det student resamples its table
  this way to every input size it trains and runs at, and when it loads weights of another
  native size.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import torch.nn.functional as F
from torch import Tensor


def resample_pos_embed(pos_embed: Tensor, grid: Sequence[int], *, antialias: bool) -> Tensor:
    """Resample an absolute position embedding to another token grid.

    Bicubic with ``align_corners=False``, computed in float32 so that bf16 parameters do not lose
    the interpolation.

    Args:
        pos_embed: ``[1, h, w, C]``.
        grid: the target ``(h', w')``.
        antialias: timm's convention (True) or detectron2 ViTDet's (False); see the module.

    Returns:
        ``[1, h', w', C]``; ``pos_embed`` itself when the grid already matches.
    """
    if tuple(pos_embed.shape[1:3]) == tuple(grid):
        return pos_embed
    nchw = pos_embed.float().permute(0, 3, 1, 2)
    resized = F.interpolate(
        nchw, size=tuple(grid), mode="bicubic", align_corners=False, antialias=antialias
    )
    return resized.permute(0, 2, 3, 1).to(pos_embed.dtype)


def resample_rel_pos(table: Tensor, length: int) -> Tensor:
    """``[L, C]`` relative position table -> ``[length, C]``, linearly, as ``get_rel_pos`` does."""
    if table.shape[0] == length:
        return table
    resized = F.interpolate(table.float().T.unsqueeze(0), size=length, mode="linear")
    return resized[0].T.to(table.dtype)


def resample_encoder_positions(
    weights: Mapping[str, Tensor],
    *,
    grid: int,
    global_attn_indexes: Iterable[int],
    antialias: bool,
    prefix: str = "",
) -> dict[str, Tensor]:
    """An image encoder's state dict with its position tables fitted to a ``grid x grid`` input.

    Args:
        weights: ``ImageEncoderViT`` parameters, each key starting with ``prefix``; other keys
            pass through unchanged.
        grid: the target token grid side (input side / patch size).
        global_attn_indexes: the blocks with global attention, whose relative tables span the
            whole grid.
        antialias: the bicubic convention for ``pos_embed`` (see the module).
        prefix: the encoder's key prefix, e.g. ``"image_encoder."`` in a whole ``Sam``.

    Returns:
        A new dict; ``weights`` is not modified.
    """
    fitted = dict(weights)
    pos_key = f"{prefix}pos_embed"
    if pos_key in fitted:
        fitted[pos_key] = resample_pos_embed(fitted[pos_key], (grid, grid), antialias=antialias)
    for index in global_attn_indexes:
        for axis in ("h", "w"):
            key = f"{prefix}blocks.{index}.attn.rel_pos_{axis}"
            if key in fitted:
                fitted[key] = resample_rel_pos(fitted[key], 2 * grid - 1)
    return fitted
