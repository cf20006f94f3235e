"""The DPT-style depth head: its map is on the depth teacher's grid, it reads the student's blocks
when asked to, and a few steps of the ssi loss fit a tiny Depth Anything's relative depth."""

from __future__ import annotations

import warnings

import pytest
import torch

from mergekit_vision.heads.depth_head import DepthHead
from mergekit_vision.losses.ssi import ScaleShiftInvariantLoss
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.teachers.depth import DepthParams, DepthTeacher

from ..tiny_depth import SIDE, TINY_DEPTH_CONFIG


@pytest.fixture(scope="module")
def teachers() -> dict[str, DepthTeacher]:
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights
        teacher = DepthTeacher.build(DepthParams(config=TINY_DEPTH_CONFIG), allow_random_init=True)
    return {"depth": teacher}


def student() -> ViTDetStudent:
    torch.manual_seed(0)
    params = ViTDetStudent.Params(variant="custom", embed_dim=32, depth=2, num_heads=2,
                                  global_attn_indexes=(1,), patch_size=8, window_size=4,
                                  out_chans=16, native_size=32, init_from=None)  # fmt: skip
    return ViTDetStudent.build(params, teachers={})


def build(teachers, backbone, **params) -> DepthHead:
    params = DepthHead.Params(teacher="depth", features=16, hidden=8, **params)
    return DepthHead.build(params, student=backbone, teachers=teachers)


def test_the_map_is_on_the_teachers_grid(teachers):
    backbone = student()
    head = build(teachers, backbone)
    for side in (32, 56):  # token grids 4 x 4 and 7 x 7 (an odd grid halves to 4 x 4)
        out = head(backbone(torch.rand(2, 3, side, side)))
        assert set(out) == {"depth"} and out["depth"].shape == (2, 1, SIDE, SIDE)
    free = DepthHead(embed_dim=32, out_channels=1, features=16, hidden=8)  # no fixed grid
    assert free(backbone(torch.rand(1, 3, 40, 40)))["depth"].shape == (1, 1, 40, 40)
    with pytest.raises(ValueError, match="has no target 'spatial'"):
        build(teachers, backbone, target="spatial")


def test_layers_read_the_students_blocks(teachers):
    backbone = student()
    head = build(teachers, backbone, layers=(0, 0, 1, 1))
    images = torch.rand(2, 3, 32, 32)
    features = backbone(images, return_intermediates=True)
    out = head(features)["depth"]
    assert out.shape == (2, 1, SIDE, SIDE)
    features.intermediates[0] = torch.zeros_like(features.intermediates[0])
    assert not torch.allclose(head(features)["depth"], out)  # block 0 feeds the finest levels
    with pytest.raises(ValueError, match="return_intermediates=True"):
        head(backbone(images))
    with pytest.raises(ValueError, match="the student has 2 blocks"):
        build(teachers, backbone, layers=(0, 1, 2, 3))(features)


def test_a_few_ssi_steps_fit_the_teachers_depth(teachers):
    backbone = student()
    head = build(teachers, backbone)
    loss = ScaleShiftInvariantLoss()
    images = torch.rand(4, 3, 32, 32, generator=torch.Generator().manual_seed(3))
    target = teachers["depth"](images, targets=["depth"])["depth"]
    optimizer = torch.optim.Adam([*backbone.parameters(), *head.parameters()], lr=3e-3)
    values = []
    for _ in range(12):
        value = loss(head(backbone(images))["depth"], target)
        optimizer.zero_grad()
        value.backward()
        optimizer.step()
        values.append(value.item())
    assert values[-1] < 0.75 * values[0], values  # 1.45 -> 0.82 in 12 steps


def test_layers_are_the_blocks_the_training_step_asks_the_student_for(teachers):
    backbone = student()
    head = build(teachers, backbone, layers=(0, -1, 1, 1))
    assert head.layers == (0, 1, 1, 1) and head.student_blocks == (0, 1)
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        asked = head(backbone(images, blocks=head.student_blocks))["depth"]
        every = head(backbone(images, return_intermediates=True))["depth"]
    torch.testing.assert_close(asked, every)
