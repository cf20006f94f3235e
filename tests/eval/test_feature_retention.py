"""Feature retention on constructed cases: a head that *is* the teacher scores cosine 1, a head
that predicts the opposite scores -1, and the constant-mean baseline sits in between."""

from __future__ import annotations

import warnings
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from mergekit_vision.engine.build import MergedModel
from mergekit_vision.eval.features import feature_retention, feature_tasks
from mergekit_vision.strategies.normalization.standardize import Standardize
from mergekit_vision.students.timm_vit import TimmViTStudent
from mergekit_vision.teachers.depth import DepthParams, DepthTeacher
from mergekit_vision.teachers.timm import TimmParams, TimmTeacher

from ..tiny_depth import TINY_DEPTH_CONFIG

VIT = dict(depth=2, embed_dim=32, num_heads=2, init_values=1.0)


class StandardisedCopy(nn.Module):
    """The teacher's summary in a normalizer's space, as a head trained on normalized targets."""

    def __init__(self, normalizer: nn.Module):
        super().__init__()
        self.normalizer = normalizer

    def forward(self, features, *, prompts=None):
        return {"summary": self.normalizer(features.prefix_tokens[:, 0])}


class TeacherCopy(nn.Module):
    """The teacher's own targets read off a student initialised from it, times ``sign``."""

    def __init__(self, sign: float):
        super().__init__()
        self.sign = sign

    def forward(self, features, *, prompts=None):
        return {
            "summary": self.sign * features.prefix_tokens[:, 0],
            "spatial": self.sign * features.feature_map,
        }


@pytest.fixture(scope="module")
def components():
    torch.manual_seed(0)
    params = TimmParams(model="vit_small_patch14_dinov2", model_kwargs={"img_size": 56, **VIT})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        teacher = TimmTeacher.build(params, allow_random_init=True)
    student_params = TimmViTStudent.Params(
        model="vit_small_patch14_dinov2", native_size=56, model_kwargs=VIT, init_from="dino"
    )
    student = TimmViTStudent.build(student_params, teachers={"dino": teacher})
    standardise = Standardize(dim=VIT["embed_dim"], estimate_steps=1)
    standardise.update(torch.randn(64, VIT["embed_dim"]) * 3 + 5)  # far from the teacher's scale
    heads = {
        "same": TeacherCopy(1.0),
        "opposite": TeacherCopy(-1.0),
        "standardised": StandardisedCopy(standardise),
    }
    model = MergedModel(student=student, heads=heads, normalizers={"normalized": standardise})

    def task(head: str, target: str) -> SimpleNamespace:
        spec = SimpleNamespace(teacher="dino", head=head, target=target)
        return SimpleNamespace(teacher=teacher, spec=spec)

    tasks = {
        "summary": task("same", "summary"),
        "spatial": task("same", "spatial"),
        "inverted": task("opposite", "spatial"),
        "normalized": task("standardised", "summary"),
    }
    return SimpleNamespace(tasks=tasks, model=model, device=torch.device("cpu"))


def test_cosines_and_baseline(components):
    torch.manual_seed(1)
    images = [{"image": (torch.rand(3, 56, 56) * 255).to(torch.uint8)} for _ in range(5)]
    assert feature_tasks(components) == ["summary", "spatial", "inverted", "normalized"]
    found = feature_retention(components, images, batch_size=2, max_images=4)
    assert found["summary"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert found["spatial"]["cosine"] == pytest.approx(1.0, abs=1e-5)
    assert found["inverted"]["cosine"] == pytest.approx(-1.0, abs=1e-5)
    assert found["spatial"]["centered_cosine"] == pytest.approx(1.0, abs=1e-5)
    assert -1 < found["inverted"]["centered_cosine"] < 0  # -t - m against t - m
    for row in found.values():
        assert row["images"] == 4 and row["teacher"] == "dino"
        assert -1 < row["mean_baseline_cosine"] < 1
    # a head trained on normalized targets is compared in the teacher's own space
    for key in ("cosine", "centered_cosine", "mean_baseline_cosine"):
        assert found["normalized"][key] == pytest.approx(found["summary"][key], abs=1e-4), key
    assert feature_retention(components, None, batch_size=2) == {}


def test_depth_maps_are_left_to_the_relative_depth_metric(components):
    """A depth teacher's map is known only up to scale and shift: no cosine is taken of it."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        depth = DepthTeacher.build(DepthParams(config=TINY_DEPTH_CONFIG), allow_random_init=True)
    spec = SimpleNamespace(teacher="depth", head="same", target="depth")
    tasks = {**components.tasks, "depth": SimpleNamespace(teacher=depth, spec=spec)}
    with_depth = SimpleNamespace(**{**vars(components), "tasks": tasks})
    assert "depth" not in feature_tasks(with_depth)
    images = [{"image": torch.zeros(3, 56, 56, dtype=torch.uint8)} for _ in range(2)]
    assert "depth" not in feature_retention(with_depth, images, batch_size=2)
