"""The SAM toolkit's data and position resampling: the released variants as segment_anything builds
them, and the two bicubic conventions of the position embedding."""

from __future__ import annotations

import importlib
import inspect

import pytest
import segment_anything
import torch
from segment_anything.modeling import Sam
from timm.layers import resample_abs_pos_embed_nhwc

from mergekit_vision.sam.positions import resample_encoder_positions, resample_pos_embed
from mergekit_vision.sam.variants import (
    RELEASED_SIZES,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_MEAN_255,
    SAM_PIXEL_STD,
    SAM_PIXEL_STD_255,
    SAM_VARIANTS,
)


@pytest.mark.parametrize("variant", list(SAM_VARIANTS))
def test_variants_are_what_sam_model_registry_builds(monkeypatch, variant):
    built = {}
    # The package's ``build_sam`` name is a function; the module is reached through importlib.
    builders = importlib.import_module("segment_anything.build_sam")
    monkeypatch.setattr(builders, "_build_sam", lambda **kw: built.update(kw))
    segment_anything.sam_model_registry[variant]()
    dim, depth, heads, global_blocks = SAM_VARIANTS[variant]
    assert built["encoder_embed_dim"] == dim and built["encoder_depth"] == depth
    assert built["encoder_num_heads"] == heads
    assert tuple(built["encoder_global_attn_indexes"]) == global_blocks
    assert set(segment_anything.sam_model_registry) == {"default", *SAM_VARIANTS}


def test_pixel_statistics_are_sams():
    defaults = inspect.signature(Sam).parameters
    assert defaults["pixel_mean"].default == list(SAM_PIXEL_MEAN_255)
    assert defaults["pixel_std"].default == list(SAM_PIXEL_STD_255)
    assert SAM_PIXEL_MEAN == tuple(v / 255 for v in SAM_PIXEL_MEAN_255)
    assert SAM_PIXEL_STD == tuple(v / 255 for v in SAM_PIXEL_STD_255)
    assert RELEASED_SIZES.image_size // RELEASED_SIZES.patch_size == 64


@pytest.mark.parametrize("grid", [(4, 4), (6, 6), (14, 14), (16, 12)])
def test_both_conventions_are_timms_and_differ(grid):
    pos_embed = torch.randn(1, 8, 8, 16)
    for antialias in (True, False):
        expected = resample_abs_pos_embed_nhwc(pos_embed, list(grid), antialias=antialias)
        assert torch.equal(resample_pos_embed(pos_embed, grid, antialias=antialias), expected)
    # Why callers must name theirs: the two disagree up and down.
    assert not torch.allclose(
        resample_pos_embed(pos_embed, grid, antialias=True),
        resample_pos_embed(pos_embed, grid, antialias=False),
        atol=1e-3,
    )


def test_encoder_positions_resample_only_global_tables_and_copy():
    weights = {
        "image_encoder.pos_embed": torch.randn(1, 8, 8, 4),
        "image_encoder.blocks.0.attn.rel_pos_h": torch.randn(7, 2),  # a 4 x 4 window
        "image_encoder.blocks.1.attn.rel_pos_h": torch.randn(15, 2),
        "image_encoder.blocks.1.attn.rel_pos_w": torch.randn(15, 2),
        "mask_decoder.iou_token.weight": torch.randn(1, 4),
    }
    fitted = resample_encoder_positions(
        weights, grid=4, global_attn_indexes=(1,), antialias=False, prefix="image_encoder."
    )
    assert fitted["image_encoder.pos_embed"].shape == (1, 4, 4, 4)
    assert fitted["image_encoder.blocks.1.attn.rel_pos_w"].shape == (7, 2)
    for unchanged in ("image_encoder.blocks.0.attn.rel_pos_h", "mask_decoder.iou_token.weight"):
        assert fitted[unchanged] is weights[unchanged]
    assert weights["image_encoder.pos_embed"].shape == (1, 8, 8, 4)
