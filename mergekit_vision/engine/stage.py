"""Everything one training stage runs with, built from its spec: which parameters train, the
optimiser and schedule, and the injected strategies (replay, conflict, loss weighting)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from mergekit_vision.engine.build import Components
from mergekit_vision.engine.distributed import full_optimizer_state, load_optimizer_state
from mergekit_vision.engine.gradients import TaskGradients
from mergekit_vision.engine.optim import build_optimizer, build_schedule
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.schema import BACKBONE, Recipe, StageSpec
from mergekit_vision.strategies.conflict.base import CONFLICT, ConflictStrategy
from mergekit_vision.strategies.replay.base import REPLAY, ReplayScheduler
from mergekit_vision.strategies.weighting.base import WEIGHTING, LossWeighting

WEIGHTING_GROUP = "weighting"  # the optimiser group of learnable loss weights


@dataclass
class StageRun:
    """One stage as it runs: its spec and length, the optimiser and LR schedule of the parameters
    it trains, the injected strategies, and the per-task gradient recorder they read.

    ``shared`` are the trained backbone parameters (what the conflict strategy combines);
    :meth:`state_dict` is what a checkpoint saves of the stage.
    """

    spec: StageSpec
    steps: int
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LambdaLR
    replay: ReplayScheduler
    conflict: ConflictStrategy
    weighting: LossWeighting
    shared: list[nn.Parameter]
    gradients: TaskGradients

    def state_dict(self) -> dict[str, Any]:
        return {
            "optimizer": full_optimizer_state(self.optimizer),  # sharded state gathered
            "schedule": self.schedule.state_dict(),
            "replay": self.replay.state_dict(),
            "weighting": self.weighting.state_dict(),
            "weighting_extra": self.weighting.state_dict_extra(),
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        load_optimizer_state(self.optimizer, saved["optimizer"])
        self.schedule.load_state_dict(saved["schedule"])
        self.replay.load_state_dict(saved["replay"])
        self.weighting.load_state_dict(saved["weighting"])
        self.weighting.load_state_dict_extra(saved["weighting_extra"])


def stage_steps(components: Components, stage: StageSpec) -> int:
    if stage.steps is not None:
        return stage.steps
    task = components.tasks[stage.tasks[0]]
    if not hasattr(task.dataset, "__len__"):
        raise ValueError(
            f"stage {stage.name!r} is given in epochs but task {task.name!r} streams data of "
            "unknown length; give 'steps' or the dataset's 'num_samples'"
        )
    return max(1, math.ceil(stage.epochs * len(task.dataset) / task.spec.batch_size))


def build_stage(
    components: Components, spec: StageSpec, *, trainable_by_design: dict[int, bool]
) -> StageRun:
    """Freeze what the stage does not train (plugins' frozen parts stay frozen), then build."""
    recipe = components.recipe
    groups = components.model.parameter_groups()
    for name, params in groups.items():
        for p in params:
            p.requires_grad_(trainable_by_design[id(p)] and name in spec.train)
    weighting = (
        WEIGHTING.get(spec.weighting.type)
        .build(
            spec.weighting.params,
            base_weights={t: recipe.tasks[t].weight for t in spec.tasks},
        )
        .to(components.device)
    )
    trained = {n: ps for n, ps in groups.items() if n in spec.train}
    if any(True for _ in weighting.parameters()):
        trained[WEIGHTING_GROUP] = list(weighting.parameters())
    optimizer = build_optimizer(trained, stage=spec, spec=recipe.optimizer)
    steps = stage_steps(components, spec)
    batch_sizes = {t: recipe.tasks[t].batch_size for t in spec.tasks}
    conflict = CONFLICT.get(spec.conflict.type).build(spec.conflict.params)
    shared = [p for p in groups[BACKBONE] if p.requires_grad]
    # A stage that trains no shared parameter (head probing: a frozen backbone) has no gradients
    # for a task to conflict over; its strategies get no rows and act as 'sum'.
    record = bool(shared) and (conflict.needs_task_gradients or weighting.needs_task_gradients)
    return StageRun(
        spec=spec,
        steps=steps,
        optimizer=optimizer,
        schedule=build_schedule(optimizer, spec=recipe.schedule, total_steps=steps),
        replay=REPLAY.get(spec.replay.type).build(spec.replay.params, batch_sizes=batch_sizes),
        conflict=conflict,
        weighting=weighting,
        shared=shared,
        gradients=TaskGradients(shared=shared, enabled=record),
    )


def check_parallel_support(recipe: Recipe, *, sharded: bool) -> None:
    """Refuse, before any collective, strategies that need whole per-task gradients under FSDP
    (``sharded``), which splits every gradient across the ranks, and a LoRA student there."""
    if not sharded:
        return
    issues = [
        Issue(
            f"stages.{i}",
            f"conflict {stage.conflict.type!r} / weighting {stage.weighting.type!r} need "
            "whole per-task gradients, which FSDP shards; use distributed.strategy ddp",
        )
        for i, stage in enumerate(recipe.stages)
        if CONFLICT.get(stage.conflict.type).needs_task_gradients
        or WEIGHTING.get(stage.weighting.type).needs_task_gradients
    ]
    if recipe.student.lora is not None:  # parametrized weights are not sharded as plain ones
        issues.append(
            Issue("student.lora", "not supported with FSDP; use distributed.strategy ddp")
        )
    if issues:
        raise RecipeError(recipe.name, issues)
