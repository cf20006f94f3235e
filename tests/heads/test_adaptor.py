"""The AM-RADIO adaptor head: shapes follow the teacher's targets (upsampled to its grid), the
summary comes from the chosen source, and a few steps of the feature loss fit a teacher."""

from __future__ import annotations

import warnings

import pytest
import torch
from pydantic import ValidationError

from mergekit_vision.contracts import StudentFeatures
from mergekit_vision.heads.adaptor import AdaptorHead
from mergekit_vision.losses.feature import FeatureLoss
from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.teachers.timm import TimmParams, TimmTeacher

VIT = dict(depth=2, embed_dim=32, num_heads=2)


@pytest.fixture(scope="module")
def teachers() -> dict[str, TimmTeacher]:
    torch.manual_seed(0)
    params = TimmParams(model="vit_small_patch14_dinov2", model_kwargs={"img_size": 84, **VIT})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return {"dino": TimmTeacher.build(params, allow_random_init=True)}  # 6x6 grid, width 32


def vit_student() -> TimmViTStudent:
    params = TimmViTStudent.Params(
        model="vit_small_patch14_dinov2", native_size=56, model_kwargs={**VIT, "embed_dim": 48}
    )
    return TimmViTStudent.build(params, teachers={})


def vitdet_student() -> ViTDetStudent:
    params = ViTDetStudent.Params(variant="custom", embed_dim=32, depth=1, num_heads=2,
                                  global_attn_indexes=(0,), patch_size=8, window_size=4,
                                  out_chans=16, native_size=32)  # fmt: skip
    return ViTDetStudent.build(params, teachers={})


def build(teachers, student, **params) -> AdaptorHead:
    return AdaptorHead.build(
        AdaptorHead.Params(teacher="dino", **params), student=student, teachers=teachers
    )


def test_outputs_follow_the_teachers_targets(teachers):
    student = vitdet_student()
    features = student(torch.rand(2, 3, 32, 32))  # a 4x4 grid
    out = build(teachers, student)(features)
    assert out["summary"].shape == (2, 32)
    assert out["spatial"].shape == (2, 32, 6, 6)  # upsampled to the teacher's grid
    kept = build(teachers, student, upsample=False)(features)
    assert kept["spatial"].shape == (2, 32, 4, 4)
    only_summary = build(teachers, student, spatial_target=None)(features)
    assert set(only_summary) == {"summary"}


def test_summary_sources(teachers):
    student = vit_student()
    features = student(torch.rand(2, 3, 56, 56))
    head = build(teachers, student, summary_source="cls")
    want = head.summary_mlp(features.prefix_tokens[:, 0])
    torch.testing.assert_close(head(features)["summary"], want)
    head = build(teachers, student, summary_source="max", depth=1)
    assert len(head.summary_mlp.layers) == 1  # a linear probe
    torch.testing.assert_close(
        head(features)["summary"], head.summary_mlp(features.tokens.flatten(1, 2).amax(1))
    )
    with pytest.raises(ValueError, match="has 0 prefix token"):
        build(teachers, vitdet_student(), summary_source="cls")


def test_params_and_references_are_checked(teachers):
    with pytest.raises(ValidationError, match="summary_target, spatial_target or both"):
        AdaptorHead.Params(teacher="dino", summary_target=None, spatial_target=None)
    with pytest.raises(ValueError, match="no target 'features'"):
        build(teachers, vitdet_student(), spatial_target="features")
    with pytest.raises(ValueError, match="expected \\(B, C, h, w\\)"):
        build(teachers, vitdet_student(), spatial_target="summary")
    with pytest.raises(ValueError, match="not a teacher of this recipe"):
        AdaptorHead.build(
            AdaptorHead.Params(teacher="clip"), student=vitdet_student(), teachers=teachers
        )


def test_a_few_steps_fit_fixed_teacher_features(teachers):
    torch.manual_seed(0)
    student = vitdet_student().requires_grad_(False)
    head = build(teachers, student)
    images = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        features: StudentFeatures = student(images)
        target = teachers["dino"](images, targets=["spatial"])["spatial"]
    loss = FeatureLoss()
    optimizer = torch.optim.AdamW(head.parameters(), lr=3e-3)
    first = None
    for _ in range(60):
        value = loss(head(features)["spatial"], target)
        first = value.item() if first is None else first
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
    assert value.item() < 0.5 * first


def test_shrinking_to_a_resnet_clips_grid_reads_every_student_token():
    """open_clip's ResNet gives a 2 x 2 map; from a 16 x 16 student grid, plain bilinear sampling
    would read 4 tokens per cell and ignore the other 60. The filtered resize reads them all."""
    from mergekit_vision.teachers.open_clip import OpenClipParams, OpenClipTeacher

    cfg = {
        "embed_dim": 16,
        "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
        "text_cfg": {"context_length": 8, "vocab_size": 49408, "width": 16, "heads": 2,
                     "layers": 1},
    }  # fmt: skip
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clip = OpenClipTeacher.build(
            OpenClipParams(model="adaptor-rn", model_cfg=cfg), allow_random_init=True
        )
    student = vitdet_student()
    head = AdaptorHead.build(
        AdaptorHead.Params(teacher="clip", summary_target=None, spatial_target="spatial"),
        student=student,
        teachers={"clip": clip},
    )
    features = student(torch.rand(1, 3, 128, 128))  # a 16 x 16 grid
    tokens = features.tokens.detach().requires_grad_(True)
    out = head(StudentFeatures(tokens=tokens, feature_map=features.feature_map, image_size=128))
    assert set(out) == {"spatial"} and out["spatial"].shape == (1, 256, 2, 2)
    out["spatial"].sum().backward()
    assert (tokens.grad.abs().sum(dim=-1) > 0).all()
