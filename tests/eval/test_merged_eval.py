"""The merged model's CLIP embeddings are compared in the teacher's space: a head trained on
normalized targets predicts normalized embeddings, and evaluation maps them back before scoring
them against the teacher's text embeddings."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn

from mergekit_vision.engine.build import MergedModel
from mergekit_vision.eval.models import MergedEval
from mergekit_vision.recipe.schema import task_of_head
from mergekit_vision.strategies.normalization.standardize import Standardize

DIM = 8


class PassThrough(nn.Module):
    """A student whose features are the images' first ``DIM`` channels, per pixel."""

    def forward(self, images):
        return SimpleNamespace(tokens=images[:, :DIM].permute(0, 2, 3, 1))


class NormalizedHead(nn.Module):
    """A perfect head trained on normalized targets: normalizer(teacher embedding)."""

    def __init__(self, normalizer: Standardize):
        super().__init__()
        self.normalizer = normalizer

    def forward(self, features, *, prompts=None):
        return {"image_embedding": self.normalizer(features.tokens.amax(dim=(1, 2)))}

    def dense_embeddings(self, features):
        return self.normalizer(features.tokens)


def _model() -> tuple[MergedModel, Standardize]:
    normalizer = Standardize(dim=DIM, estimate_steps=1)
    normalizer.update(torch.randn(256, DIM) * 4 + 3)  # far from the identity
    heads = {"clip_head": NormalizedHead(normalizer), "sam_head": nn.Identity()}
    model = MergedModel(student=PassThrough(), heads=heads, normalizers={"clip": normalizer})
    return model, normalizer


def test_normalized_head_is_scored_in_teacher_space():
    torch.manual_seed(0)
    model, _ = _model()
    images = torch.randn(3, DIM, 4, 4)
    teacher_pooled = F.normalize(images.permute(0, 2, 3, 1).amax(dim=(1, 2)), dim=-1)
    teacher_dense = F.normalize(images.permute(0, 2, 3, 1), dim=-1)

    mapped = MergedEval(model, clip_head="clip_head", sam_head="sam_head", clip_task="clip")
    torch.testing.assert_close(mapped.embed_images(images), teacher_pooled)
    torch.testing.assert_close(mapped.embed_patches(images), teacher_dense)

    raw = MergedEval(model, clip_head="clip_head", sam_head="sam_head")
    cosine = (raw.embed_images(images) * teacher_pooled).sum(-1)
    assert bool((cosine < 0.99).all())  # unmapped, the embeddings are elsewhere


def test_task_of_head_finds_the_training_task():
    tasks = {
        "sam": SimpleNamespace(head="sam_head"),
        "clip": SimpleNamespace(head="clip_head"),
    }
    assert task_of_head(tasks, "clip_head") == "clip"
    assert task_of_head(tasks, "missing") is None
