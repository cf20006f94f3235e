"""The open_clip teacher loads open_clip's checkpoint formats and reproduces the model's outputs."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pydantic
import pytest
import torch
from safetensors.torch import save_file

import mergekit_vision.teachers.open_clip  # noqa: F401  (registers "open_clip")
from mergekit_vision.contracts import Teacher
from mergekit_vision.teachers.open_clip import OpenClipParams, OpenClipTeacher, register_model_cfg
from mergekit_vision.teachers.open_clip_checkpoint import (
    describe_open_clip_checkpoint,
    open_clip_state_dict_from_checkpoint,
)

TINY_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2, "layers": 2},
}
OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def tiny_params(checkpoint: Path | None, **extra) -> OpenClipParams:
    return OpenClipParams(model="tiny-clip", model_cfg=TINY_CFG, checkpoint=checkpoint, **extra)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[torch.nn.Module, dict[str, Path]]:
    """A real open_clip CLIP and its weights in each format open_clip publishes or trains into."""
    torch.manual_seed(0)
    clip = open_clip.create_model(register_model_cfg(TINY_CFG), pretrained=None).eval()
    state = clip.state_dict()
    folder = tmp_path_factory.mktemp("open_clip")
    paths = {
        "bin": folder / "open_clip_pytorch_model.bin",
        "safetensors": folder / "open_clip_model.safetensors",
        "training": folder / "epoch_3.pt",
    }
    torch.save(state, paths["bin"])
    save_file({k: v.contiguous() for k, v in state.items()}, str(paths["safetensors"]))
    training = {
        "epoch": 3,
        "name": "tiny-run",
        "state_dict": {f"module.{k}": v for k, v in state.items()},
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
    }
    torch.save(training, paths["training"])
    return clip, paths


def test_registered():
    # No TEACHERS.get(): that imports every built-in plugin, which this test must not depend on.
    assert OpenClipTeacher.registry_name == "open_clip"
    assert issubclass(OpenClipTeacher, Teacher)


@pytest.mark.parametrize("layout", ["bin", "safetensors", "training"])
def test_each_checkpoint_format_reproduces_the_model(reference, layout):
    clip, paths = reference
    teacher = OpenClipTeacher.build(tiny_params(paths[layout]))
    assert teacher.input_size == 32 and teacher.embed_dim == 32
    assert teacher.pixel_mean == OPENAI_MEAN and teacher.pixel_std == OPENAI_STD
    images = torch.rand(3, 3, 32, 32)
    mean = torch.tensor(OPENAI_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(OPENAI_STD).view(1, 3, 1, 1)
    with torch.no_grad():
        got = teacher(images, targets=["image_embedding"])["image_embedding"]
        want = clip.encode_image((images - mean) / std, normalize=True)
    assert got.shape == (3, 32)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    assert not any(p.requires_grad for p in teacher.parameters())


def test_text_embeddings(reference):
    clip, paths = reference
    teacher = OpenClipTeacher.build(tiny_params(paths["bin"]))
    texts = ["a photo of a cat", "a red circle and a blue star"]
    embeddings = teacher.encode_text(texts)
    assert embeddings.shape == (2, 32)
    torch.testing.assert_close(embeddings.norm(dim=-1), torch.ones(2))
    tokens = open_clip.get_tokenizer(register_model_cfg(TINY_CFG))(texts)
    assert tokens.shape == (2, 16)  # the config's context length
    with torch.no_grad():
        torch.testing.assert_close(embeddings, clip.encode_text(tokens, normalize=True))
        torch.testing.assert_close(teacher.component("text")(tokens), embeddings)
    assert teacher.component("visual") is teacher.clip.visual
    with pytest.raises(KeyError, match="it has: visual, text"):
        teacher.component("mask_decoder")


def test_unnormalized_embedding_and_other_image_size(reference):
    clip, paths = reference
    teacher = OpenClipTeacher.build(tiny_params(paths["bin"], image_size=48, normalize=False))
    assert teacher.input_size == 48
    out = teacher(torch.rand(2, 3, 40, 40), targets=["image_embedding"])["image_embedding"]
    assert out.shape == (2, 32)
    assert not torch.allclose(out.norm(dim=-1), torch.ones(2))
    assert teacher.target_specs()["image_embedding"].shape == ("B", 32)
    with pytest.raises(ValueError, match=r"no target \['mask_logits'\]; it has image_embedding"):
        teacher(torch.rand(1, 3, 48, 48), targets=["mask_logits"])


def test_wrong_model_names_file_model_and_keys(reference):
    _, paths = reference
    wider = {**TINY_CFG, "vision_cfg": {**TINY_CFG["vision_cfg"], "width": 96}}
    params = OpenClipParams(model="wide-clip", model_cfg=wider, checkpoint=paths["bin"])
    with pytest.raises(ValueError) as error:
        OpenClipTeacher.build(params)
    message = str(error.value)
    assert str(paths["bin"]) in message and "model 'wide-clip'" in message
    assert "shape of visual.class_embedding: file (64,), model (96,)" in message
    assert "vision width 64, 2 layers, patch 8, embed_dim 32, like no built-in" in message


def test_describe_names_builtin_models():
    weights = {
        "visual.conv1.weight": torch.zeros(768, 3, 16, 16),
        "visual.proj": torch.zeros(768, 512),
    }
    weights |= {f"visual.transformer.resblocks.{i}.ln_1.weight": torch.zeros(1) for i in range(12)}
    assert "ViT-B-16" in describe_open_clip_checkpoint(weights)
    assert "does not look like" in describe_open_clip_checkpoint(
        {"image_encoder.x": torch.zeros(1)}
    )


def test_unreadable_missing_and_foreign_files(tmp_path):
    corrupt = tmp_path / "open_clip_pytorch_model.bin"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(ValueError, match="cannot read open_clip checkpoint .*open_clip_pytorch"):
        OpenClipTeacher.build(tiny_params(corrupt))
    with pytest.raises(FileNotFoundError, match="nowhere/open_clip_model.safetensors"):
        OpenClipTeacher.build(tiny_params(tmp_path / "nowhere" / "open_clip_model.safetensors"))
    sam_like = tmp_path / "sam.pth"
    torch.save({"image_encoder.pos_embed": torch.zeros(1)}, sam_like)
    with pytest.raises(ValueError, match="unexpected image_encoder.pos_embed.*does not look like"):
        OpenClipTeacher.build(tiny_params(sam_like))


def test_state_dict_conversion():
    weight = torch.ones(2)
    plain = {"visual.proj": weight}
    assert open_clip_state_dict_from_checkpoint(plain) == plain
    training = {"state_dict": {"module.visual.proj": weight}, "epoch": 2}
    assert open_clip_state_dict_from_checkpoint(training) == plain
    with pytest.raises(ValueError, match="not a state dict"):
        open_clip_state_dict_from_checkpoint({"epoch": 2})


def test_random_init_only_when_allowed():
    with pytest.raises(ValueError, match="needs a checkpoint"):
        OpenClipTeacher.build(tiny_params(None))
    with pytest.warns(UserWarning, match="random weights"):
        OpenClipTeacher.build(tiny_params(None), allow_random_init=True)
    assert OpenClipTeacher.checkpoint_fields(tiny_params(None)) == {"checkpoint": None}


def test_params_validation():
    with pytest.raises(pydantic.ValidationError, match="model 'ViT-L-15'; .* ViT-L-14"):
        OpenClipParams(model="ViT-L-15")
    with pytest.raises(pydantic.ValidationError, match="model_cfg lacks text_cfg"):
        OpenClipParams(model="x", model_cfg={"embed_dim": 8, "vision_cfg": {}})
    with pytest.raises(pydantic.ValidationError, match="has no tag 'nope'.*datacomp_xl_s13b_b90k"):
        OpenClipParams(model="ViT-L-14", pretrained_tag="nope")


def test_quick_gelu_mismatch_is_caught_before_building():
    params = OpenClipParams(model="ViT-L-14", pretrained_tag="openai")
    with pytest.raises(ValueError, match="trained with QuickGELU.*'-quickgelu'"):
        OpenClipTeacher.build(params, allow_random_init=True)


@pytest.mark.slow
def test_vit_l_14_size():
    params = OpenClipParams(model="ViT-L-14", pretrained_tag="datacomp_xl_s13b_b90k")
    with pytest.warns(UserWarning, match="random weights"):
        teacher = OpenClipTeacher.build(params, allow_random_init=True)
    visual = sum(p.numel() for p in teacher.component("visual").parameters())
    assert 300e6 <= visual <= 306e6
    assert teacher.input_size == 224 and teacher.embed_dim == 768
    assert teacher.pixel_mean == OPENAI_MEAN


RESNET_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 64, "layers": [1, 1, 1, 1], "width": 8},
    "text_cfg": TINY_CFG["text_cfg"],
}


@pytest.mark.parametrize("cfg, grid", [(TINY_CFG, 4), (RESNET_CFG, 2)])
def test_dense_embeddings_shape_and_norm(cfg, grid):
    torch.manual_seed(0)
    params = OpenClipParams(model=f"dense-{grid}", model_cfg=cfg)
    teacher = OpenClipTeacher.build(params, allow_random_init=True).eval()
    dense = teacher.dense_embeddings(torch.rand(2, 3, 48, 48))
    assert dense.shape == (2, grid, grid, 32)
    assert torch.allclose(dense.norm(dim=-1), torch.ones(2, grid, grid), atol=1e-5)


def test_resnet_dense_embedding_of_a_one_location_grid_is_the_image_embedding():
    # With a 1 x 1 final feature map and no positional term, the attention pool attends over two
    # equal tokens (the mean and the one location): its output is the value path MaskCLIP keeps.
    torch.manual_seed(0)
    cfg = {**RESNET_CFG, "vision_cfg": {**RESNET_CFG["vision_cfg"], "image_size": 32}}
    params = OpenClipParams(model="dense-rn-1", model_cfg=cfg)
    teacher = OpenClipTeacher.build(params, allow_random_init=True).eval()
    with torch.no_grad():
        teacher.clip.visual.attnpool.positional_embedding.zero_()
    images = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        dense = teacher.dense_embeddings(images)[:, 0, 0]
        pooled = teacher(images, targets=["image_embedding"])["image_embedding"]
    assert torch.allclose(dense, torch.nn.functional.normalize(pooled, dim=-1), atol=1e-5)


@pytest.mark.parametrize("cfg, grid, channels", [(TINY_CFG, 4, 64), (RESNET_CFG, 2, 256)])
def test_spatial_target_is_the_towers_final_feature_map(cfg, grid, channels):
    """ViT: the patch tokens after ln_post; ResNet: layer4's output. Asking for it as well leaves
    the image embedding unchanged."""
    torch.manual_seed(0)
    params = OpenClipParams(model=f"spatial-{grid}", model_cfg=cfg)
    teacher = OpenClipTeacher.build(params, allow_random_init=True).eval()
    assert teacher.target_specs()["spatial"].shape == ("B", channels, grid, grid)
    images = torch.rand(2, 3, 48, 48)
    with torch.no_grad():
        alone = teacher(images, targets=["image_embedding"])
        both = teacher(images, targets=["spatial", "image_embedding"])
        visual, pixels = teacher.clip.visual, teacher.prepare(images)
        if cfg is RESNET_CFG:
            layers = [visual.stem, visual.layer1, visual.layer2, visual.layer3, visual.layer4]
            expected = pixels
            for layer in layers:
                expected = layer(expected)
        else:
            tokens = visual.ln_post(visual.transformer(visual._embeds(pixels)))[:, 1:]
            expected = tokens.reshape(2, grid, grid, -1).permute(0, 3, 1, 2)
    assert set(both) == {"spatial", "image_embedding"}
    assert torch.allclose(both["image_embedding"], alone["image_embedding"], atol=1e-6)
    assert torch.allclose(both["spatial"], expected, atol=1e-5)
