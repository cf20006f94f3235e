"""What a deployment runs for both abilities, as modules: the separate teachers, the merged model.

SAM-CLIP's practical claim (Wang et al., arXiv 2310.15308) is cost: one backbone instead of two.
Per image, both "systems" do the same work for a user who wants both abilities:

- **separate**: the SAM teacher's image encoder at its side (1024 px for SAM ViT-B), the
  CLIP teacher's image tower at its side (224 px for OpenCLIP ViT-L/14), zero-shot logits of that
  image embedding against cached class text embeddings, and one point prompt through SAM's prompt
  encoder and mask decoder;
- **merged**: one pass of the merged ViT-Det backbone at the SAM side, the CLIP head on those
  features (SAM-CLIP's stage III adapts the head to this resolution), the same zero-shot logits,
  and the point prompt through the SAM head's decoder.

Each system is an ``encoder`` module (images in [0, 1] -> zero-shot logits and SAM's image
embedding; it normalizes) and a ``decoder`` module, segment_anything's ``SamOnnxModel`` (one
image, masks upscaled to the image as SAM's ONNX deployment returns them). The same modules are
run eagerly, compiled and exported to ONNX, so every variant runs the same function. The merged
backbone runs segment_anything's own attention (``attention: original``), the block code of the
SAM teacher, so a difference between the systems is what merging changes, not an attention
kernel (the student's faster attention path is measured by ``vmerge bench --student``).
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from segment_anything.modeling import Sam
from torch import Tensor, nn

from mergekit_vision.contracts import Teacher, resize_and_normalize
from mergekit_vision.engine.build import build_components
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.export.loading import LoadedRun, load_run, standalone_recipe
from mergekit_vision.export.onnx import (
    ImageEncoderGraph,
    MergedSamOnnxModel,
    head_in_teacher_space,
)
from mergekit_vision.heads.clip_head import ClipHead
from mergekit_vision.heads.sam_head import SamHead
from mergekit_vision.recipe.io import load_recipe, validate_recipe
from mergekit_vision.recipe.schema import task_of_head
from mergekit_vision.students.vitdet_attention import ViTDetBlock

Size = Literal["reference", "tiny"]
SYSTEMS = ("separate", "merged")
# Zero-shot classes whose text embeddings a deployment caches (ImageNet's count).
ZERO_SHOT_CLASSES = 1000

# `--size tiny`: the architectures of tests/recipes/tiny_sam_clip.yaml, by plugin type, so any
# SAM + CLIP recipe can be benched in seconds (a check that it runs, not a measurement).
TINY_TEACHERS: dict[str, dict[str, Any]] = {
    "sam": {
        "variant": "custom", "encoder_embed_dim": 32, "encoder_depth": 2,
        "encoder_num_heads": 2, "encoder_global_attn_indexes": [1], "image_size": 64,
        "patch_size": 8, "window_size": 4, "prompt_embed_dim": 32, "decoder_mlp_dim": 64,
        "decoder_num_heads": 2, "mask_in_chans": 4, "pretrained": None, "checkpoint": None,
    },
    "open_clip": {
        "model": "tiny-clip", "pretrained": None, "checkpoint": None, "pretrained_tag": None,
        "image_size": None,
        "model_cfg": {
            "embed_dim": 32,
            "vision_cfg": {"image_size": 32, "layers": 2, "width": 64, "patch_size": 8},
            "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 64, "heads": 2,
                         "layers": 2},
        },
    },
}  # fmt: skip
TINY_STUDENTS: dict[str, dict[str, Any]] = {
    "vitdet": {
        "variant": "custom", "embed_dim": 32, "depth": 2, "num_heads": 2,
        "global_attn_indexes": [1], "patch_size": 8, "window_size": 4, "out_chans": 32,
        "native_size": 64,
    },
}  # fmt: skip


class Normalized(nn.Module):
    """``module`` on images in [0, 1], normalized with a teacher's pixel statistics."""

    def __init__(self, module: nn.Module, *, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.module, self.mean, self.std = module, tuple(mean), tuple(std)

    def forward(self, images: Tensor) -> Tensor:
        return self.module(resize_and_normalize(images, size=None, mean=self.mean, std=self.std))


class ZeroShot(nn.Module):
    """Zero-shot logits: cosine of an image embedding ``[B, D]`` with cached class text
    embeddings ``[K, D]`` (CLIP, Radford et al., arXiv 2103.00020)."""

    def __init__(self, texts: Tensor):
        super().__init__()
        self.register_buffer("texts", F.normalize(texts, dim=-1))

    def forward(self, embedding: Tensor) -> Tensor:
        return F.normalize(embedding, dim=-1) @ self.texts.T


class SeparateEncoder(nn.Module):
    """The two teachers' image encoders, each at its own side."""

    def __init__(self, *, sam_encoder: nn.Module, clip_tower: nn.Module, zero_shot: ZeroShot):
        super().__init__()
        self.sam_encoder, self.clip_tower, self.zero_shot = sam_encoder, clip_tower, zero_shot

    def forward(self, sam_images: Tensor, clip_images: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, S, S]``, ``[B, 3, c, c]`` in [0, 1] -> (``[B, K]`` zero-shot logits,
        ``[B, C, h, w]`` SAM's image embedding)."""
        return self.zero_shot(self.clip_tower(clip_images)), self.sam_encoder(sam_images)


class MergedEncoder(nn.Module):
    """One pass of the merged backbone, its CLIP head and SAM's image embedding."""

    def __init__(self, *, image_encoder: ImageEncoderGraph, zero_shot: ZeroShot):
        super().__init__()
        # not named `graph`: torch.export's GraphModule has an attribute of that name
        self.image_encoder, self.zero_shot = image_encoder, zero_shot

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """``[B, 3, S, S]`` in [0, 1] -> (``[B, K]`` zero-shot logits, ``[B, C, h, w]``)."""
        embedding, sam_embedding = self.image_encoder(images)
        return self.zero_shot(embedding), sam_embedding


class _EncoderSide(nn.Module):
    """Stands in for SAM's image encoder where ``SamOnnxModel`` only reads its side."""

    def __init__(self, img_size: int):
        super().__init__()
        self.img_size = img_size


@dataclass
class System:
    """One system's modules, the sides its inputs have, and its parts (for params and FLOPs)."""

    name: str
    encoder: nn.Module
    decoder: nn.Module
    input_names: tuple[str, ...]  # the encoder's inputs
    input_sides: tuple[int, ...]  # and their sides in px
    parts: dict[str, nn.Module] = field(default_factory=dict)  # their parameters are counted
    flop_parts: dict[str, str] = field(default_factory=dict)  # part -> module path in encoder

    def encoder_inputs(self, batch: int, *, seed: int = 0) -> tuple[Tensor, ...]:
        """Random images ``[batch, 3, side, side]`` in [0, 1], one per encoder input."""
        generator = torch.Generator().manual_seed(seed)
        return tuple(torch.rand(batch, 3, s, s, generator=generator) for s in self.input_sides)

    def point_prompt(self) -> tuple[Tensor, ...]:
        """The decoder's inputs but the image embedding: one foreground click in the middle (and
        SAM's padding point, as when no box is given), no mask prompt, a square image."""
        side = self.input_sides[0]
        grid = self.decoder.model.prompt_encoder.image_embedding_size
        return (
            torch.tensor([[[side / 2, side / 2], [0.0, 0.0]]]),
            torch.tensor([[1.0, -1.0]]),
            torch.zeros(1, 1, 4 * grid[0], 4 * grid[1]),
            torch.zeros(1),
            torch.tensor([float(side), float(side)]),
        )


@dataclass
class Systems:
    """Both systems built from one run folder or recipe."""

    source: str
    random_weights: bool
    systems: dict[str, System]


def build_systems(
    target: str | Path,
    *,
    size: Size = "reference",
    overrides: list[str] | None = None,
    classes: int = ZERO_SHOT_CLASSES,
) -> Systems:
    """The separate teachers and the merged model of ``target``, on CPU, in eval mode.

    A run folder (or checkpoint) gives its trained merged model and its teachers (random where a
    checkpoint is missing); a recipe is built with random weights, as ``vmerge run --dry-run``
    does: speed does not depend on the weights. ``size="tiny"`` swaps a recipe's SAM, open_clip
    and ViT-Det architectures for tiny ones.
    """
    run = _load(Path(target), size, overrides)
    clip_name, sam_name = run.head_name(ClipHead), run.head_name(SamHead)
    sam_teacher = run.teachers[run.teacher_of(sam_name)]
    clip_teacher = run.teachers[run.teacher_of(clip_name)]
    _check_teacher(sam_teacher, ("image_encoder", "prompt_encoder", "mask_decoder"), "sam_head")
    _check_teacher(clip_teacher, ("visual",), "clip_head")
    generator = torch.Generator().manual_seed(0)
    width = run.model.heads[clip_name].out_dim  # the CLIP teacher's embedding width
    zero_shot = ZeroShot(torch.randn(classes, width, generator=generator))
    separate = _separate(sam_teacher, clip_teacher, zero_shot)
    merged = _merged(run, clip_name, sam_name, zero_shot)
    return Systems(
        source=str(target),
        random_weights=bool(run.random_teachers),
        systems={"separate": separate, "merged": merged},
    )


def _load(target: Path, size: Size, overrides: list[str] | None) -> LoadedRun:
    if target.is_dir():
        if size != "reference" or overrides:
            raise RecipeError(
                str(target),
                [Issue("--size/--set", "a run folder is benched as trained; give a recipe")],
            )
        run = load_run(target)
        run.model.to("cpu")
        for teacher in run.teachers.values():
            teacher.to("cpu")
        return run
    recipe = load_recipe(target, overrides)
    data = standalone_recipe(recipe, read_teachers=False)[0].model_dump(mode="json")
    data["device"] = "cpu"
    if size == "tiny":
        _tiny(data, source=str(target))
    standalone = validate_recipe(data, source=f"{recipe.name} ({size})")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random weights are the point here, and reported
        components = build_components(standalone, allow_random_init=True)
    return LoadedRun(
        run_dir=target,
        checkpoint=target,
        recipe=standalone,
        model=components.model.eval(),
        teachers=components.teachers,
        random_teachers=set(components.teachers),
    )


def _tiny(data: dict[str, Any], *, source: str) -> None:
    """Tiny architectures in place of the recipe's, by plugin type."""
    issues = []
    for name, spec in data["teachers"].items():
        if spec["type"] not in TINY_TEACHERS:
            issues.append(Issue(f"teachers.{name}", _no_tiny("teacher", spec, TINY_TEACHERS)))
        else:
            spec["params"].update(TINY_TEACHERS[spec["type"]])
    student = data["student"]
    if student["type"] not in TINY_STUDENTS:
        issues.append(Issue("student", _no_tiny("student", student, TINY_STUDENTS)))
    else:
        student["params"].update(TINY_STUDENTS[student["type"]])
    if issues:
        raise RecipeError(source, issues)


def _no_tiny(kind: str, spec: dict[str, Any], known: dict[str, Any]) -> str:
    return (
        f"--size tiny has no tiny {kind} of type {spec['type']!r} (it has {', '.join(known)}); "
        "use --size reference"
    )


def _check_teacher(teacher: Teacher, needed: tuple[str, ...], head: str) -> None:
    missing = [name for name in needed if name not in teacher.component_names()]
    if missing:
        raise RecipeError(
            "--inference",
            [
                Issue(
                    f"heads.{head}",
                    f"its teacher ({type(teacher).__name__}) has no {', '.join(missing)}; the "
                    "inference bench compares a SAM teacher and a CLIP teacher",
                )
            ],
        )


def _separate(sam_teacher: Teacher, clip_teacher: Teacher, zero_shot: ZeroShot) -> System:
    sam_side, clip_side = int(sam_teacher.input_size), int(clip_teacher.input_size)  # type: ignore[arg-type]
    sam_encoder = Normalized(
        sam_teacher.component("image_encoder"),
        mean=sam_teacher.pixel_mean,
        std=sam_teacher.pixel_std,
    )
    clip_tower = Normalized(
        clip_teacher.component("visual"), mean=clip_teacher.pixel_mean, std=clip_teacher.pixel_std
    )
    prompt_encoder = sam_teacher.component("prompt_encoder")
    mask_decoder = sam_teacher.component("mask_decoder")
    decoder = _decoder(
        prompt_encoder,
        mask_decoder,
        side=sam_side,
        single_mask_token=not getattr(sam_teacher, "multimask_output", False),
    )
    return System(
        name="separate",
        encoder=SeparateEncoder(
            sam_encoder=sam_encoder, clip_tower=clip_tower, zero_shot=zero_shot
        ),
        decoder=decoder,
        input_names=("sam_images", "clip_images"),
        input_sides=(sam_side, clip_side),
        parts={
            "sam_encoder": sam_encoder,
            "clip_tower": clip_tower,
            "sam_decoder": nn.ModuleList([prompt_encoder, mask_decoder]),
        },
        flop_parts={
            "sam_encoder": "sam_encoder",
            "clip_tower": "clip_tower",
            "zero_shot": "zero_shot",
        },
    )


def _merged(run: LoadedRun, clip_name: str, sam_name: str, zero_shot: ZeroShot) -> System:
    model = run.model
    student = model.student
    side = int(student.native_size)
    task = task_of_head(run.recipe.tasks, clip_name)
    normalizer = model.normalizers[task] if task in model.normalizers else None
    clip_head = head_in_teacher_space(model.heads[clip_name], normalizer)
    for module in (student, clip_head):  # the SAM teacher's block code (module docstring)
        for block in module.modules():
            if isinstance(block, ViTDetBlock):
                block.attention = "original"
    head: SamHead = model.heads[sam_name]
    graph = ImageEncoderGraph(student=student, clip_head=clip_head, sam_output=True)
    decoder = _decoder(
        head.prompt_encoder,
        head.mask_decoder,
        side=side,
        single_mask_token=not head.multimask_output,
    )
    return System(
        name="merged",
        encoder=MergedEncoder(image_encoder=graph, zero_shot=zero_shot),
        decoder=decoder,
        input_names=("images",),
        input_sides=(side,),
        parts={"student": student, "clip_head": clip_head, "sam_decoder": head},
        flop_parts={
            "student": "image_encoder.student",
            "clip_head": "image_encoder.clip_head",
            "zero_shot": "zero_shot",
        },
    )


def _decoder(
    prompt_encoder: nn.Module, mask_decoder: nn.Module, *, side: int, single_mask_token: bool
) -> MergedSamOnnxModel:
    """segment_anything's ``SamOnnxModel`` over a prompt encoder and mask decoder (the image
    encoder is not part of it: it only reads the encoder's side)."""
    sam = Sam(
        image_encoder=_EncoderSide(side),  # type: ignore[arg-type]
        prompt_encoder=prompt_encoder,
        mask_decoder=mask_decoder,
    )
    return MergedSamOnnxModel(sam.eval(), single_mask_token=single_mask_token).eval()
