"""--format open_clip: open_clip's usual calls on the merged image tower and the teacher's text
tower give the merged model's embeddings."""

from __future__ import annotations

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from mergekit_vision.eval.models import ClipTeacherEval, MergedEval
from mergekit_vision.eval.tasks import class_text_embeddings
from mergekit_vision.export import ExportError
from mergekit_vision.export.open_clip import export_open_clip, load_open_clip
from mergekit_vision.heads.clip_head import ClipHead, make_blocks

CLASSES = ["red circle", "blue square", "green star"]
TEMPLATES = ["a photo of a {}.", "a drawing of a {}."]


@pytest.fixture(scope="module")
def exported(tiny_run, tmp_path_factory):
    folder = tmp_path_factory.mktemp("open_clip")
    export_open_clip(tiny_run, folder)
    return load_open_clip(folder)


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (3, 64, 64, 3), dtype=np.uint8)


def test_encode_image_equals_the_merged_clip_head(tiny_run, exported, images):
    model, preprocess, _ = exported
    batch = torch.stack([preprocess(Image.fromarray(image)) for image in images])
    assert batch.shape == (3, 3, 64, 64)
    ours = model.encode_image(batch, normalize=True)
    merged = MergedEval(tiny_run.model, clip_head="clip_head", sam_head="sam_head")
    reference = merged.embed_images(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255)
    assert torch.allclose(ours, reference, atol=1e-5)
    assert not torch.allclose(ours[0], ours[1], atol=1e-3)  # the images are told apart


def test_text_tower_and_zero_shot_classifier_are_the_teachers(tiny_run, exported, images):
    model, preprocess, tokenizer = exported
    teacher = ClipTeacherEval(tiny_run.teachers["clip"])
    texts = model.encode_text(tokenizer(CLASSES), normalize=True)
    assert torch.allclose(texts, teacher.embed_texts(CLASSES), atol=1e-5)
    classifier = open_clip.build_zero_shot_classifier(
        model, tokenizer, CLASSES, TEMPLATES, num_classes_per_batch=None
    )
    reference = class_text_embeddings(teacher, CLASSES, TEMPLATES)
    assert classifier.shape == (32, 3)
    assert torch.allclose(classifier.T, reference, atol=1e-5)
    batch = torch.stack([preprocess(Image.fromarray(image)) for image in images])
    with torch.no_grad():
        image_features, text_features, scale = model(batch, tokenizer(CLASSES))
    assert image_features.shape == (3, 32) and text_features.shape == (3, 32)
    assert float(scale) == pytest.approx(float(tiny_run.teachers["clip"].clip.logit_scale.exp()))


def test_a_conv_block_head_round_trips(tiny_run, tmp_path, images):
    """A CLIP head of ``blocks: conv`` is rebuilt with conv blocks and loads strictly."""
    trained = tiny_run.model.heads["clip_head"]
    conv = ClipHead(
        blocks=make_blocks("conv", 2, tiny_run.model.student),
        embed_dim=tiny_run.model.student.embed_dim,
        out_dim=trained.out_dim,
        target=trained.target,
    ).eval()
    tiny_run.model.heads["clip_head"] = conv  # (ModuleDict: monkeypatch.setitem cannot)
    try:
        export_open_clip(tiny_run, tmp_path)
        merged = MergedEval(tiny_run.model, clip_head="clip_head", sam_head="sam_head")
        pixels = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 255
        reference = merged.embed_images(pixels)
    finally:
        tiny_run.model.heads["clip_head"] = trained
    model, preprocess, _ = load_open_clip(tmp_path)
    assert model.visual.head.block_kind == "conv" and len(model.visual.head.blocks) == 2
    batch = torch.stack([preprocess(Image.fromarray(image)) for image in images])
    assert torch.allclose(model.encode_image(batch, normalize=True), reference, atol=1e-5)


def test_non_clip_teacher_is_refused(tiny_run, tmp_path, monkeypatch):
    monkeypatch.setattr(tiny_run, "teacher_of", lambda head: "sam")
    with pytest.raises(ExportError, match="needs an open_clip CLIP teacher"):
        export_open_clip(tiny_run, tmp_path)
