"""LoRA on a student's blocks: only the low-rank updates train, and merging them back gives a
plain student (the base model's state-dict keys and shapes) with the same forward."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.students.lora import apply_lora, lora_parameters, merge_lora
from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.students.vitdet import ViTDetStudent


def vitdet() -> ViTDetStudent:
    torch.manual_seed(0)
    params = ViTDetStudent.Params(variant="custom", embed_dim=24, depth=2, num_heads=2,
                                  global_attn_indexes=(1,), patch_size=8, window_size=4,
                                  out_chans=16, native_size=32)  # fmt: skip
    return ViTDetStudent.build(params, teachers={})


def timm_vit() -> TimmViTStudent:
    torch.manual_seed(0)
    params = TimmViTStudent.Params(
        model="vit_small_patch14_dinov2",
        native_size=28,
        model_kwargs=dict(depth=2, embed_dim=24, num_heads=2),
    )
    return TimmViTStudent.build(params, teachers={})


STUDENTS = pytest.mark.parametrize("make", [vitdet, timm_vit], ids=["vitdet", "timm_vit"])


def images_for(student) -> torch.Tensor:
    side = 4 * student.patch_size
    return torch.rand(2, 3, side, side, generator=torch.Generator().manual_seed(1))


@STUDENTS
def test_merged_forward_equals_the_unmerged_one(make):
    base = make().eval()
    base_state = {k: v.clone() for k, v in base.state_dict().items()}
    student = make().eval()
    adapted = apply_lora(student, rank=3, alpha=6.0, targets=["qkv", "proj"])
    assert len(adapted) == 4  # qkv and proj of 2 blocks
    with torch.no_grad():
        for p in lora_parameters(student):
            p.normal_(std=0.3)  # as if trained: B is no longer zero
    images = images_for(student)
    with torch.no_grad():
        unmerged = student(images).feature_map
        # it adapts (a timm dinov2 block's LayerScale of 1e-5 keeps the change small)
        assert (unmerged - base(images).feature_map).abs().max() > 1e-6
        assert merge_lora(student) == 4
        merged = student(images).feature_map
    torch.testing.assert_close(merged, unmerged, rtol=0, atol=1e-6)
    state = student.state_dict()
    assert {k: v.shape for k, v in state.items()} == {k: v.shape for k, v in base_state.items()}
    assert not lora_parameters(student) and merge_lora(student) == 0
    # exports load as before: a plain student takes the merged weights strictly
    base.load_state_dict(state, strict=True)
    with torch.no_grad():
        torch.testing.assert_close(base(images).feature_map, unmerged, rtol=0, atol=1e-6)


@STUDENTS
def test_only_the_low_rank_updates_train(make):
    student = make()
    apply_lora(student, rank=2, alpha=4.0, targets=["qkv"])
    trainable = {n for n, p in student.named_parameters() if p.requires_grad}
    assert trainable and all(n.rsplit(".", 1)[-1] in {"lora_a", "lora_b"} for n in trainable)
    assert len(trainable) == 2 * 2  # A and B of qkv in 2 blocks
    before = {n: p.detach().clone() for n, p in student.named_parameters()}
    images = images_for(student)
    torch.testing.assert_close(  # B starts at zero: the base model's forward
        student(images).feature_map, make()(images).feature_map, rtol=0, atol=1e-6
    )
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(2):  # A's first gradient is zero (B = 0); the second step moves it
        optimizer.zero_grad()
        student(images).feature_map.square().mean().backward()
        optimizer.step()
    changed = {n for n, p in student.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable


def test_an_unknown_target_names_the_blocks_linear_layers():
    with pytest.raises(ValueError, match=r"\['qvk'\] name no Linear.*lin1, lin2, proj, qkv"):
        apply_lora(vitdet(), rank=2, alpha=2.0, targets=["qvk"])
