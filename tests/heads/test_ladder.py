"""UNIC's ladder of projectors: one projector per block read, the prediction their sum (checked
by hand against each projector), shapes on the teacher's targets, and a merged model hands the
head its blocks however the student is called."""

from __future__ import annotations

import warnings

import pytest
import torch

from mergekit_vision.engine.build import MergedModel
from mergekit_vision.heads.ladder import LadderHead
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


def vitdet_student(depth: int = 3) -> ViTDetStudent:
    torch.manual_seed(0)
    params = ViTDetStudent.Params(variant="custom", embed_dim=24, depth=depth, num_heads=2,
                                  global_attn_indexes=(depth - 1,), patch_size=8, window_size=4,
                                  out_chans=16, native_size=32)  # fmt: skip
    return ViTDetStudent.build(params, teachers={})


def build(teachers, student, **params) -> LadderHead:
    return LadderHead.build(
        LadderHead.Params(teacher="dino", **params), student=student, teachers=teachers
    )


def test_shapes_and_the_blocks_read(teachers):
    student = vitdet_student()
    head = build(teachers, student, layers=[0, -1], hidden_dim=16, last_hidden_dim=40)
    assert head.student_blocks == (0, 2)  # -1 is the last of 3 blocks
    # the last block's projectors are the wider ones, as in UNIC
    assert [p.layers[0].out_features for p in head.summary_projectors] == [16, 40]
    features = student(torch.rand(2, 3, 32, 32), blocks=head.student_blocks)  # a 4x4 grid
    assert set(features.blocks) == {0, 2}
    out = head(features)
    assert out["summary"].shape == (2, 32)
    assert out["spatial"].shape == (2, 32, 6, 6)  # upsampled to the teacher's grid
    assert build(teachers, student, upsample=False)(
        student(torch.rand(2, 3, 32, 32), blocks=(0, 1, 2))
    )["spatial"].shape == (2, 32, 4, 4)
    assert build(teachers, student).student_blocks == (0, 1, 2)  # every block by default
    with pytest.raises(ValueError, match=r"block\(s\) \[3\] out of range"):
        build(teachers, student, layers=[3])
    with pytest.raises(ValueError, match="lack"):
        head(student(torch.rand(1, 3, 32, 32)))  # the blocks were not asked for


def test_the_prediction_is_the_sum_of_each_blocks_projection(teachers):
    student = vitdet_student()
    head = build(teachers, student, layers=[0, 1, 2], upsample=False, summary_pool="max")
    features = student(torch.rand(2, 3, 32, 32), blocks=head.student_blocks)
    out = head(features)
    summary = torch.zeros(2, 32)
    spatial = torch.zeros(2, 4, 4, 32)
    for index, block in enumerate((0, 1, 2)):
        tokens = features.blocks[block]
        summary += head.summary_projectors[index](tokens.flatten(1, 2).amax(dim=1))
        spatial += head.spatial_projectors[index](tokens)
    torch.testing.assert_close(out["summary"], summary)
    torch.testing.assert_close(out["spatial"], spatial.permute(0, 3, 1, 2))
    # each block's projector matters: zeroing one block's output changes the sum
    features.blocks[1] = torch.zeros_like(features.blocks[1])
    assert not torch.allclose(head(features)["summary"], out["summary"])
    sum(v.sum() for v in out.values()).backward()
    assert all(p.grad is not None for p in head.spatial_projectors.parameters())


def test_a_merged_model_hands_every_head_its_blocks(teachers):
    student = vitdet_student()
    ladder = build(teachers, student, layers=[1], spatial_target=None)
    MergedModel(student=student, heads={"ladder": ladder})
    assert student.returned_blocks == (1,)
    features = student(torch.rand(1, 3, 32, 32))  # as evaluation and export call it
    assert set(features.blocks) == {1}
    assert ladder(features)["summary"].shape == (1, 32)
    assert set(student(torch.rand(1, 3, 32, 32), blocks=()).blocks) == set()  # asked: none
