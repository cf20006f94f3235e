"""Every registered teacher, student, head and loss on tiny CPU models, parametrised over the
registries: a new built-in plugin without a tiny configuration below fails here by name."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from functools import cache
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_vision.contracts import HEADS, LOSSES, STUDENTS, TEACHERS, Prompts, StudentFeatures
from mergekit_vision.registry import Registry

from .step_merge import untrained_run
from .tiny_depth import TINY_DEPTH_CONFIG
from .tiny_radio import TINY_RADIO_CONFIG
from .tiny_sam2 import TINY_SAM2_CONFIG

TINY_RECIPE = Path(__file__).resolve().parent / "recipes" / "tiny_sam_clip.yaml"
TINY_VIT = dict(depth=2, embed_dim=32, num_heads=2)
# SAM 2's tiny vision encoder with two blocks in its last stage: a last block that keeps its width
TINY_HIERA_CONFIG = {
    **TINY_SAM2_CONFIG["vision_config"],
    "backbone_config": {
        **TINY_SAM2_CONFIG["vision_config"]["backbone_config"],
        "blocks_per_stage": [1, 1, 2, 2],
    },
}


def _tiny_recipe_params(*keys: str) -> dict:
    data = yaml.safe_load(TINY_RECIPE.read_text())
    for key in keys:
        data = data[key]
    return dict(data["params"])


# One tiny configuration per built-in plugin: ``params`` for teachers, students and heads.
TEACHER_PARAMS: dict[str, Callable[[], dict]] = {
    "sam": lambda: _tiny_recipe_params("teachers", "sam"),
    "sam2": lambda: dict(config=TINY_SAM2_CONFIG),
    "depth": lambda: dict(config=TINY_DEPTH_CONFIG),
    "merged_run": lambda: dict(run=str(untrained_run()), head="sam_head"),
    "open_clip": lambda: _tiny_recipe_params("teachers", "clip"),
    "timm": lambda: dict(
        model="vit_small_patch14_dinov2", model_kwargs=dict(img_size=28, **TINY_VIT)
    ),
    "hf": lambda: dict(
        config=dict(
            model_type="dinov2",
            image_size=28,
            patch_size=7,
            hidden_size=32,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=2,
        )
    ),
}
STUDENT_PARAMS: dict[str, Callable[[], dict]] = {
    "vitdet": lambda: {**_tiny_recipe_params("student"), "init_from": None},
    "timm_vit": lambda: dict(
        model="vit_small_patch14_dinov2", native_size=28, model_kwargs=TINY_VIT
    ),
    "radio": lambda: dict(config=TINY_RADIO_CONFIG),
    "sam2_hiera": lambda: dict(config=TINY_HIERA_CONFIG),
    # out_chans: the tiny SAM decoder's width, as the tiny recipe's ViT-Det
    "timm_features": lambda: dict(
        model="mobilenetv4_conv_small_050",
        stride=8,
        embed_dim=32,
        num_blocks=2,
        out_chans=32,
        native_size=64,
    ),
}
# (params, the teacher kind it reads from)
HEAD_PARAMS: dict[str, tuple[dict, str]] = {
    "clip_head": ({"teacher": "open_clip", "num_blocks": 1}, "open_clip"),
    "sam_head": ({"init_from": "sam"}, "sam"),
    "sam2_head": ({"init_from": "sam2"}, "sam2"),
    "adaptor": ({"teacher": "timm"}, "timm"),
    "depth_head": ({"teacher": "depth", "features": 16, "hidden": 8}, "depth"),
    "ladder": ({"teacher": "timm", "layers": [0, -1]}, "timm"),
}


# Heads that read a multi-scale student's levels: a single-scale student is refused at build.
MULTI_SCALE_HEADS = {"sam2_head"}
UNSUPPORTED = {
    ("ladder", "sam2_hiera"): "the ladder's projectors take blocks of one width; Hiera's widen "
    "per stage",
}


def _pair(*shape: int, perfect=lambda t: t.clone()):
    """(prediction, target, a prediction agreeing with the target) of ``shape``."""
    target = torch.randn(*shape)
    return torch.randn(*shape), target, perfect(target)


LOSS_INPUTS: dict[str, Callable[[], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]] = {
    "contrastive": lambda: _pair(4, 16),
    "cosine": lambda: _pair(3, 16),
    # mask losses agree with a teacher's logits through sharp logits of the same sign
    "focal_dice": lambda: _pair(2, 3, 1, 8, 8, perfect=lambda t: 50 * t.sign()),
    "feature": lambda: _pair(2, 16, 4, 4),
    "mse": lambda: _pair(2, 16),
    # relative depth: any positive scale and any shift of the target agrees with it
    "ssi": lambda: _pair(2, 1, 8, 8, perfect=lambda t: 3 * t + 1),
}


def builtin_names(registry: Registry) -> list[str]:
    return [entry.name for entry in registry if entry.source == "built-in"]


def _configured(table: dict, kind: str, name: str):
    if name not in table:
        pytest.fail(f"built-in {kind} {name!r} has no tiny smoke configuration in {__file__}")
    return table[name]


@cache
def tiny_teacher(name: str):
    cls = TEACHERS.get(name)
    params = cls.Params.model_validate(_configured(TEACHER_PARAMS, "teacher", name)())
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights"
        return cls.build(params, allow_random_init=True)


def tiny_student(name: str, teachers=None):
    cls = STUDENTS.get(name)
    params = cls.Params.model_validate(_configured(STUDENT_PARAMS, "student", name)())
    return cls.build(params, teachers=teachers or {})


def tiny_prompts(batch: int, size: int) -> Prompts:
    points = torch.rand(batch, 2, 1, 2) * size
    boxes = torch.tensor([[2.0, 2.0, size / 2, size / 2]]).repeat(batch, 1, 1)
    return Prompts(size, points, torch.ones(batch, 2, 1, dtype=torch.long), boxes)


def _check_shape(tensor: torch.Tensor, shape: tuple, batch: int) -> None:
    assert tensor.shape[0] == batch
    for got, want in zip(tensor.shape[1:], shape[1:], strict=True):
        assert not isinstance(want, int) or got == want, (tuple(tensor.shape), shape)


@pytest.mark.parametrize("name", builtin_names(TEACHERS))
def test_every_teacher_produces_its_declared_targets(name):
    teacher = tiny_teacher(name)
    specs = teacher.target_specs()
    assert specs
    images = torch.rand(2, 3, 40, 40)
    prompts = tiny_prompts(2, 40)
    with torch.no_grad():
        out = teacher(images, targets=list(specs), prompts=prompts)
    assert set(out) == set(specs)
    for target, spec in specs.items():
        _check_shape(out[target], spec.shape, 2)
        assert torch.isfinite(out[target]).all()
    assert not any(p.requires_grad for p in teacher.parameters())
    with pytest.raises(ValueError, match="no target"):
        teacher(images, targets=["nonsense"], prompts=prompts)


@pytest.mark.parametrize("name", builtin_names(STUDENTS))
def test_every_student_runs_at_two_sizes(name):
    student = tiny_student(name)
    for side in (2 * student.patch_size * 2, 3 * student.patch_size * 2):
        features = student(torch.rand(2, 3, side, side), return_intermediates=True)
        grid, cells = side // student.patch_size, side // student.feature_stride
        assert features.tokens.shape == (2, grid, grid, student.embed_dim)
        assert features.feature_map.shape == (2, student.out_channels, cells, cells)
        for name in student.level_names:  # "stride<s>": a map at stride s
            stride = int(name.removeprefix("stride"))
            assert features.levels[name].shape[-2:] == (side // stride, side // stride)
        assert features.intermediates and features.intermediates[-1].shape[:3] == (2, grid, grid)
        assert features.image_size == side
    block = student.last_block()
    assert block(features.tokens).shape == features.tokens.shape
    features.feature_map.sum().backward()
    assert any(p.grad is not None for p in student.parameters())


@pytest.mark.parametrize("name", builtin_names(HEADS))
@pytest.mark.parametrize(
    "student_name", ["vitdet", "timm_vit", "radio", "sam2_hiera", "timm_features"]
)
def test_every_head_reproduces_its_teachers_targets(name, student_name):
    if (name, student_name) in UNSUPPORTED:
        pytest.skip(UNSUPPORTED[name, student_name])
    params, teacher_kind = _configured(HEAD_PARAMS, "head", name)
    teacher = tiny_teacher(teacher_kind)
    teachers = {teacher_kind: teacher}
    student = tiny_student(student_name)
    cls = HEADS.get(name)
    params = cls.Params.model_validate(params)
    if name in MULTI_SCALE_HEADS and not student.level_names:
        with pytest.raises(ValueError, match="feature levels"):
            cls.build(params, student=student, teachers=teachers)
        return
    head = cls.build(params, student=student, teachers=teachers)
    side = 4 * student.feature_stride  # a 4 x 4 feature map
    images = torch.rand(2, 3, side, side)
    prompts = tiny_prompts(2, side)
    features: StudentFeatures = student(images, blocks=head.student_blocks)  # as training asks
    out = head(features, prompts=prompts)
    specs = teacher.target_specs()
    assert out and set(out) <= set(specs)
    with torch.no_grad():
        wanted = teacher(images, targets=list(out), prompts=prompts)
    for target, prediction in out.items():
        _check_shape(prediction, specs[target].shape, 2)
        assert prediction.ndim == wanted[target].ndim
    sum(p.float().sum() for p in out.values()).backward()
    assert any(p.grad is not None for p in head.parameters())


@pytest.mark.parametrize("name", builtin_names(LOSSES))
def test_every_loss_is_a_finite_scalar_that_a_perfect_prediction_lowers(name):
    torch.manual_seed(0)
    prediction, target, perfect = _configured(LOSS_INPUTS, "loss", name)()
    cls = LOSSES.get(name)
    loss = cls.build(cls.Params())
    prediction.requires_grad_(True)
    value = loss(prediction, target)
    assert value.ndim == 0 and torch.isfinite(value)
    value.backward()
    assert torch.isfinite(prediction.grad).all() and prediction.grad.abs().sum() > 0
    assert loss(perfect, target).item() < value.item()
