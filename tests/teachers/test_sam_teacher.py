"""The SAM teacher loads official-format checkpoints and reproduces segment_anything's outputs."""

from __future__ import annotations

from pathlib import Path

import pydantic
import pytest
import torch
from safetensors.torch import save_file
from segment_anything.modeling import Sam

import mergekit_vision.teachers.sam  # noqa: F401  (registers "sam")
from mergekit_vision.contracts import Prompts, Teacher
from mergekit_vision.teachers.sam import (
    SamParams,
    SamTeacher,
    build_sam_model,
    describe_sam_checkpoint,
    sam_state_dict_from_checkpoint,
)

TINY = dict(
    encoder_embed_dim=64,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    patch_size=16,
    window_size=4,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
)


def tiny_sam(image_size: int = 128) -> Sam:
    torch.manual_seed(0)
    sam = build_sam_model(image_size=image_size, **TINY)
    # Position tables start at zero; make them matter so interpolation errors would show.
    with torch.no_grad():
        for name, parameter in sam.named_parameters():
            if "pos" in name:
                parameter.normal_(std=0.5)
    return sam


def tiny_params(checkpoint: Path | None, image_size: int = 128, **extra) -> SamParams:
    return SamParams(
        variant="custom", checkpoint=checkpoint, image_size=image_size, **TINY, **extra
    )


@pytest.fixture(scope="module")
def official(tmp_path_factory) -> tuple[Sam, Path]:
    sam = tiny_sam()
    path = tmp_path_factory.mktemp("sam") / "sam_tiny.pth"
    torch.save(sam.state_dict(), path)
    return sam, path


def prompts_at(size: int) -> Prompts:
    generator = torch.Generator().manual_seed(3)
    corners = torch.rand(2, 2, 2, 2, generator=generator) * size
    return Prompts(
        image_size=size,
        points=torch.rand(2, 3, 2, 2, generator=generator) * size,
        point_labels=torch.tensor([[1, 0], [1, 1], [0, 1]]).expand(2, 3, 2),
        boxes=torch.cat([corners.min(2).values, corners.max(2).values], dim=-1),
    )


def sam_reference_masks(sam: Sam, embeddings: torch.Tensor, prompts: Prompts) -> torch.Tensor:
    """segment_anything's own prompt encoder + mask decoder, one image and prompt kind at a time."""
    per_image = []
    for b in range(embeddings.shape[0]):
        masks = []
        for points, boxes in (
            ((prompts.points[b], prompts.point_labels[b]), None),
            (None, prompts.boxes[b]),
        ):
            sparse, dense = sam.prompt_encoder(points=points, boxes=boxes, masks=None)
            m, _ = sam.mask_decoder(
                image_embeddings=embeddings[b : b + 1],
                image_pe=sam.prompt_encoder.get_dense_pe(),
                sparse_prompt_embeddings=sparse,
                dense_prompt_embeddings=dense,
                multimask_output=False,
            )
            masks.append(m)
        per_image.append(torch.cat(masks))
    return torch.stack(per_image)


def test_registered():
    # No TEACHERS.get(): that imports every built-in plugin, which this test must not depend on.
    assert SamTeacher.registry_name == "sam" and issubclass(SamTeacher, Teacher)


def test_official_checkpoint_reproduces_sam(official):
    sam, path = official
    teacher = SamTeacher.build(tiny_params(path))
    images = torch.rand(2, 3, 128, 128)
    prompts = prompts_at(128)
    with torch.no_grad():
        out = teacher(images, targets=["image_embeddings", "mask_logits"], prompts=prompts)
        want_embeddings = sam.image_encoder(sam.preprocess(images * 255))
        want_masks = sam_reference_masks(sam, want_embeddings, prompts)
    assert out["image_embeddings"].shape == (2, 32, 8, 8)
    torch.testing.assert_close(out["image_embeddings"], want_embeddings, atol=1e-5, rtol=1e-5)
    assert out["mask_logits"].shape == (2, 5, 1, 32, 32)
    torch.testing.assert_close(out["mask_logits"], want_masks, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_prompts_follow_the_image_as_given(official):
    """Images at 64 px are resized to 128; their prompts must be scaled with them."""
    sam, path = official
    teacher = SamTeacher.build(tiny_params(path))
    small = prompts_at(64)
    with torch.no_grad():
        out = teacher(
            torch.rand(2, 3, 64, 64), targets=["image_embeddings", "mask_logits"], prompts=small
        )
        scaled = Prompts(128, small.points * 2, small.point_labels, small.boxes * 2)
        want = sam_reference_masks(sam, out["image_embeddings"], scaled)
    torch.testing.assert_close(out["mask_logits"], want, atol=1e-5, rtol=1e-5)


def test_multimask_output(official):
    _, path = official
    teacher = SamTeacher.build(tiny_params(path, multimask_output=True))
    out = teacher(
        torch.rand(1, 3, 128, 128), targets=["mask_logits"], prompts=prompts_at(128).select(0)
    )
    assert list(out) == ["mask_logits"] and out["mask_logits"].shape == (1, 5, 3, 32, 32)


@pytest.mark.parametrize("layout", ["safetensors", "wrapped"])
def test_other_checkpoint_layouts(official, tmp_path, layout):
    sam, path = official
    state = sam.state_dict()
    if layout == "safetensors":
        other = tmp_path / "sam_tiny.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(other))
    else:
        other = tmp_path / "sam_tiny_train.pth"
        torch.save({"model": {f"module.{k}": v for k, v in state.items()}, "epoch": 3}, other)
    reference = SamTeacher.build(tiny_params(path))
    teacher = SamTeacher.build(tiny_params(other))
    for key, value in reference.state_dict().items():
        assert torch.equal(teacher.state_dict()[key], value), key


def test_wrong_sizes_name_file_variant_and_keys(official):
    _, path = official
    wrong = SamParams(
        variant="custom", checkpoint=path, image_size=128, **{**TINY, "encoder_embed_dim": 96}
    )
    with pytest.raises(ValueError) as error:
        SamTeacher.build(wrong)
    message = str(error.value)
    assert str(path) in message and "variant 'custom'" in message
    assert "shape of image_encoder.pos_embed: file (1, 8, 8, 64), model (1, 8, 8, 96)" in message
    assert "custom SAM (encoder_embed_dim=64, encoder_depth=2)" in message


def test_describe_recognises_official_variants():
    vit_b = {"image_encoder.patch_embed.proj.weight": torch.zeros(768, 3, 16, 16)}
    vit_b |= {f"image_encoder.blocks.{i}.norm1.weight": torch.zeros(1) for i in range(12)}
    assert describe_sam_checkpoint(vit_b) == "it looks like a SAM vit_b checkpoint"
    assert "does not look like a SAM" in describe_sam_checkpoint({"visual.proj": torch.zeros(1)})


def test_unreadable_and_foreign_files(tmp_path):
    corrupt = tmp_path / "sam_vit_b_01ec64.pth"
    corrupt.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read SAM checkpoint .*sam_vit_b_01ec64.pth"):
        SamTeacher.build(tiny_params(corrupt))
    foreign = tmp_path / "clip.pth"
    torch.save({"visual.proj": torch.zeros(2)}, foreign)
    with pytest.raises(
        ValueError, match="missing image_encoder.pos_embed.*does not look like a SAM"
    ):
        SamTeacher.build(tiny_params(foreign))


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nowhere" / "sam_vit_b.pth"
    with pytest.raises(FileNotFoundError, match="nowhere/sam_vit_b.pth"):
        SamTeacher.build(tiny_params(missing))


def test_random_init_only_when_allowed():
    with pytest.raises(ValueError, match="needs a checkpoint"):
        SamTeacher.build(tiny_params(None))
    with pytest.warns(UserWarning, match="random weights"):
        teacher = SamTeacher.build(tiny_params(None), allow_random_init=True)
    assert SamTeacher.checkpoint_fields(tiny_params(None)) == {"checkpoint": None}
    assert teacher.component_names() == ["image_encoder", "prompt_encoder", "mask_decoder"]
    assert teacher.component("mask_decoder") is teacher.sam.mask_decoder
    with pytest.raises(KeyError, match="it has: image_encoder, prompt_encoder, mask_decoder"):
        teacher.component("text")
    with pytest.raises(ValueError, match="'mask_logits' needs prompts"):
        teacher(torch.rand(1, 3, 128, 128), targets=["mask_logits"])
    with pytest.raises(ValueError, match=r"no target \['image_embedding'\]"):
        teacher(torch.rand(1, 3, 128, 128), targets=["image_embedding"])


def test_lower_resolution_interpolates_positions_like_segment_anything(official):
    sam, path = official
    teacher = SamTeacher.build(tiny_params(path, image_size=64))
    images = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        got = teacher(images, targets=["image_embeddings", "mask_logits"], prompts=prompts_at(64))
    assert got["image_embeddings"].shape == (2, 32, 4, 4)
    assert got["mask_logits"].shape == (2, 5, 1, 16, 16)
    # A 64 px encoder holding the 128 px relative tables: get_rel_pos interpolates them at run time.
    runtime = build_sam_model(image_size=64, **TINY)
    state = sam.state_dict()
    state["image_encoder.pos_embed"] = teacher.sam.image_encoder.pos_embed
    for axis in "hw":
        key = f"image_encoder.blocks.1.attn.rel_pos_{axis}"
        setattr(
            runtime.image_encoder.blocks[1].attn, f"rel_pos_{axis}", torch.nn.Parameter(state[key])
        )
    runtime.load_state_dict(state, strict=True)
    with torch.no_grad():
        want = runtime.image_encoder(runtime.preprocess(images * 255))
    torch.testing.assert_close(got["image_embeddings"], want, atol=1e-5, rtol=1e-5)


def test_state_dict_conversion_resizes_only_grid_tables(official):
    sam, _ = official
    converted = sam_state_dict_from_checkpoint(sam.state_dict(), image_size=256, patch_size=16)
    assert converted["image_encoder.pos_embed"].shape == (1, 16, 16, 64)
    assert converted["image_encoder.blocks.1.attn.rel_pos_h"].shape == (31, 32)  # global block
    assert converted["image_encoder.blocks.0.attn.rel_pos_h"].shape == (7, 32)  # 4x4 windows


def test_params_validation():
    with pytest.raises(
        pydantic.ValidationError,
        match="variant 'custom' needs the image encoder sizes; missing: encoder_embed_dim",
    ):
        SamParams(variant="custom")
    with pytest.raises(pydantic.ValidationError, match="not a multiple of patch_size"):
        SamParams(image_size=1000)
    with pytest.raises(pydantic.ValidationError, match="extra"):
        SamParams(image_sise=1024)
    assert SamParams(variant="vit_l").encoder_sizes() == (1024, 24, 16, (5, 11, 17, 23))


def test_official_vit_b_size():
    with pytest.warns(UserWarning, match="random weights"):
        teacher = SamTeacher.build(SamParams(), allow_random_init=True)
    encoder_params = sum(p.numel() for p in teacher.component("image_encoder").parameters())
    assert 89e6 <= encoder_params <= 94e6
    assert teacher.input_size == 1024
    assert teacher.target_specs()["image_embeddings"].shape == ("B", 256, "h", "w")
