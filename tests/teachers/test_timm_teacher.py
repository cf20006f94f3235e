"""The timm teacher on a tiny DINOv2-architecture ViT: every checkpoint format timm itself reads
gives the same targets as timm's own model, and what does not fit says why."""

from __future__ import annotations

import pytest
import timm
import torch
from pydantic import ValidationError
from safetensors.torch import save_file

from mergekit_vision.contracts import Teacher, resize_and_normalize
from mergekit_vision.teachers.timm import TimmParams, TimmTeacher

NAME = "vit_small_patch14_dinov2"
TINY = dict(img_size=56, depth=2, embed_dim=32, num_heads=2)
IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))


@pytest.fixture(scope="module")
def reference() -> torch.nn.Module:
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False, init_values=1.0, **TINY).eval()
    with torch.no_grad():  # non-trivial weights everywhere (LayerScale, tokens, position table)
        for parameter in model.parameters():
            parameter.add_(torch.randn_like(parameter) * 0.02)
    return model


def params(path, **kwargs) -> TimmParams:
    return TimmParams(model=NAME, checkpoint=path, model_kwargs={**TINY, "init_values": 1.0},
                      **kwargs)  # fmt: skip


def expected(model: torch.nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    pixels = resize_and_normalize(images, size=56, mean=IMAGENET[0], std=IMAGENET[1])
    with torch.no_grad():
        tokens = model.forward_features(pixels)
    patches = tokens[:, 1:].transpose(1, 2).reshape(images.shape[0], 32, 4, 4)
    return {"summary": tokens[:, 0], "spatial": patches}


def test_registered():
    # No TEACHERS.get(): that imports every built-in plugin, which this test must not depend on.
    assert TimmTeacher.registry_name == "timm" and issubclass(TimmTeacher, Teacher)


@pytest.mark.parametrize("layout", ["pth", "safetensors", "training"])
def test_checkpoint_formats_reproduce_the_timm_model(reference, tmp_path, layout):
    state = reference.state_dict()
    if layout == "safetensors":
        path = tmp_path / "model.safetensors"
        save_file({k: v.contiguous() for k, v in state.items()}, str(path))
    elif layout == "training":  # timm's train.py: DDP prefix, optimizer state beside the weights
        path = tmp_path / "checkpoint.pth.tar"
        torch.save({"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}}, path)
    else:
        path = tmp_path / "pytorch_model.pth"
        torch.save(state, path)
    teacher = TimmTeacher.build(params(path))
    specs = teacher.target_specs()
    assert specs["summary"].shape == ("B", 32)
    assert specs["spatial"].shape == ("B", 32, 4, 4)
    images = torch.rand(2, 3, 70, 70)  # resized to 56 inside
    with torch.no_grad():
        out = teacher(images, targets=["summary", "spatial"])
    for target, want in expected(reference, images).items():
        torch.testing.assert_close(out[target], want, atol=1e-5, rtol=1e-5)
    assert teacher.pixel_mean == IMAGENET[0] and teacher.input_size == 56
    assert not any(p.requires_grad for p in teacher.parameters())


def test_released_dinov2_layout_loads_as_timm_loads_it(reference, tmp_path):
    """Facebook's release has a mask token and a 37x37 table; timm converts it on load."""
    released = dict(reference.state_dict())
    released["mask_token"] = torch.zeros(1, 32)
    big = timm.create_model(NAME, pretrained=False, **{**TINY, "img_size": 84})
    released["pos_embed"] = big.pos_embed.detach() + 0.1  # a 6x6 grid, resampled to 4x4
    path = tmp_path / "dinov2_vits14_pretrain.pth"
    torch.save(released, path)
    teacher = TimmTeacher.build(params(path))
    timm_loaded = timm.create_model(
        NAME, pretrained=True, pretrained_cfg_overlay=dict(file=str(path)), init_values=1.0, **TINY
    ).eval()
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        out = teacher(images, targets=["summary", "spatial"])
    for target, want in expected(timm_loaded, images).items():
        torch.testing.assert_close(out[target], want, atol=1e-5, rtol=1e-5)


def test_image_size_and_normalization_overrides(reference, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), path)
    teacher = TimmTeacher.build(params(path, image_size=84, mean=(0.5, 0.5, 0.5)))
    assert teacher.input_size == 84 and teacher.pixel_mean == (0.5, 0.5, 0.5)
    assert teacher.target_specs()["spatial"].shape == ("B", 32, 6, 6)  # patch 14 on 84 px


def test_a_checkpoint_of_another_size_is_refused_with_the_keys(reference, tmp_path):
    path = tmp_path / "model.pth"
    torch.save(reference.state_dict(), path)
    deeper = TimmParams(model=NAME, checkpoint=path, model_kwargs={**TINY, "depth": 3})
    with pytest.raises(ValueError, match=r"does not fit model .*missing blocks\.2\."):
        TimmTeacher.build(deeper)
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read timm checkpoint"):
        TimmTeacher.build(params(tmp_path / "junk.pth"))
    with pytest.raises(FileNotFoundError):
        TimmTeacher.build(params(tmp_path / "absent.pth"))


def test_params_are_checked():
    with pytest.raises(ValueError, match="needs a checkpoint"):
        TimmTeacher.build(params(None))
    with pytest.raises(ValidationError, match="similar: .*vit_small_patch14_dinov2"):
        TimmParams(model="vit_small_patch14_dinov2x")
    with pytest.raises(ValidationError, match="may not set pretrained"):
        TimmParams(model=NAME, model_kwargs={"pretrained": True})
    with pytest.raises(ValidationError):
        TimmParams(model=NAME, chekpoint="x.pth")


def test_convolutional_models_give_their_feature_map():
    with pytest.warns(UserWarning, match="random weights"):
        teacher = TimmTeacher.build(
            TimmParams(model="resnet18", image_size=64), allow_random_init=True
        )
    assert teacher.target_specs()["spatial"].shape == ("B", 512, 2, 2)
    with torch.no_grad():
        out = teacher(torch.rand(1, 3, 64, 64), targets=["summary"])
    assert out["summary"].shape == (1, 512)
