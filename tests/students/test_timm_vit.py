"""The timm ViT student: initialised from a timm teacher it computes that teacher's features, runs
at any multiple of its patch size, and its weights load back into timm unchanged."""

from __future__ import annotations

import pytest
import timm
import torch
from pydantic import ValidationError

from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.teachers.timm import TimmParams, TimmTeacher

NAME = "vit_small_patch14_dinov2"
TINY = dict(depth=2, embed_dim=32, num_heads=2, init_values=1.0)


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> TimmTeacher:
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, img_size=84, **TINY)
    with torch.no_grad():
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    path = tmp_path_factory.mktemp("dino") / "model.pth"
    torch.save(model.state_dict(), path)
    return TimmTeacher.build(
        TimmParams(model=NAME, checkpoint=path, model_kwargs={"img_size": 84, **TINY})
    )


def student_params(**kwargs) -> TimmViTStudent.Params:
    return TimmViTStudent.Params(model=NAME, model_kwargs=TINY, **kwargs)


def test_initialised_from_a_teacher_it_reproduces_the_teachers_features(teacher):
    student = TimmViTStudent.build(
        student_params(native_size=84, init_from="dino"), teachers={"dino": teacher}
    )
    images = torch.rand(2, 3, 84, 84)
    with torch.no_grad():
        features = student(images)
        want = teacher(images, targets=["summary", "spatial"])
    torch.testing.assert_close(features.feature_map, want["spatial"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(features.prefix_tokens[:, 0], want["summary"], atol=1e-5, rtol=1e-5)
    assert student.patch_size == 14 and student.out_channels == 32


def test_another_native_size_resamples_the_teachers_position_table(teacher):
    student = TimmViTStudent.build(
        student_params(native_size=56, init_from="dino"), teachers={"dino": teacher}
    )
    assert student.model.pos_embed.shape == (1, 1 + 4 * 4, 32)
    features = student(torch.rand(1, 3, 98, 70))  # non-square, not the native size
    assert features.tokens.shape == (1, 7, 5, 32)


def test_weights_load_back_into_timm(tmp_path):
    student = TimmViTStudent.build(student_params(native_size=56), teachers={})
    rebuilt = timm.create_model(NAME, pretrained=False, num_classes=0, img_size=56, **TINY)
    rebuilt.load_state_dict(student.model.state_dict(), strict=True)
    path = tmp_path / "student.pth"
    torch.save(rebuilt.state_dict(), path)
    again = TimmViTStudent.build(student_params(native_size=56, checkpoint=path), teachers={})
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        torch.testing.assert_close(again(images).tokens, student(images).tokens)


def test_errors_name_the_problem(teacher):
    with pytest.raises(ValueError, match="not a teacher of this recipe; teachers: dino"):
        TimmViTStudent.build(student_params(init_from="sam"), teachers={"dino": teacher})
    with pytest.raises(ValidationError, match="may not set img_size"):
        TimmViTStudent.Params(model=NAME, model_kwargs={"img_size": 64})
    with pytest.raises(ValidationError, match="not both"):
        student_params(init_from="dino", checkpoint="x.pth")
    wider = TimmViTStudent.Params(model=NAME, native_size=84, model_kwargs={**TINY, "depth": 3})
    with pytest.raises(ValueError, match=r"cannot initialise .*missing blocks\.2"):
        TimmViTStudent.build(
            wider.model_copy(update={"init_from": "dino"}), teachers={"dino": teacher}
        )
    student = TimmViTStudent.build(student_params(native_size=56), teachers={})
    with pytest.raises(ValueError, match="not a multiple of patch_size 14"):
        student(torch.rand(1, 3, 50, 56))
    with pytest.raises(ValueError, match="not a plain ViT"):
        TimmViTStudent(model=torch.nn.Linear(2, 2), native_size=56, mean=(0,) * 3, std=(1,) * 3)
