from __future__ import annotations

from collections.abc import Sequence

import pytest
import torch
from pydantic import ValidationError
from torch import Tensor

from mergekit_vision.contracts import Prompts, StudentFeatures, TargetSpec, Teacher
from mergekit_vision.heads.clip_head import ClipHead
from mergekit_vision.students.vitdet import ViTDetStudent


class FakeClipTeacher(Teacher):
    """Declares one embedding target; never run."""

    def __init__(self, shape: tuple[str | int, ...] = ("B", 32)):
        super().__init__()
        self.shape = shape

    @classmethod
    def build(cls, params, *, allow_random_init=False):  # pragma: no cover - not used
        raise NotImplementedError

    def target_specs(self) -> dict[str, TargetSpec]:
        return {"image_embedding": TargetSpec(self.shape)}

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:  # pragma: no cover - not used
        return {}


def tiny_student() -> ViTDetStudent:
    torch.manual_seed(0)
    student = ViTDetStudent(
        embed_dim=64, depth=2, num_heads=2, global_attn_indexes=(1,), window_size=2, native_size=64
    )
    with torch.no_grad():  # non-zero relative position tables, so copies are checked
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return student


def build_head(student: ViTDetStudent, **params) -> ClipHead:
    return ClipHead.build(
        ClipHead.Params(teacher="clip", **params),
        student=student,
        teachers={"clip": FakeClipTeacher()},
    )


@pytest.mark.parametrize("blocks", ["backbone", "conv"])
@pytest.mark.parametrize("size", [64, 96])
def test_shapes_of_pooled_and_dense_embeddings(size: int, blocks: str):
    student = tiny_student()
    head = build_head(student, blocks=blocks)
    assert head.block_kind == blocks
    features = student(torch.rand(2, 3, size, size))
    output = head(features)
    assert list(output) == ["image_embedding"]
    assert output["image_embedding"].shape == (2, 32)
    assert head.dense_embeddings(features).shape == (2, size // 16, size // 16, 32)
    output["image_embedding"].sum().backward()
    assert all(p.grad is not None for p in head.parameters())
    assert student.blocks[0].attn.qkv.weight.grad is not None


def test_conv_blocks_mix_only_neighbouring_tokens():
    head = build_head(tiny_student(), blocks="conv", num_blocks=2).eval()
    assert [type(block).__name__ for block in head.blocks] == ["ConvBlock", "ConvBlock"]
    assert head.blocks[0].conv1.in_channels == 64  # the backbone's width
    tokens = torch.randn(1, 9, 9, 64)
    moved = tokens.clone()
    moved[0, 0, 0] += 1.0  # a corner token changes
    with torch.no_grad():
        before = head.encode_tokens(StudentFeatures(tokens, torch.zeros(1, 1, 9, 9), 144))
        after = head.encode_tokens(StudentFeatures(moved, torch.zeros(1, 1, 9, 9), 144))
    changed = (after - before).abs().amax(dim=-1)[0] > 0
    # two 3 x 3 blocks of two convolutions each reach 4 tokens away, no further
    assert changed[:5, :5].all()
    assert not changed[5:].any() and not changed[:, 5:].any()


def test_blocks_are_independent_trainable_copies_of_the_last_block():
    student = tiny_student().requires_grad_(False)  # stage I: frozen backbone
    head = build_head(student)
    last = student.last_block().state_dict()
    assert len(head.blocks) == 3
    for block in head.blocks:
        assert type(block) is type(student.last_block())
        assert all(torch.equal(last[k], v) for k, v in block.state_dict().items())
        assert all(p.requires_grad for p in block.parameters())
    with torch.no_grad():
        head.blocks[0].attn.qkv.weight.zero_()
    assert not torch.equal(student.last_block().attn.qkv.weight, head.blocks[0].attn.qkv.weight)
    assert not torch.equal(head.blocks[1].attn.qkv.weight, head.blocks[0].attn.qkv.weight)


def test_fresh_blocks_do_not_copy_weights():
    student = tiny_student()
    head = build_head(student, init_from_last_block=False, num_blocks=2)
    assert len(head.blocks) == 2
    last = student.last_block()
    block = head.blocks[0]
    assert not torch.equal(block.attn.qkv.weight, last.attn.qkv.weight)
    assert torch.equal(block.norm1.weight, torch.ones(64))
    assert torch.count_nonzero(block.attn.rel_pos_h) == 0  # SAM's zero init
    assert block.attn.rel_pos_h.shape == last.attn.rel_pos_h.shape


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_pooled_equals_dense_over_a_single_token(pooling: str):
    student = tiny_student()
    head = build_head(student, pooling=pooling).eval()
    features = StudentFeatures(
        tokens=torch.randn(2, 1, 1, 64), feature_map=torch.zeros(2, 256, 1, 1), image_size=16
    )
    with torch.no_grad():
        pooled = head(features)["image_embedding"]
        dense = head.dense_embeddings(features)
    torch.testing.assert_close(pooled, dense[:, 0, 0], rtol=1e-5, atol=1e-6)


def test_max_and_mean_pooling_follow_the_paper_order():
    student = tiny_student()
    head = build_head(student, pooling="max").eval()
    features = StudentFeatures(
        tokens=torch.randn(2, 3, 3, 64), feature_map=torch.zeros(2, 256, 3, 3), image_size=48
    )
    with torch.no_grad():
        tokens = head.encode_tokens(features).flatten(1, 2)
        expected_max = head.mlp(head.norm(tokens.amax(dim=1)))
        assert torch.equal(head(features)["image_embedding"], expected_max)
        head.pooling = "mean"
        expected_mean = head.mlp(head.norm(tokens.mean(dim=1)))
        assert torch.equal(head(features)["image_embedding"], expected_mean)
    assert not torch.allclose(expected_max, expected_mean)


def test_mlp_has_two_hidden_layers_of_the_chosen_width():
    head = build_head(tiny_student(), mlp_hidden_dim=16, num_blocks=0)
    linears = [m for m in head.mlp if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(64, 16), (16, 16), (16, 32)]
    assert head.norm.normalized_shape == (64,)
    default = build_head(tiny_student(), num_blocks=0)
    assert default.mlp[0].out_features == 64


def test_build_errors():
    student = tiny_student()
    teachers = {"clip": FakeClipTeacher(), "sam": FakeClipTeacher()}
    with pytest.raises(ValueError, match="'clp' is not a teacher.*clip, sam"):
        ClipHead.build(ClipHead.Params(teacher="clp"), student=student, teachers=teachers)
    with pytest.raises(ValueError, match="no target 'text_embedding'.*image_embedding"):
        ClipHead.build(
            ClipHead.Params(teacher="clip", target="text_embedding"),
            student=student,
            teachers=teachers,
        )
    with pytest.raises(ValueError, match="last dimension must be a fixed int"):
        ClipHead.build(
            ClipHead.Params(teacher="clip"),
            student=student,
            teachers={"clip": FakeClipTeacher(("B", "D"))},
        )
    with pytest.raises(ValidationError):
        ClipHead.Params(teacher="clip", pooling="avg")
    with pytest.raises(ValidationError):
        ClipHead.Params(teacher="clip", blocks="mlp")


@pytest.mark.parametrize("pooling", ["max", "mean"])
def test_pooling_a_region_pools_only_its_tokens(pooling: str):
    head = build_head(tiny_student(), pooling=pooling).eval()
    tokens = torch.randn(2, 3, 3, 64)
    keep = torch.zeros(2, 3, 3, dtype=torch.bool)
    keep[0, 0, :2] = True  # region 0: two tokens of the top row
    keep[1] = True  # region 1: everything, as the image embedding pools
    pooled = head.pool(tokens, keep)
    inside = tokens[0, 0, :2]
    expected = inside.amax(dim=0) if pooling == "max" else inside.mean(dim=0)
    torch.testing.assert_close(pooled[0], expected)
    torch.testing.assert_close(pooled[1], head.pool(tokens[1]))
