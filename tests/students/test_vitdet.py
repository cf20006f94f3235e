from __future__ import annotations

from collections.abc import Sequence
from functools import partial
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from safetensors.torch import save_file
from segment_anything.modeling import ImageEncoderViT
from timm.layers import resample_abs_pos_embed_nhwc
from torch import Tensor, nn

from mergekit_vision.contracts import Prompts, TargetSpec, Teacher, resize_and_normalize
from mergekit_vision.sam.positions import resample_pos_embed
from mergekit_vision.sam.variants import SAM_PIXEL_MEAN, SAM_PIXEL_STD
from mergekit_vision.students.vitdet import ViTDetStudent, vitdet_state_dict_from_sam_encoder

TINY = dict(embed_dim=64, depth=4, num_heads=2, global_attn_indexes=(1, 3), window_size=4)


def tiny_sam_encoder(*, native_size: int = 128, seed: int = 0) -> ImageEncoderViT:
    """A SAM image encoder with random weights everywhere (pos embed and rel-pos included)."""
    torch.manual_seed(seed)
    encoder = ImageEncoderViT(
        img_size=native_size,
        patch_size=16,
        mlp_ratio=4,
        out_chans=32,
        qkv_bias=True,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        use_rel_pos=True,
        **TINY,
    )
    with torch.no_grad():
        for parameter in encoder.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.05)
    return encoder.eval()


class FakeSamTeacher(Teacher):
    """Just enough of a teacher to hand out a real SAM image encoder."""

    def __init__(self, encoder: nn.Module):
        super().__init__()
        self.encoder = encoder

    @classmethod
    def build(cls, params, *, allow_random_init=False):  # pragma: no cover - not used
        raise NotImplementedError

    def target_specs(self) -> dict[str, TargetSpec]:
        return {}

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:  # pragma: no cover - not used
        return {}

    def component(self, name: str) -> nn.Module:
        if name == "image_encoder":
            return self.encoder
        return super().component(name)


def tiny_params(**overrides) -> ViTDetStudent.Params:
    fields = dict(variant="custom", out_chans=32, native_size=128, **TINY)
    return ViTDetStudent.Params(**{**fields, **overrides})


@pytest.mark.parametrize("attention", ["original", "sdpa"])
def test_initialised_student_reproduces_sam_encoder_at_native_size(attention: str):
    encoder = tiny_sam_encoder()
    student = ViTDetStudent.build(
        tiny_params(init_from="sam", attention=attention), teachers={"sam": FakeSamTeacher(encoder)}
    ).eval()
    images = torch.rand(2, 3, 128, 128)
    with torch.no_grad():
        expected = encoder(
            resize_and_normalize(images, size=None, mean=SAM_PIXEL_MEAN, std=SAM_PIXEL_STD)
        )
        features = student(images)
    if attention == "original":  # segment_anything's own blocks: bit for bit
        assert torch.equal(features.feature_map, expected)
    else:
        torch.testing.assert_close(features.feature_map, expected, rtol=1e-4, atol=1e-5)
    assert features.tokens.shape == (2, 8, 8, 64)
    assert features.image_size == 128
    assert student.state_dict().keys() == encoder.state_dict().keys()


@pytest.mark.parametrize("size", [64, 96, 224, 256, 448])
def test_runs_and_backprops_at_other_sizes(size: int):
    student = ViTDetStudent.build(tiny_params(), teachers={})
    with torch.no_grad():
        student.pos_embed.normal_()
    features = student(torch.rand(1, 3, size, size), return_intermediates=True)
    grid = size // 16
    assert features.tokens.shape == (1, grid, grid, 64)
    assert features.feature_map.shape == (1, 32, grid, grid)
    assert len(features.intermediates) == 4
    assert torch.equal(features.intermediates[-1], features.tokens)
    (features.feature_map.square().mean() + features.tokens.mean()).backward()
    global_block = student.blocks[3].attn
    for parameter in (student.pos_embed, global_block.rel_pos_h, student.patch_embed.proj.weight):
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0
        assert torch.isfinite(parameter.grad).all()


def test_pos_embed_resampling_matches_timm_and_is_untouched_at_native_grid():
    pos_embed = torch.randn(1, 8, 8, 16)
    assert resample_pos_embed(pos_embed, (8, 8), antialias=True) is pos_embed
    for grid in [(4, 4), (6, 6), (14, 14), (16, 12)]:
        expected = resample_abs_pos_embed_nhwc(pos_embed, list(grid))
        assert torch.equal(resample_pos_embed(pos_embed, grid, antialias=True), expected)


def test_conversion_resamples_to_another_native_size_and_accepts_whole_sam_dicts():
    encoder_state = tiny_sam_encoder(native_size=128).state_dict()
    whole_sam = {f"image_encoder.{k}": v for k, v in encoder_state.items()}
    whole_sam["mask_decoder.iou_token.weight"] = torch.zeros(1, 8)
    converted = vitdet_state_dict_from_sam_encoder(
        whole_sam, native_size=256, patch_size=16, global_attn_indexes=(1, 3)
    )
    assert converted.keys() == encoder_state.keys()
    assert converted["pos_embed"].shape == (1, 16, 16, 64)
    assert converted["blocks.3.attn.rel_pos_h"].shape == (31, 32)
    assert torch.equal(
        converted["blocks.0.attn.rel_pos_h"], encoder_state["blocks.0.attn.rel_pos_h"]
    )
    student = ViTDetStudent(**tiny_params(native_size=256).architecture())
    student.load_state_dict(converted)  # strict: every shape fits
    with pytest.raises(ValueError, match="patch size 16 != student patch_size 8"):
        vitdet_state_dict_from_sam_encoder(encoder_state, native_size=128, patch_size=8)


@pytest.mark.parametrize("suffix", [".safetensors", ".pt"])
def test_checkpoint_file_round_trip(tmp_path: Path, suffix: str):
    source = ViTDetStudent.build(tiny_params(), teachers={}).eval()
    with torch.no_grad():
        source.pos_embed.normal_()
    path = tmp_path / f"student{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    loaded = ViTDetStudent.build(tiny_params(checkpoint=path), teachers={}).eval()
    images = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded(images).feature_map, source(images).feature_map)
    assert ViTDetStudent.checkpoint_fields(tiny_params(checkpoint=path)) == {"checkpoint": path}


def test_build_errors_name_what_is_wrong(tmp_path: Path):
    teachers = {"sam": FakeSamTeacher(tiny_sam_encoder()), "clip": FakeSamTeacher(nn.Identity())}
    with pytest.raises(ValueError, match="'sm' is not a teacher.*clip, sam"):
        ViTDetStudent.build(tiny_params(init_from="sm"), teachers=teachers)
    with pytest.raises(ValueError, match="do variant and overrides match"):
        ViTDetStudent.build(tiny_params(init_from="sam", embed_dim=32), teachers=teachers)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        ViTDetStudent.build(tiny_params(checkpoint=tmp_path / "missing.pt"), teachers={})
    student = ViTDetStudent.build(tiny_params(), teachers={})
    with pytest.raises(ValueError, match="not a multiple of patch_size 16"):
        student(torch.rand(1, 3, 72, 72))


def test_params_validation():
    with pytest.raises(ValidationError, match="needs embed_dim, depth"):
        ViTDetStudent.Params(variant="custom", embed_dim=64)
    with pytest.raises(ValidationError, match="not both"):
        tiny_params(init_from="sam", checkpoint=Path("x.pt"))
    with pytest.raises(ValidationError, match=r"global_attn_indexes must lie in \[0, 4\)"):
        tiny_params(global_attn_indexes=(1, 4))
    with pytest.raises(ValidationError, match="extra"):
        ViTDetStudent.Params(variant="vit_b", windw_size=7)
    vit_l = ViTDetStudent.Params(variant="vit_l", depth=6, global_attn_indexes=(5,))
    assert vit_l.architecture()["embed_dim"] == 1024
    assert vit_l.architecture()["depth"] == 6


@pytest.mark.slow
def test_vit_b_has_sams_parameter_count():
    student = ViTDetStudent.build(ViTDetStudent.Params(variant="vit_b"), teachers={})
    count = sum(p.numel() for p in student.parameters())
    assert 89.0e6 < count < 90.5e6
    assert (student.embed_dim, student.out_channels, student.native_size) == (768, 256, 1024)
    assert student.last_block() is student.blocks[11]
    assert student.blocks[11].window_size == 0 and student.blocks[10].window_size == 14


@pytest.mark.parametrize(
    ("variant", "deit"), [("vit_s", "deit_small_patch16_224"), ("vit_ti", "deit_tiny_patch16_224")]
)
def test_small_variants_have_deits_block_sizes(variant: str, deit: str):
    import timm

    params = ViTDetStudent.Params(variant=variant, native_size=64)
    student = ViTDetStudent.build(params, teachers={})
    reference = timm.create_model(deit, pretrained=False)
    own = sum(p.numel() for n, p in student.blocks.named_parameters() if "rel_pos" not in n)
    assert own == sum(p.numel() for p in reference.blocks.parameters())
    assert student.global_attn_indexes == (2, 5, 8, 11)
    assert [block.window_size == 0 for block in student.blocks].count(True) == 4
    features = student(torch.rand(1, 3, 64, 64))
    assert features.tokens.shape == (1, 4, 4, reference.embed_dim)
    assert features.feature_map.shape == (1, 256, 4, 4)


def test_small_variant_refuses_sam_weights_of_another_width():
    teachers = {"sam": FakeSamTeacher(tiny_sam_encoder())}
    params = ViTDetStudent.Params(variant="vit_ti", out_chans=32, native_size=128, init_from="sam")
    with pytest.raises(ValueError, match="64 wide with 4 blocks, the student 192 wide with 12 "):
        ViTDetStudent.build(params, teachers=teachers)
    with pytest.raises(ValueError, match="drop init_from"):
        ViTDetStudent.build(params, teachers=teachers)
    with pytest.raises(ValidationError, match="'vit_s' has no SAM release"):
        ViTDetStudent.Params(variant="vit_s", pretrained="vit_b")
