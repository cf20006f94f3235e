"""The timm feature-extractor student: levels fused at the chosen stride, weights loaded from (and
matching) timm, heads built on it, and a training step that lowers a loss."""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from pydantic import ValidationError

from mergekit_vision.heads.clip_head import ClipHead
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.students.timm_features import TimmFeaturesStudent

from ..test_zoo_smoke import tiny_prompts, tiny_teacher

MODEL = "mobilenetv4_conv_small_050"  # feature levels at strides 2, 4, 8, 16, 32


def params(**overrides) -> TimmFeaturesStudent.Params:
    fields = dict(model=MODEL, stride=8, embed_dim=24, out_chans=32, native_size=64)
    return TimmFeaturesStudent.Params(**{**fields, **overrides})


@pytest.mark.parametrize("stride", [8, 16])
def test_the_stride_sets_the_grid_and_the_fused_levels(stride: int):
    torch.manual_seed(0)
    student = TimmFeaturesStudent.build(params(stride=stride), teachers={})
    assert student.patch_size == stride
    assert len(student.fusion.laterals) == {8: 3, 16: 2}[stride]  # the coarser levels too
    features = student(torch.rand(2, 3, 80, 80))  # 80 / 32 is not whole: levels round up
    grid = 80 // stride
    assert features.tokens.shape == (2, grid, grid, 24)
    assert features.feature_map.shape == (2, 32, grid, grid)
    with pytest.raises(ValueError, match=r"strides \[2, 4, 8, 16, 32\]; set stride"):
        TimmFeaturesStudent.build(params(stride=12, native_size=48), teachers={})


def test_weights_load_from_a_timm_classifier_checkpoint(tmp_path: Path):
    torch.manual_seed(0)
    classifier = timm.create_model(MODEL, pretrained=False).eval()
    path = tmp_path / "mnv4.pth"
    torch.save({"state_dict": classifier.state_dict()}, path)  # a training checkpoint's layout
    student = TimmFeaturesStudent.build(params(checkpoint=path), teachers={}).eval()
    images = torch.rand(1, 3, 64, 64)
    pixels = (images - torch.tensor(student.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(
        student.pixel_std
    ).view(1, 3, 1, 1)
    with torch.no_grad():
        expected = classifier.forward_intermediates(pixels, indices=[2], intermediates_only=True)
        levels = student.backbone(pixels)
    torch.testing.assert_close(levels[2], expected[0])
    other = tmp_path / "other.pth"
    torch.save(timm.create_model("mobilenetv4_conv_small", pretrained=False).state_dict(), other)
    with pytest.raises(ValueError, match="do model and model_kwargs match"):
        TimmFeaturesStudent.build(params(checkpoint=other), teachers={})


def test_params_validation():
    with pytest.raises(ValidationError, match="unknown timm model"):
        params(model="no_such_net")
    with pytest.raises(ValidationError, match="may not set features_only"):
        params(model_kwargs={"features_only": False})
    with pytest.raises(ValidationError, match="native_size must be a multiple of stride"):
        params(native_size=60)
    with pytest.raises(ValidationError, match="not both"):
        params(init_from="timm", checkpoint=Path("x.pth"))


def test_sam_and_clip_heads_read_it_at_the_sam_teachers_grid():
    """The tiny SAM teacher has patch 8: a stride-8 student gives its decoder the same grid."""
    sam, clip = tiny_teacher("sam"), tiny_teacher("open_clip")
    teachers = {"sam": sam, "clip": clip}
    torch.manual_seed(0)
    student = TimmFeaturesStudent.build(params(), teachers=teachers)
    sam_head = SamHead.build(SamHead.Params(init_from="sam"), student=student, teachers=teachers)
    clip_params = ClipHead.Params(teacher="clip", num_blocks=1, blocks="backbone")
    clip_head = ClipHead.build(clip_params, student=student, teachers=teachers)
    images, prompts = torch.rand(2, 3, 64, 64), tiny_prompts(2, 64)
    features = student(images)
    masks = sam_head(features, prompts=prompts)["mask_logits"]
    with torch.no_grad():
        wanted = sam(images, targets=["mask_logits"], prompts=prompts)["mask_logits"]
    assert masks.shape == wanted.shape
    embedding = clip_head(features)["image_embedding"]
    assert embedding.shape == (2, clip.target_specs()["image_embedding"].shape[-1])


def test_a_training_step_lowers_a_loss():
    torch.manual_seed(0)
    student = TimmFeaturesStudent.build(params(), teachers={})
    images, target = torch.rand(4, 3, 64, 64), torch.randn(4, 32, 8, 8)
    optimizer = torch.optim.AdamW(student.parameters(), lr=1e-2)
    losses = []
    for _ in range(3):
        loss = torch.nn.functional.mse_loss(student(images).feature_map, target)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
