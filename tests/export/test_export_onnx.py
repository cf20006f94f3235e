"""--format onnx: onnxruntime runs the exported graphs and gives the merged model's outputs, at any
batch size and point count."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import onnxruntime
import pytest
import torch
from torch import nn

from mergekit_vision.cli.main import main
from mergekit_vision.contracts import Prompts
from mergekit_vision.engine.build import MergedModel
from mergekit_vision.export import ExportError
from mergekit_vision.export.loading import load_run
from mergekit_vision.export.onnx import export_onnx
from mergekit_vision.export.sam import sam_architecture
from mergekit_vision.recipe.io import validate_recipe
from mergekit_vision.sam.decoding import decode_masks
from mergekit_vision.strategies.normalization.standardize import Standardize
from mergekit_vision.teachers.sam import build_sam_model

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def exported(tiny_run_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("onnx")
    assert main(["export", str(tiny_run_dir), "--format", "onnx", "--output", str(folder)]) == 0
    return folder


def session(path) -> onnxruntime.InferenceSession:
    return onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def max_difference(name: str, ours: np.ndarray, reference: torch.Tensor) -> float:
    """The largest difference (shapes must agree), printed so the test log reports it."""
    assert ours.shape == tuple(reference.shape), name
    difference = float(np.abs(ours - reference.detach().numpy()).max())
    print(f"{name}: max |onnxruntime - PyTorch| = {difference:.3g}")
    return difference


def test_image_encoder_runs_any_batch_as_the_merged_model(tiny_run, exported):
    assert {p.name for p in exported.iterdir()} == {
        "image_encoder.onnx",
        "sam_decoder.onnx",
        "onnx_config.json",
    }
    encoder = session(exported / "image_encoder.onnx")
    assert encoder.get_inputs()[0].shape == ["batch", 3, 64, 64]
    generator = torch.Generator().manual_seed(0)
    for batch in (1, 3):
        images = torch.rand(batch, 3, 64, 64, generator=generator)
        clip, sam = encoder.run(
            ["image_embedding", "sam_image_embeddings"], {"images": images.numpy()}
        )
        with torch.no_grad():  # the merged model as trained (its blocks' default attention)
            features = tiny_run.model.student(images)
            embedding = tiny_run.model.heads["clip_head"](features)["image_embedding"]
        assert max_difference(f"image_embedding (batch {batch})", clip, embedding) <= TOLERANCE
        feature_map = features.feature_map
        assert (
            max_difference(f"sam_image_embeddings (batch {batch})", sam, feature_map) <= TOLERANCE
        )
    assert not np.allclose(clip[0], clip[1], atol=1e-3)  # the images are told apart
    config = json.loads((exported / "onnx_config.json").read_text())
    assert config["image_encoder"]["image_size"] == 64
    assert config["sam_decoder"]["embedding_size"] == [8, 8]


@pytest.mark.parametrize("clicks", [[(40.0, 12.0)], [(40.0, 12.0), (7.0, 30.0), (55.0, 45.0)]])
def test_decoder_gives_the_sam_heads_masks(tiny_run, exported, clicks):
    """One click and three: the point axis is dynamic, and one click still takes the single-mask
    token the head distilled (SamOnnxModel's own choice would be a multimask token)."""
    head = tiny_run.model.heads["sam_head"]
    with torch.no_grad():
        embeddings = tiny_run.model.student(torch.rand(1, 3, 64, 64)).feature_map
        points = torch.tensor([clicks])
        labels = torch.tensor([[1] + [0, 1][: len(clicks) - 1]])
        prompts = Prompts(image_size=64, points=points[None], point_labels=labels[None])
        low_res, iou = decode_masks(
            prompt_encoder=head.prompt_encoder,
            mask_decoder=head.mask_decoder,
            image_embeddings=embeddings,
            prompts=prompts,
        )
    # SAM's predictor input: an original 96 x 128 image, resized to 48 x 64 and padded to 64,
    # the clicks with SAM's "not a point" padding token.
    sam = build_sam_model(**sam_architecture(tiny_run.model.student, head))
    masks = sam.postprocess_masks(low_res[0], input_size=(48, 64), original_size=(96, 128))
    inputs = {
        "image_embeddings": embeddings.numpy(),
        "point_coords": torch.cat([points, torch.zeros(1, 1, 2)], dim=1).numpy(),
        "point_labels": torch.cat([labels, torch.tensor([[-1]])], dim=1).float().numpy(),
        "mask_input": np.zeros((1, 1, 32, 32), dtype=np.float32),
        "has_mask_input": np.zeros(1, dtype=np.float32),
        "orig_im_size": np.array([96, 128], dtype=np.float32),
    }
    ours = session(exported / "sam_decoder.onnx").run(None, inputs)
    n = len(clicks)
    assert max_difference(f"masks ({n} clicks)", ours[0], masks) <= TOLERANCE
    assert max_difference(f"iou_predictions ({n} clicks)", ours[1], iou[0]) <= TOLERANCE
    assert max_difference(f"low_res_masks ({n} clicks)", ours[2], low_res[0]) <= TOLERANCE


def test_clip_side_apart_from_sams_gets_its_own_graph_in_the_teachers_space(tiny_run_dir, tmp_path):
    """CLIP at 32 px, SAM at 64: two encoder graphs; the task's target normalization is undone
    in the graph (folded into the head's last layer)."""
    run = load_run(tiny_run_dir)
    data = run.recipe.model_dump(mode="json")
    data["tasks"]["clip"]["resolution"] = [32]
    run = dataclasses.replace(run, recipe=validate_recipe(data, source="test"))
    normalizer = Standardize.build(Standardize.Params(estimate_steps=1), dim=32)
    normalizer.update(torch.randn(64, 32) * 3 + 2)
    run.model.normalizers["clip"] = normalizer
    export_onnx(run, tmp_path)
    config = json.loads((tmp_path / "onnx_config.json").read_text())
    assert config["image_encoder"]["image_size"] == 32
    assert config["image_encoder"]["outputs"] == ["image_embedding"]
    assert config["sam_image_encoder"]["image_size"] == 64
    images = torch.rand(2, 3, 32, 32)
    (clip,) = session(tmp_path / "image_encoder.onnx").run(None, {"images": images.numpy()})
    sam_images = torch.rand(2, 3, 64, 64)
    (sam,) = session(tmp_path / "sam_image_encoder.onnx").run(None, {"images": sam_images.numpy()})
    with torch.no_grad():
        raw = run.model.heads["clip_head"](run.model.student(images))["image_embedding"]
        embedding = normalizer.inverse(raw)
        feature_map = run.model.student(sam_images).feature_map
    assert max_difference("image_embedding (normalized task)", clip, embedding) <= TOLERANCE
    assert max_difference("sam_image_embeddings (own graph)", sam, feature_map) <= TOLERANCE


def test_a_sam_head_on_another_student_is_refused(tiny_run, tmp_path):
    other = MergedModel(student=nn.Identity(), heads=dict(tiny_run.model.heads))
    with pytest.raises(ExportError, match="needs the 'vitdet' student"):
        export_onnx(dataclasses.replace(tiny_run, model=other), tmp_path)
