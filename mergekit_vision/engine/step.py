"""One task's distillation loss on one batch: teacher target, student features, head, loss.

A task reads its target from its teacher, or, for keyed sample views, from the target source it
was handed (``BuiltTask.targets``, e.g. a targets cache). ``lap(phase)``, when given, is called
at the end of each phase of the step (:data:`PHASES`), for ``vmerge bench`` to time or count them.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.contracts import Prompts
from mergekit_vision.engine.build import BuiltTask, MergedModel
from mergekit_vision.engine.distributed import gather_rows
from mergekit_vision.engine.performance import autocast_context

# The phases of a training step, in order; the last two are the engine loop's (engine/loop.py).
PHASES = ("data", "teacher", "student_forward", "backward", "optimizer")
Lap = Callable[[str], None]


def no_lap(phase: str) -> None:
    """The ``lap`` of a step nobody times."""


def prepare_images(
    batch: dict[str, Any], *, resolution: int, device: torch.device
) -> tuple[Tensor, list[Tensor] | None]:
    """uint8 batch -> float images ``[B, 3, R, R]`` in [0, 1] and masks resized alike."""
    images = batch["image"].to(device, non_blocking=True).float().div_(255.0)
    masks = batch.get("masks")
    if images.shape[-1] != resolution:
        images = F.interpolate(
            images, size=(resolution, resolution), mode="bilinear", antialias=True
        )
        if masks is not None:
            masks = [_resize_masks(m, resolution) for m in masks]
    return images, masks


def _resize_masks(masks: Tensor, resolution: int) -> Tensor:
    if masks.shape[0] == 0:
        return masks.new_zeros((0, resolution, resolution))
    return F.interpolate(masks[:, None].float(), size=(resolution, resolution))[:, 0] > 0.5


@torch.no_grad()
def sample_prompts(
    task: BuiltTask,
    images: Tensor,
    masks: list[Tensor] | None,
    generator: torch.Generator,
    *,
    batch: dict[str, Any] | None = None,
) -> Prompts | None:
    """Prompts from ground-truth masks, or from the teacher's own masks for random points.

    A batch of keyed views (``"view_seed"``, see docs/cache.md) draws each image's prompts from
    its own seed instead of ``generator``, or reads them from the task's target source.
    """
    sampler = task.prompt_sampler
    if sampler is None:
        return None
    if batch is not None and "view_seed" in batch:
        if task.targets is not None:
            return task.targets.prompts(batch, images)
        return keyed_prompts(task, images, masks, batch["view_seed"].tolist())
    size = images.shape[-1]
    if task.prompt_source == "ground_truth" and masks is not None:
        return sampler.from_masks(masks, image_size=size, generator=generator).to(images.device)
    points = sampler.random_points(images.shape[0], image_size=size, generator=generator)
    points = points.to(images.device)
    logits = task.teacher(images, targets=[task.spec.target], prompts=points)[task.spec.target]
    return sampler.boxes_from_teacher_masks(points, logits, generator=generator).to(images.device)


def cat_prompts(parts: list[Prompts]) -> Prompts:
    """Concatenate per-image prompts along the batch dimension."""

    def cat(name: str) -> Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return Prompts(parts[0].image_size, cat("points"), cat("point_labels"), cat("boxes"))


@torch.no_grad()
def keyed_prompts(
    task: BuiltTask, images: Tensor, masks: list[Tensor] | None, seeds: list[int]
) -> Prompts:
    """SAM prompts for ``images`` ``[B, 3, R, R]``, image ``i``'s drawn from ``seeds[i]`` alone.

    The step generator makes prompts a function of the step, which a targets cache cannot know in
    advance; a keyed view (:mod:`mergekit_vision.data.views`) carries ``view_seed``, a seed of its
    (run seed, task, key, view), so its prompts depend on the sample and not on its batch. Same
    sources as :func:`sample_prompts`: ground-truth masks, or the teacher's masks for random
    points (run batched; the boxes then depend on the teacher's logits, which agree across
    batchings to float rounding).
    """
    sampler = task.prompt_sampler
    size = images.shape[-1]
    generators = [torch.Generator().manual_seed(int(seed)) for seed in seeds]
    if task.prompt_source == "ground_truth" and masks is not None:
        parts = [
            sampler.from_masks([m], image_size=size, generator=g)
            for m, g in zip(masks, generators, strict=True)
        ]
        return cat_prompts(parts).to(images.device)
    points = cat_prompts(
        [sampler.random_points(1, image_size=size, generator=g) for g in generators]
    ).to(images.device)
    name = task.spec.target
    logits = task.teacher(images, targets=[name], prompts=points)[name]
    parts = [
        sampler.boxes_from_teacher_masks(points.select(i), logits[i : i + 1], generator=g)
        for i, g in enumerate(generators)
    ]
    return cat_prompts(parts).to(images.device)


def task_loss(
    task: BuiltTask,
    batch: dict[str, Any],
    *,
    model: MergedModel,
    resolution: int,
    generator: torch.Generator,
    device: torch.device,
    update_statistics: bool = True,
    forward: Callable[..., dict[str, Tensor]] | None = None,
    lap: Lap = no_lap,
) -> Tensor:
    """The (unweighted) distillation loss of ``task`` on ``batch``.

    With a target normalizer the head learns the normalized target; its statistics are updated
    from this batch while ``update_statistics`` and the normalizer is still estimating (or,
    online, always).
    ``forward(images, head=, prompts=)`` replaces the plain student + head call (the DDP wrapper).
    """
    images, prompts, target = batch_targets(
        task,
        batch,
        model=model,
        resolution=resolution,
        generator=generator,
        device=device,
        update_statistics=update_statistics,
        lap=lap,
    )
    name = task.spec.target
    with autocast_context(device, getattr(model, "autocast_dtype", None)):
        if forward is None:
            head = model.heads[task.spec.head]
            blocks = getattr(head, "student_blocks", ())  # only what it reads (none: a plain head)
            features = model.student(images, blocks=blocks)
            prediction = head(features, prompts=prompts)
        else:
            prediction = forward(images, head=task.spec.head, prompts=prompts)
    loss = task.loss(prediction[name].float(), target)
    lap("student_forward")
    return loss


def batch_targets(
    task: BuiltTask,
    batch: dict[str, Any],
    *,
    model: MergedModel,
    resolution: int,
    generator: torch.Generator,
    device: torch.device,
    update_statistics: bool,
    lap: Lap = no_lap,
) -> tuple[Tensor, Prompts | None, Tensor]:
    """``batch``'s images at ``resolution``, their prompts and the teacher's (normalized)
    target: everything of a task step before the student runs."""
    images, masks = prepare_images(batch, resolution=resolution, device=device)
    lap("data")
    prompts = sample_prompts(task, images, masks, generator, batch=batch)
    target = teacher_targets(
        task, images, prompts, model=model, update_statistics=update_statistics, batch=batch
    )
    lap("teacher")
    return images, prompts, target


@torch.no_grad()
def teacher_targets(
    task: BuiltTask,
    images: Tensor,
    prompts: Prompts | None,
    *,
    model: MergedModel,
    update_statistics: bool,
    batch: dict[str, Any] | None = None,
) -> Tensor:
    """The teacher's target for ``images`` as the head learns it (normalized if configured).

    Under data parallelism the normalizer's statistics see every rank's targets (gathered), so
    they stay identical across ranks. A task with a target source reads keyed views' targets
    there instead of running the teacher (``batch`` names the views).
    """
    name = task.spec.target
    if task.targets is not None and batch is not None and "view" in batch:
        target = task.targets.target(batch, images)
    elif task.upsampler is not None:
        target = task.upsampler(images, teacher=teacher_map(task))
    else:
        target = task.teacher(images, targets=[name], prompts=prompts)[name]
    if task.name in model.normalizers:
        normalizer = model.normalizers[task.name]
        if update_statistics and normalizer.tracking:
            normalizer.observe(gather_rows(target))
        target = normalizer.normalize(target)
    return target


def teacher_map(task: BuiltTask) -> Callable[[Tensor], Tensor]:
    """``images -> [N, D, h, w]``: the task's teacher target, as an upsampler calls it."""
    name = task.spec.target
    return lambda images: task.teacher(images, targets=[name])[name]
