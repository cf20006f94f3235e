"""``resize_masks`` resizes bool masks as uint8 bytes, from any strides: the same masks as
resizing the bools themselves (torchvision's nearest-exact)."""

from __future__ import annotations

import pytest
import torch
import torchvision.transforms.v2.functional as TF
from torchvision.transforms import InterpolationMode

from mergekit_vision.data.transforms import _fit, _scaled_size, drop_empty, resize_masks


@pytest.mark.parametrize("mode", ["pad", "crop"])
def test_strided_bool_masks_resize_as_the_bools_do(mode: str) -> None:
    generator = torch.Generator().manual_seed(0)
    column_major = torch.rand(37, 53, 5, generator=generator) > 0.6  # [H, W, M], a decoder's
    masks = column_major.permute(2, 0, 1)  # [M, H, W], not contiguous
    size = _scaled_size(37, 53, resolution=24, mode=mode)
    reference = TF.resize(masks.contiguous(), list(size), InterpolationMode.NEAREST_EXACT)
    expected = _fit(reference, resolution=24, mode=mode)
    got = resize_masks(masks, resolution=24, mode=mode)
    assert got.dtype == torch.bool and got.is_contiguous() and got.shape == (5, 24, 24)
    assert torch.equal(got, expected)


def test_drop_empty_keeps_the_tensor_when_nothing_is_empty() -> None:
    masks = torch.ones(3, 4, 4, dtype=torch.bool)
    assert drop_empty(masks) is masks
    masks[1] = False
    assert drop_empty(masks).shape == (2, 4, 4)
