"""The SDPA block forward computes segment_anything's Block function: outputs and gradients."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from segment_anything.modeling.image_encoder import Block
from torch import nn

from mergekit_vision.students import rel_pos_attention, vitdet_attention
from mergekit_vision.students.vitdet import ViTDetStudent
from mergekit_vision.students.vitdet_attention import block_forward_sdpa


def _block(*, window: int, grid: tuple[int, int], seed: int = 0) -> Block:
    torch.manual_seed(seed)
    block = Block(
        48,
        4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        rel_pos_zero_init=False,
        window_size=window,
        input_size=grid if window == 0 else None,
    ).double()
    with torch.no_grad():
        for parameter in block.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.1)
    return block


def _output_and_grads(forward, block: Block, x: torch.Tensor) -> list[torch.Tensor]:
    x = x.clone().requires_grad_(True)
    out = forward(x)
    grads = torch.autograd.grad(
        (out * torch.linspace(-1, 1, out.shape[-1])).sum(), [x, *block.parameters()]
    )
    return [out.detach(), *grads]


@pytest.mark.parametrize(
    ("window", "grid"),
    [(4, (8, 8)), (4, (10, 7)), (5, (3, 3)), (0, (6, 5)), (0, (9, 9))],
    ids=["windowed", "windowed-padded", "window-larger-than-grid", "global-odd", "global"],
)
@pytest.mark.parametrize("block_elements", [1 << 24, 50], ids=["one-block", "blockwise"])
def test_sdpa_block_matches_segment_anything(window, grid, block_elements, monkeypatch):
    monkeypatch.setattr(rel_pos_attention, "BLOCK_ELEMENTS", block_elements)
    block = _block(window=window, grid=grid)
    x = torch.randn(2, *grid, 48, dtype=torch.double)
    expected = _output_and_grads(block, block, x)
    actual = _output_and_grads(lambda t: block_forward_sdpa(block, t), block, x)
    for want, got in zip(expected, actual, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)


def test_sdpa_block_refuses_blocks_without_relative_position():
    block = Block(16, 2, use_rel_pos=False, window_size=0)
    with pytest.raises(ValueError, match="relative position"):
        block_forward_sdpa(block, torch.randn(1, 4, 4, 16))


def _student(**kwargs) -> ViTDetStudent:
    torch.manual_seed(0)
    student = ViTDetStudent(
        embed_dim=32,
        depth=3,
        num_heads=2,
        global_attn_indexes=(1,),
        patch_size=8,
        window_size=3,
        out_chans=16,
        native_size=64,
        **kwargs,
    )
    with torch.no_grad():
        for parameter in student.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return student


def _student_grads(student: ViTDetStudent, images: torch.Tensor) -> tuple[torch.Tensor, list]:
    student.zero_grad(set_to_none=True)
    features = student(images)
    (features.feature_map.square().mean() + features.tokens.sin().mean()).backward()
    return features.feature_map.detach(), [p.grad.clone() for p in student.parameters()]


@pytest.mark.parametrize("size", [64, 40], ids=["native", "smaller-odd-grid"])
def test_student_attention_switch_keeps_the_function(size):
    student = _student()
    images = torch.rand(2, 3, size, size)
    student.attention = "original"
    want_map, want_grads = _student_grads(student, images)
    student.attention = "sdpa"
    got_map, got_grads = _student_grads(student, images)
    torch.testing.assert_close(got_map, want_map, rtol=1e-4, atol=1e-5)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("attention", ["sdpa", "original"])
def test_activation_checkpointing_gives_the_same_gradients(attention):
    student = _student(attention=attention)
    images = torch.rand(2, 3, 48, 48)
    want_map, want_grads = _student_grads(student, images)
    student.activation_checkpointing = True
    got_map, got_grads = _student_grads(student, images)
    torch.testing.assert_close(got_map, want_map, rtol=0, atol=1e-6)
    for got, want in zip(got_grads, want_grads, strict=True):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-7)


def test_attention_param_reaches_the_student_and_rejects_typos():
    params = ViTDetStudent.Params(variant="vit_b", attention="original")
    assert params.architecture()["attention"] == "original"
    assert ViTDetStudent.Params().attention == "sdpa"
    with pytest.raises(ValueError, match="attention"):
        ViTDetStudent.Params(attention="flash")


@pytest.mark.parametrize("chunk_elements", [1 << 24, 300], ids=["one-chunk", "chunked"])
def test_gpu_global_path_in_row_chunks_equals_the_cpu_path(chunk_elements, monkeypatch):
    """The SDPA row-chunked global attention (taken on GPU) computes what the CPU path does."""
    monkeypatch.setattr(vitdet_attention, "GLOBAL_CHUNK_ELEMENTS", chunk_elements)
    block = _block(window=0, grid=(6, 5))
    q, k, v = (torch.randn(2, 4, 30, 12, dtype=torch.double) for _ in range(3))
    want = vitdet_attention.attend(q, k, v, block.attn, (6, 5))
    got = vitdet_attention._global_attention_in_row_chunks(q, k, v, block.attn, (6, 5))
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-10)
