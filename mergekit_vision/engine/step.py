"""One task's distillation loss on one batch: teacher target, student features, head, loss."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.contracts import Prompts
from mergekit_vision.data.targets_cache.keyed import keyed_prompts
from mergekit_vision.engine.build import BuiltTask, MergedModel
from mergekit_vision.engine.distributed import gather_rows
from mergekit_vision.engine.performance import autocast_context


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
    its own seed instead of ``generator``, or reads them from the task's targets cache.
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
) -> Tensor:
    """The (unweighted) distillation loss of ``task`` on ``batch``.

    With a target normaliser the head learns the normalised target; its statistics are updated
    from this batch while ``update_statistics`` and the normaliser is still estimating.
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
    )
    name = task.spec.target
    with autocast_context(device, getattr(model, "autocast_dtype", None)):
        if forward is None:
            features = model.student(images)
            prediction = model.heads[task.spec.head](features, prompts=prompts)
        else:
            prediction = forward(images, head=task.spec.head, prompts=prompts)
    return task.loss(prediction[name].float(), target)


def batch_targets(
    task: BuiltTask,
    batch: dict[str, Any],
    *,
    model: MergedModel,
    resolution: int,
    generator: torch.Generator,
    device: torch.device,
    update_statistics: bool,
) -> tuple[Tensor, Prompts | None, Tensor]:
    """``batch``'s images at ``resolution``, their prompts and the teacher's (normalised)
    target: everything of a task step before the student runs."""
    images, masks = prepare_images(batch, resolution=resolution, device=device)
    prompts = sample_prompts(task, images, masks, generator, batch=batch)
    target = teacher_targets(
        task, images, prompts, model=model, update_statistics=update_statistics, batch=batch
    )
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
    """The teacher's target for ``images`` as the head learns it (normalised if configured).

    Under data parallelism the normaliser's statistics see every rank's targets (gathered), so
    they stay identical across ranks. A task with a targets cache reads keyed views' targets
    there instead of running the teacher (``batch`` names the views).
    """
    name = task.spec.target
    if task.targets is not None and batch is not None and "view" in batch:
        target = task.targets.target(batch, images)
    else:
        target = task.teacher(images, targets=[name], prompts=prompts)[name]
    if task.name in model.normalizers:
        normalizer = model.normalizers[task.name]
        if update_statistics and not normalizer.frozen:
            normalizer.observe(gather_rows(target))
        target = normalizer.normalise(target)
    return target


@torch.no_grad()
def estimate_target_statistics(
    task: BuiltTask,
    next_batch: Callable[[], dict[str, Any]],
    *,
    model: MergedModel,
    resolutions: list[int],
    generator: torch.Generator,
    device: torch.device,
) -> None:
    """Feed ``task``'s target normaliser teacher targets until its statistics freeze.

    Run before the first training step, so the head only ever learns one fixed map: a
    normaliser still estimating during training moves its targets under the head, and PHI-S
    switches its rotation on only when the statistics freeze (AM-RADIO and PHI-S likewise
    estimate the teachers' statistics before distilling). Batches come from ``next_batch`` at
    ``resolutions`` in turn; nothing runs when the statistics are already frozen (e.g.
    resumed from a checkpoint).
    """
    normalizer = model.normalizers[task.name]
    used = 0
    while not normalizer.frozen:
        batch_targets(
            task,
            next_batch(),
            model=model,
            resolution=resolutions[used % len(resolutions)],
            generator=generator,
            device=device,
            update_statistics=True,
        )
        used += 1
