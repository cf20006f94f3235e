"""The recipe schema: frozen pydantic models that mirror the YAML one-to-one.

A recipe names its plugins by ``type`` and gives their ``params``; :mod:`mergekit_vision.recipe_io`
validates the params against each plugin's own ``Params`` model and fills in their defaults, so
the recipe saved beside a run is fully resolved.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, model_validator

BACKBONE = "backbone"  # the parameter-group name of the student backbone


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(Frozen):
    """``type`` names a registered plugin; ``params`` are validated against its ``Params``."""

    type: str
    params: dict[str, Any] = Field(default_factory=dict)


class PromptSpec(Frozen):
    """How SAM-style prompts are sampled for a promptable-segmentation task (SAM, sec. 3)."""

    points_per_image: int = Field(16, ge=0)
    boxes_per_image: int = Field(16, ge=0)
    box_noise: float = Field(0.1, ge=0)
    source: Literal["auto", "ground_truth", "teacher"] = "auto"


class TaskSpec(Frozen):
    """One distillation task: a teacher's target reproduced by a head from the shared backbone."""

    teacher: str
    head: str
    target: str
    loss: PluginSpec
    data: PluginSpec
    batch_size: int = Field(ge=1)
    resolution: int | list[int] = Field(description="side in px; a list cycles per step")
    resize: Literal["pad", "crop"] = "crop"
    weight: float = Field(1.0, ge=0, description="the task's loss weight (SAM-CLIP's lambda)")
    prompts: PromptSpec | None = None
    max_masks: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)

    def resolutions(self) -> list[int]:
        return self.resolution if isinstance(self.resolution, list) else [self.resolution]


class StageSpec(Frozen):
    """A training stage: which tasks run, which parameter groups train, and at what LR."""

    name: str
    steps: int | None = Field(None, ge=1)
    epochs: float | None = Field(None, gt=0, description="epochs over the first task's data")
    tasks: list[str] = Field(min_length=1)
    train: list[str] = Field(min_length=1, description="'backbone' and/or head names")
    lr: float = Field(gt=0)
    lr_mult: dict[str, float] = Field(default_factory=dict)
    resolution: dict[str, int | list[int]] = Field(
        default_factory=dict, description="per-task resolution override for this stage"
    )
    replay: PluginSpec = PluginSpec(type="fixed_ratio")
    conflict: PluginSpec = PluginSpec(type="sum")

    @model_validator(mode="after")
    def _one_length(self) -> StageSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'steps' or 'epochs'")
        return self


class OptimizerSpec(Frozen):
    type: Literal["adamw"] = "adamw"
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[float, float] = (0.9, 0.999)
    eps: float = 1e-8
    grad_clip: float | None = Field(None, gt=0)


class ScheduleSpec(Frozen):
    """LR schedule applied within each stage (restarted at every stage)."""

    type: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class LoggingSpec(Frozen):
    every: int = Field(1, ge=1, description="write metrics.jsonl every N steps")
    progress: bool = True


class CheckpointSpec(Frozen):
    every: int = Field(500, ge=1)
    keep: int = Field(3, ge=1, description="step-<N> folders kept besides 'last'")


class DryRunSpec(Frozen):
    """What ``vmerge run --dry-run`` changes: dotted overrides (reduced resolutions), batch size."""

    set: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(2, ge=1)
    samples: int = Field(8, ge=1)


class Recipe(Frozen):
    name: str
    seed: int = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    teachers: dict[str, PluginSpec] = Field(min_length=1)
    student: PluginSpec
    heads: dict[str, PluginSpec] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    stages: list[StageSpec] = Field(min_length=1)
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    logging: LoggingSpec = LoggingSpec()
    checkpointing: CheckpointSpec = CheckpointSpec()
    dry_run: DryRunSpec = DryRunSpec()

    @model_validator(mode="after")
    def _references_exist(self, info: ValidationInfo) -> Recipe:
        problems = self.dangling_references()
        collect = (info.context or {}).get("collect_references")
        if collect is not None:  # the recipe loader reports each with its own path and line
            collect.extend(problems)
        elif problems:
            raise ValueError("; ".join(f"{path}: {msg}" for path, msg in problems))
        return self

    def dangling_references(self) -> list[tuple[str, str]]:
        """(dotted path, message) for every name that points at nothing."""
        out: list[tuple[str, str]] = []

        def check(path: str, name: str, valid: list[str], what: str) -> None:
            if name not in valid:
                out.append((path, f"unknown {what} {name!r}; defined: {', '.join(valid)}"))

        for tname, task in self.tasks.items():
            check(f"tasks.{tname}.teacher", task.teacher, list(self.teachers), "teacher")
            check(f"tasks.{tname}.head", task.head, list(self.heads), "head")
        groups = [BACKBONE, *self.heads]
        for i, stage in enumerate(self.stages):
            for j, tname in enumerate(stage.tasks):
                check(f"stages.{i}.tasks.{j}", tname, list(self.tasks), "task")
            for j, group in enumerate(stage.train):
                check(f"stages.{i}.train.{j}", group, groups, "parameter group")
            for group in stage.lr_mult:
                check(f"stages.{i}.lr_mult.{group}", group, groups, "parameter group")
            for tname in stage.resolution:
                check(f"stages.{i}.resolution.{tname}", tname, list(self.tasks), "task")
        return out
