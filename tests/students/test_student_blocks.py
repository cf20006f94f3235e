"""Students return the outputs of the blocks asked for, and only those: the same tensors as
every block's outputs (``return_intermediates``), keyed by block index, nothing kept otherwise."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.students.radio import RadioStudent
from mergekit_vision.students.timm_features import TimmFeaturesStudent
from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.students.vitdet import ViTDetStudent

from ..tiny_radio import TINY_RADIO_CONFIG


def vitdet() -> ViTDetStudent:
    torch.manual_seed(0)
    params = ViTDetStudent.Params(variant="custom", embed_dim=24, depth=3, num_heads=2,
                                  global_attn_indexes=(2,), patch_size=8, window_size=4,
                                  out_chans=16, native_size=32)  # fmt: skip
    return ViTDetStudent.build(params, teachers={}).eval()


def timm_vit() -> TimmViTStudent:
    torch.manual_seed(0)
    params = TimmViTStudent.Params(
        model="vit_small_patch14_dinov2",
        native_size=28,
        model_kwargs=dict(depth=3, embed_dim=24, num_heads=2),
    )
    return TimmViTStudent.build(params, teachers={}).eval()


def timm_features() -> TimmFeaturesStudent:
    torch.manual_seed(0)
    params = TimmFeaturesStudent.Params(
        model="mobilenetv4_conv_small_050", stride=8, embed_dim=24, num_blocks=3, native_size=32
    )
    return TimmFeaturesStudent.build(params, teachers={}).eval()


def radio() -> RadioStudent:
    torch.manual_seed(0)
    return RadioStudent.build(RadioStudent.Params(config=TINY_RADIO_CONFIG), teachers={}).eval()


@pytest.mark.parametrize(
    "make",
    [vitdet, timm_vit, radio, timm_features],
    ids=["vitdet", "timm_vit", "radio", "timm_features"],
)
def test_only_the_blocks_asked_for_are_returned(make):
    student = make()
    images = torch.rand(2, 3, 4 * student.patch_size, 4 * student.patch_size)
    with torch.no_grad():
        every = student(images, return_intermediates=True)
        plain = student(images)
        asked = student(images, blocks=[2, 0])
        last = student(images, blocks=[-1])
    assert len(every.intermediates) == 3 and every.blocks == {}
    assert plain.blocks == {} and plain.intermediates == []  # nothing kept unless asked
    assert sorted(asked.blocks) == [0, 2]
    for index in (0, 2):
        torch.testing.assert_close(asked.blocks[index], every.intermediates[index])
    assert sorted(last.blocks) == [2]  # -1: the last block, keyed by its index
    torch.testing.assert_close(asked.tokens, plain.tokens)  # the output does not change
    both = student(images, return_intermediates=True, blocks=[1])
    torch.testing.assert_close(both.blocks[1], every.intermediates[1])
    with pytest.raises(ValueError, match=r"block\(s\) \[3\] out of range; the student has 3"):
        student(images, blocks=[3])
