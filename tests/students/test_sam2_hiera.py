"""The sam2_hiera student on a tiny real ``Sam2Model``: started from the sam2 teacher it is that
teacher's vision encoder (every level of its feature pyramid equal), its levels follow the input
size, and its weights load back into a ``Sam2Model``."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mergekit_vision.contracts import StudentFeatures, require_levels
from mergekit_vision.students.sam2_hiera import Sam2HieraStudent
from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.teachers.sam2 import Sam2Teacher

from ..tiny_sam2 import PROCESSOR_STATS, SIDE, TINY_SAM2_CONFIG, tiny_sam2


@pytest.fixture(scope="module")
def teacher() -> Sam2Teacher:
    stats = dict(mean=PROCESSOR_STATS["image_mean"], std=PROCESSOR_STATS["image_std"])
    return Sam2Teacher(model=tiny_sam2(seed=3), **stats).freeze()


def _from_teacher(teacher: Sam2Teacher) -> Sam2HieraStudent:
    params = Sam2HieraStudent.Params(init_from="sam2")
    return Sam2HieraStudent.build(params, teachers={"sam2": teacher}).eval()


def test_started_from_the_teacher_it_is_the_teachers_vision_encoder(teacher):
    student = _from_teacher(teacher)
    images = torch.rand(2, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        features = student(images)
        encoded = teacher.model.vision_encoder(teacher.prepare(images))
        embeddings = teacher(images, targets=["image_embeddings"])["image_embeddings"]
    assert student.pixel_mean == tuple(PROCESSOR_STATS["image_mean"])
    assert student.level_names == ("stride4", "stride8", "stride16")
    for name, wanted in zip(student.level_names, encoded.fpn_hidden_states, strict=True):
        assert torch.equal(features.levels[name], wanted), name
    assert torch.equal(features.tokens, encoded.last_hidden_state)
    assert features.feature_map is features.levels["stride16"]
    # the teacher's image embedding is that map plus SAM 2's no-memory embedding
    no_memory = teacher.model.no_memory_embedding.view(1, -1, 1, 1)
    assert torch.equal(features.feature_map + no_memory, embeddings)
    assert embeddings.abs().mean() > 0.1  # a real map, not zeros


def test_levels_tokens_and_blocks_follow_the_input_size(teacher):
    student = _from_teacher(teacher)
    assert (student.patch_size, student.feature_stride, student.native_size) == (32, 16, SIDE)
    assert (student.embed_dim, student.out_channels) == (128, 32)
    for side in (64, 96):
        with torch.no_grad():
            features: StudentFeatures = student(torch.rand(1, 3, side, side), blocks=[0, -1])
        for name, stride in (("stride4", 4), ("stride8", 8), ("stride16", 16)):
            assert features.levels[name].shape == (1, 32, side // stride, side // stride)
        assert features.tokens.shape == (1, side // 32, side // 32, 128)
        assert sorted(features.blocks) == [0, 4]
        assert features.blocks[0].shape == (1, side // 4, side // 4, 16)  # stage 1's width
        assert torch.equal(features.blocks[4], features.tokens)
    with pytest.raises(
        ValueError, match="not a multiple of patch_size 32, which the sam2_hiera student needs"
    ):
        student(torch.rand(1, 3, 48, 48))


def test_trained_weights_load_back_into_sam2(teacher):
    student = _from_teacher(teacher)
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(0.01)
    model = tiny_sam2(seed=4)
    model.vision_encoder.load_state_dict(student.encoder.state_dict(), strict=True)
    images = torch.rand(1, 3, SIDE, SIDE)
    with torch.no_grad():
        expected = student(images).feature_map
        pixels = (images - torch.tensor(student.pixel_mean).view(1, 3, 1, 1)) / torch.tensor(
            student.pixel_std
        ).view(1, 3, 1, 1)
        reloaded = model.vision_encoder(pixels).fpn_hidden_states[-1]
    torch.testing.assert_close(reloaded, expected, rtol=0, atol=1e-6)


def test_random_student_from_a_config_and_its_errors(teacher):
    config = TINY_SAM2_CONFIG["vision_config"]
    student = Sam2HieraStudent.build(Sam2HieraStudent.Params(config=config), teachers={})
    assert student.native_size == SIDE and student.level_names[-1] == "stride16"
    with pytest.raises(ValidationError, match="init_from .* or config"):
        Sam2HieraStudent.Params(init_from="sam2", config=config)
    with pytest.raises(ValueError, match="not a teacher of this recipe; teachers: sam2"):
        Sam2HieraStudent.build(Sam2HieraStudent.Params(init_from="x"), teachers={"sam2": teacher})
    plain = TimmViTStudent.build(
        TimmViTStudent.Params(model="vit_small_patch14_dinov2", native_size=28,
                              model_kwargs=dict(depth=1, embed_dim=16, num_heads=2)),
        teachers={},
    )  # fmt: skip
    with pytest.raises(ValueError, match=r"lacks \['stride4'\].*single-scale.*sam2_hiera"):
        require_levels(plain, ["stride4"], what="a head")
    require_levels(student, ["stride4", "stride8"], what="a head")  # no error
