"""The depth teacher on a tiny random ``DepthAnythingForDepthEstimation`` written by
``save_pretrained``: its target is the transformers model's own ``predicted_depth``, it loads
from a folder or a cached Hub repository, and folders that cannot serve are refused with why."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from safetensors.torch import load_file, save_file
from transformers import Dinov2Config, Dinov2Model

from mergekit_vision.contracts import Teacher, resize_and_normalize
from mergekit_vision.errors import WeightsFileError
from mergekit_vision.eval.models import DepthTeacherEval, teacher_eval
from mergekit_vision.teachers.depth import DepthParams, DepthTeacher

from ..hub_cache import folder_files, offline_hub, write_hub_repo
from ..tiny_depth import PROCESSOR_STATS, SIDE, TINY_DEPTH_CONFIG, write_tiny_depth


@pytest.fixture(scope="module")
def depth_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("depth_anything")
    return folder, write_tiny_depth(folder)


def test_registered():
    assert DepthTeacher.registry_name == "depth" and issubclass(DepthTeacher, Teacher)


def test_depth_is_the_models_predicted_depth(depth_folder):
    folder, model = depth_folder
    teacher = DepthTeacher.build(DepthParams(checkpoint=folder))
    assert teacher.input_size == SIDE and teacher.pixel_mean == tuple(PROCESSOR_STATS["image_mean"])
    assert teacher.target_specs()["depth"].shape == ("B", 1, SIDE, SIDE)
    assert teacher.depth_space == "disparity"  # Depth Anything's relative inverse depth
    assert not any(p.requires_grad for p in teacher.parameters())
    images = torch.rand(2, 3, 40, 40)
    mean, std = PROCESSOR_STATS["image_mean"], PROCESSOR_STATS["image_std"]
    with torch.no_grad():
        out = teacher(images, targets=["depth"])["depth"]
        pixels = resize_and_normalize(images, size=SIDE, mean=mean, std=std)
        want = model(pixel_values=pixels).predicted_depth
    assert out.shape == (2, 1, SIDE, SIDE)
    torch.testing.assert_close(out[:, 0], want)
    assert want.std() > 0.1  # a map that varies, so the comparison means something
    evaluated = teacher_eval(teacher)
    assert isinstance(evaluated, DepthTeacherEval) and evaluated.capabilities == {"depth"}
    torch.testing.assert_close(evaluated.depth_maps(images), out)


def test_output_size_and_prediction_space(depth_folder):
    folder, model = depth_folder
    teacher = DepthTeacher.build(DepthParams(checkpoint=folder, output_size=14, image_size=56))
    assert teacher.input_size == 56 and teacher.target_specs()["depth"].shape == ("B", 1, 14, 14)
    images = torch.rand(1, 3, 56, 56)
    with torch.no_grad():
        out = teacher(images, targets=["depth"])["depth"]
        pixels = resize_and_normalize(images, size=56, **_stats())
        full = model(pixel_values=pixels).predicted_depth[:, None]
    want = F.interpolate(full, size=(14, 14), mode="bilinear", antialias=True)
    torch.testing.assert_close(out, want)
    metric = {**TINY_DEPTH_CONFIG, "depth_estimation_type": "metric", "max_depth": 10}
    with pytest.warns(UserWarning, match="random weights"):
        random = DepthTeacher.build(DepthParams(config=metric), allow_random_init=True)
    assert random.depth_space == "depth" and random.input_size == SIDE
    params = DepthParams(config=metric, prediction="disparity")
    with pytest.warns(UserWarning, match="random weights"):
        assert DepthTeacher.build(params, allow_random_init=True).depth_space == "disparity"


def _stats() -> dict:
    return {"mean": PROCESSOR_STATS["image_mean"], "std": PROCESSOR_STATS["image_std"]}


def test_a_hub_repo_id_loads_the_cached_snapshot(depth_folder, tmp_path, monkeypatch):
    folder, model = depth_folder
    cache = offline_hub(monkeypatch, tmp_path / "hf")
    snapshot = write_hub_repo(cache, "tiny-org/depth", folder_files(folder))
    params = DepthParams(pretrained="tiny-org/depth")
    assert DepthTeacher.checkpoint_fields(params) == {"pretrained": snapshot / "config.json"}
    teacher = DepthTeacher.build(params)
    own, saved = teacher.model.state_dict(), model.state_dict()
    assert all(torch.equal(own[key], value) for key, value in saved.items())
    with pytest.raises(ValidationError, match="not both"):
        DepthParams(pretrained="tiny-org/depth", checkpoint=folder)


def test_folders_that_cannot_serve_are_refused_with_the_reason(depth_folder, tmp_path):
    folder, _ = depth_folder
    with pytest.raises(ValueError, match="needs 'checkpoint'"):
        DepthTeacher.build(DepthParams())
    with pytest.raises(WeightsFileError, match="has no config.json"):
        DepthTeacher.build(DepthParams(checkpoint=tmp_path / "nothing"))
    encoder = tmp_path / "dinov2"
    Dinov2Model(Dinov2Config(hidden_size=32, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=64, image_size=28, patch_size=7)).save_pretrained(
        encoder
    )  # fmt: skip
    with pytest.raises(WeightsFileError, match="depth folder .*dinov2.*hf teacher"):
        DepthTeacher.build(DepthParams(checkpoint=encoder))
    partial = tmp_path / "partial"
    write_tiny_depth(partial)
    weights = load_file(partial / "model.safetensors")
    dropped = sorted(k for k in weights if k.startswith("head.conv3"))
    save_file({k: v for k, v in weights.items() if k not in dropped}, partial / "model.safetensors")
    with pytest.raises(WeightsFileError, match=r"head\.conv3\.\w+ is missing"):
        DepthTeacher.build(DepthParams(checkpoint=partial))
    bare = tmp_path / "bare"
    write_tiny_depth(bare)
    (bare / "preprocessor_config.json").unlink()
    with pytest.raises(ValueError, match="give 'mean' and 'std'"):
        DepthTeacher.build(DepthParams(checkpoint=bare))
    built = DepthTeacher.build(DepthParams(checkpoint=bare, **_stats()))
    assert built.input_size == SIDE  # the backbone's image_size, without a processor file
    with pytest.raises(ValueError, match="no target"):
        built(torch.rand(1, 3, SIDE, SIDE), targets=["spatial"])
    assert json.loads((folder / "config.json").read_text())["model_type"] == "depth_anything"
