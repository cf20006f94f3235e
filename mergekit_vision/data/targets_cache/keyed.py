"""Prompts drawn per sample view, so a SAM target depends on the sample and not on its batch.

The engine's step generator makes prompts a function of the step, which a cache cannot know in
advance. A keyed view (:mod:`mergekit_vision.data.views`) carries ``view_seed``, a seed of its
(run seed, task, key, view); each image's prompts are drawn from a generator of its own seed.
"""

from __future__ import annotations

import torch
from torch import Tensor

from mergekit_vision.contracts import Prompts


def cat_prompts(parts: list[Prompts]) -> Prompts:
    """Concatenate per-image prompts along the batch dimension."""

    def cat(name: str) -> Tensor | None:
        values = [getattr(p, name) for p in parts]
        return None if values[0] is None else torch.cat(values)

    return Prompts(parts[0].image_size, cat("points"), cat("point_labels"), cat("boxes"))


@torch.no_grad()
def keyed_prompts(task, images: Tensor, masks: list[Tensor] | None, seeds: list[int]) -> Prompts:
    """SAM prompts for ``images`` ``[B, 3, R, R]``, image ``i``'s drawn from ``seeds[i]`` alone.

    Same sources as :func:`mergekit_vision.engine.step.sample_prompts`: ground-truth masks, or the
    teacher's masks for random points (run batched; the boxes then depend on the teacher's
    logits, which agree across batchings to float rounding).
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
