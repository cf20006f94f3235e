"""What runs once before the first training step: teacher upsamplers are fitted, then each
target normalizer estimates its statistics, each on its own stream of the task's data (the
training streams stay untouched). Both are no-ops once done (e.g. a resumed run's normalizers)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch

from mergekit_vision.engine.build import BuiltTask, MergedModel
from mergekit_vision.engine.distributed import gather_rows
from mergekit_vision.engine.step import batch_targets, no_lap, prepare_images, teacher_map
from mergekit_vision.engine.streams import task_stream


def calibrate_targets(
    tasks: dict[str, BuiltTask],
    *,
    model: MergedModel,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    describe: Callable[[str], None] = no_lap,
) -> None:
    """Fit the teacher upsamplers, then estimate every target normalizer's statistics (of the
    upsampled targets, where a task has an upsampler)."""
    fit_teacher_upsamplers(
        tasks, seed=seed, device=device, rank=rank, world_size=world_size, describe=describe
    )
    for index, (name, task) in enumerate(tasks.items()):
        if name not in model.normalizers or model.normalizers[name].frozen:
            continue
        stream = task_stream(
            task, seed=seed + 7_919 * (index + 1), rank=rank, world_size=world_size
        )
        describe(f"estimating the {name} task's target statistics")
        estimate_target_statistics(
            task,
            stream.next,
            model=model,
            resolutions=task.spec.resolutions(),
            generator=torch.Generator().manual_seed(seed + index),
            device=device,
        )


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
    """Feed ``task``'s target normalizer teacher targets until its statistics freeze.

    Run before the first training step, so the head only ever learns one fixed map: a
    normalizer still estimating during training moves its targets under the head, and PHI-S
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


def fit_teacher_upsamplers(
    tasks: dict[str, BuiltTask],
    *,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    describe: Callable[[str], None] = no_lap,
) -> dict[str, list[float]]:
    """Fit every task's teacher upsampler that has weights (``teacher_upsampler: {type:
    learned}``) on its own stream of the task's data (the training streams stay untouched),
    before the target normalizers estimate on its output; returns each fit's losses.

    Each rank fits on every rank's images (gathered), so the weights stay equal across ranks.
    The weights are not checkpointed: a resumed run fits them again, from the same seed and
    batches.
    """
    losses: dict[str, list[float]] = {}
    for index, (name, task) in enumerate(tasks.items()):
        upsampler = task.upsampler
        if upsampler is None or upsampler.fitted:
            continue
        describe(f"fitting the {name} task's teacher upsampler")
        stream = task_stream(
            task, seed=seed + 6_151 * (index + 1), rank=rank, world_size=world_size
        )
        generator = torch.Generator().manual_seed(seed + index)
        sides = task.spec.resolutions()
        losses[name] = []
        while not upsampler.fitted:
            side = sides[len(losses[name]) % len(sides)]
            images, _ = prepare_images(stream.next(), resolution=side, device=device)
            fit = upsampler.fit_step(
                gather_rows(images), teacher=teacher_map(task), generator=generator
            )
            losses[name].append(fit)
    return losses
