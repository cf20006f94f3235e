"""The released Segment Anything models as data: encoder sizes, shared sizes and pixel statistics.

Kirillov et al., "Segment Anything", ICCV 2023 (arXiv 2304.02643); the numbers are those of
segment_anything's ``build_sam`` (``sam_model_registry``) and of ``Sam.pixel_mean``/``pixel_std``.
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Literal, NamedTuple

SamVariant = Literal["vit_b", "vit_l", "vit_h"]
"""The names of the released checkpoints (``sam_model_registry``'s keys)."""


class SamEncoderSizes(NamedTuple):
    """The image encoder sizes that tell the released variants apart."""

    embed_dim: int
    depth: int
    num_heads: int
    global_attn_indexes: tuple[int, ...]


class SamSharedSizes(NamedTuple):
    """The sizes every released variant shares (``build_sam``'s fixed arguments)."""

    image_size: int = 1024
    patch_size: int = 16
    window_size: int = 14
    prompt_embed_dim: int = 256
    decoder_depth: int = 2
    decoder_mlp_dim: int = 2048
    decoder_num_heads: int = 8
    mask_in_chans: int = 16


SAM_VARIANTS: Mapping[SamVariant, SamEncoderSizes] = MappingProxyType(
    {
        "vit_b": SamEncoderSizes(768, 12, 12, (2, 5, 8, 11)),
        "vit_l": SamEncoderSizes(1024, 24, 16, (5, 11, 17, 23)),
        "vit_h": SamEncoderSizes(1280, 32, 16, (7, 15, 23, 31)),
    }
)
"""Encoder sizes of each released checkpoint."""

RELEASED_SIZES = SamSharedSizes()
"""The shared sizes of the released checkpoints."""

# SAM's input normalization in 0-255 pixel units (``Sam.pixel_mean``, ``Sam.pixel_std``), as
# segment_anything's own ``Sam`` holds it ...
SAM_PIXEL_MEAN_255: tuple[float, float, float] = (123.675, 116.28, 103.53)
SAM_PIXEL_STD_255: tuple[float, float, float] = (58.395, 57.12, 57.375)
# ... and in [0, 1] units, as teachers and students take images.
SAM_PIXEL_MEAN: tuple[float, float, float] = (123.675 / 255, 116.28 / 255, 103.53 / 255)
SAM_PIXEL_STD: tuple[float, float, float] = (58.395 / 255, 57.12 / 255, 57.375 / 255)
