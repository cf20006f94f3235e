"""The recipe schema: frozen pydantic models that mirror the YAML one-to-one.

A recipe names its plugins by ``type`` and gives their ``params``; :mod:`mergekit_vision.recipe.io`
validates the params against each plugin's own ``Params`` model and fills in their defaults, so
the recipe saved beside a run is fully resolved.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergekit_vision.data.views import AugmentSpec
from mergekit_vision.sam.prompts import PromptSamplerParams
from mergekit_vision.toy.spec import ToySpec

BACKBONE = "backbone"  # the parameter-group name of the student backbone


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PluginSpec(Frozen):
    """``type`` names a registered plugin; ``params`` are validated against its ``Params``."""

    type: str
    params: dict[str, Any] = Field(default_factory=dict)


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
    prompts: PromptSamplerParams | None = None
    max_masks: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    normalize: PluginSpec | None = Field(
        None, description="teacher-target normalisation (standardize, phi_s)"
    )
    heldout: PluginSpec | None = Field(
        None,
        description="held-out data for the forgetting signal (default: the first "
        "training batches, a fixed in-sample set)",
    )
    views: int | None = Field(
        None, ge=1, description="augmentation views per sample, view = epoch mod views"
    )
    augment: AugmentSpec | None = None
    targets_cache: str | None = Field(
        None, description="folder written by `vmerge cache`: targets read instead of the teacher"
    )

    def resolutions(self) -> list[int]:
        return self.resolution if isinstance(self.resolution, list) else [self.resolution]

    def sample_views(self) -> int | None:
        """Views per sample when samples are keyed views (any of ``views``, ``augment``,
        ``targets_cache``; see docs/cache.md), else None."""
        if self.views is None and self.augment is None and self.targets_cache is None:
            return None
        return self.views or 1


class MonitorSpec(Frozen):
    """The forgetting signal: each task's held-out distillation loss every ``every`` steps.

    SAM-CLIP stopped stage II early when COCO mask mAP got worse; here any task whose held-out
    loss stays above ``(1 + tolerance)`` x its best for ``patience`` checks in a row ends the
    stage (``early_stopping``), and replay schedulers see every reading.
    """

    every: int = Field(50, ge=1)
    batches: int = Field(2, ge=1)
    early_stopping: bool = False
    patience: int = Field(3, ge=1)
    tolerance: float = Field(0.05, ge=0)


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
    weighting: PluginSpec = PluginSpec(type="static")
    monitor: MonitorSpec | None = None
    accumulate: int = Field(
        1, ge=1, description="micro-batches summed per task into one optimiser step"
    )

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
    fused: bool | None = Field(
        None, description="fused AdamW kernel; None: wherever the parameters' device has one"
    )


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


class DistributedSpec(Frozen):
    """How a run under ``torchrun`` splits the work (one process alone ignores it).

    ``ddp`` replicates the model and averages gradients; ``fsdp`` shards parameters, gradients
    and optimiser state (FSDP2, ``torch.distributed.fsdp.fully_shard``). Task batch sizes are
    per rank: N ranks see N x ``batch_size`` samples per task and step.
    """

    strategy: Literal["ddp", "fsdp"] = "ddp"


class PerformanceSpec(Frozen):
    """Speed switches that leave the trained function unchanged (up to float rounding)."""

    activation_checkpointing: bool = Field(
        False, description="recompute each student block in backward (less memory, ~1.3x time)"
    )
    compile: bool = Field(False, description="torch.compile the student")
    channels_last: bool = Field(False, description="channels-last memory format (conv layers)")
    autocast: Literal["auto", "bf16", "fp32"] = Field(
        "auto", description="student and heads' precision; auto: bf16 on CUDA, fp32 on CPU"
    )
    keep_freed_memory: bool = Field(
        True,
        description="CPU: glibc malloc keeps freed memory for reuse instead of page-faulting "
        "large tensors in afresh each step (the process keeps its peak memory)",
    )


class DryRunSpec(Frozen):
    """What ``vmerge run --dry-run`` changes: dotted overrides (reduced resolutions), batch size."""

    set: dict[str, Any] = Field(default_factory=dict)
    batch_size: int = Field(2, ge=1)
    samples: int = Field(8, ge=1)


# A few of CLIP's ImageNet prompt templates (Radford et al. 2021); recipes may give all 80.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a drawing of a {}.",
)


class EvalSpec(Frozen):
    """What ``vmerge eval`` measures: which teachers and heads play which role, on which data.

    ``classification`` (``image_classes`` layout) gives zero-shot top-1; ``instances`` (COCO JSON)
    gives promptable-segmentation mIoU and mask AP; ``semantic`` (VOC layout) gives zero-shot
    semantic segmentation, its first ``calibration_samples`` images choosing each model's
    background threshold.
    """

    clip_teacher: str
    sam_teacher: str
    clip_head: str
    sam_head: str
    classification: PluginSpec | None = None
    instances: PluginSpec | None = None
    semantic: PluginSpec | None = None
    resolution: int = Field(ge=8, description="main evaluation side in px")
    extra_resolutions: list[int] = Field(default_factory=list)
    batch_size: int = Field(16, ge=1)
    max_prompts_per_image: int = Field(8, ge=1)
    calibration_samples: int = Field(16, ge=0)
    points_per_class: int = Field(3, ge=1, le=16)
    refined_mask_class: Literal["pooled", "vote"] = Field(
        "pooled",
        description="how refined semseg classifies each SAM-head mask: the CLIP head's pooled "
        "embedding of the mask ('pooled') or its per-patch class probabilities averaged over the "
        "mask ('vote')",
    )
    pipeline_grid: int = Field(8, ge=2, description="SAM point grid of the two-model pipeline")
    pictures: int = Field(4, ge=0)
    teacher_results: Path | None = Field(
        None,
        description="JSON file to keep the teachers' and pipeline's results in and reuse them "
        "from while the teachers and evaluation data are unchanged (vmerge compare sets it)",
    )
    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        description="prompt templates for class names, e.g. 'a photo of a {}.'",
    )


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
    performance: PerformanceSpec = PerformanceSpec()
    distributed: DistributedSpec = DistributedSpec()
    eval: EvalSpec | None = None
    toy: ToySpec | None = Field(
        None, description="toy-world data and teachers to prepare before the run (CPU demo)"
    )

    @model_validator(mode="after")
    def _references_exist(self) -> Recipe:
        problems = dangling_references(self.model_dump())
        if problems:
            raise ValueError("; ".join(f"{path}: {msg}" for path, msg in problems))
        return self


def dangling_references(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, message) for every name in recipe data that points at nothing.

    Works on plain (even partly invalid) recipe data, so a loader can report these alongside
    type errors elsewhere in the same recipe.
    """
    out: list[tuple[str, str]] = []

    def names(key: str) -> list[str]:
        value = data.get(key)
        return list(value) if isinstance(value, dict) else []

    def check(path: str, name: Any, valid: list[str], what: str) -> None:
        if isinstance(name, str) and name not in valid:
            out.append((path, f"unknown {what} {name!r}; defined: {', '.join(valid)}"))

    teachers, heads, tasks = names("teachers"), names("heads"), names("tasks")
    for tname, task in _mapping(data.get("tasks")).items():
        task = _mapping(task)
        check(f"tasks.{tname}.teacher", task.get("teacher"), teachers, "teacher")
        check(f"tasks.{tname}.head", task.get("head"), heads, "head")
    groups = [BACKBONE, *heads]
    stages = data.get("stages")
    for i, stage in enumerate(stages if isinstance(stages, list) else []):
        stage = _mapping(stage)
        for j, tname in enumerate(_list(stage.get("tasks"))):
            check(f"stages.{i}.tasks.{j}", tname, tasks, "task")
        for j, group in enumerate(_list(stage.get("train"))):
            check(f"stages.{i}.train.{j}", group, groups, "parameter group")
        for group in _mapping(stage.get("lr_mult")):
            check(f"stages.{i}.lr_mult.{group}", group, groups, "parameter group")
        for tname in _mapping(stage.get("resolution")):
            check(f"stages.{i}.resolution.{tname}", tname, tasks, "task")
    evaluation = _mapping(data.get("eval"))
    for role in ("clip_teacher", "sam_teacher"):
        check(f"eval.{role}", evaluation.get(role), teachers, "teacher")
    for role in ("clip_head", "sam_head"):
        check(f"eval.{role}", evaluation.get(role), heads, "head")
    toy = _mapping(data.get("toy"))
    for role in ("sam_teacher", "clip_teacher"):
        check(f"toy.{role}", toy.get(role), teachers, "teacher")
    return out


def _mapping(value: Any) -> dict:
    return value if isinstance(value, dict) else {}


def _list(value: Any) -> list:
    return value if isinstance(value, list) else []


def task_load_resolution(recipe: Recipe, task_name: str) -> int:
    """The largest resolution any stage asks of a task: its data is loaded at this size."""
    sizes = list(recipe.tasks[task_name].resolutions())
    for stage in recipe.stages:
        override = stage.resolution.get(task_name)
        if override is not None:
            sizes += override if isinstance(override, list) else [override]
    return max(sizes)


def task_of_head(tasks: Mapping[str, TaskSpec], head: str) -> str | None:
    """The name of the first task (recipe order) whose head is ``head``, if any."""
    return next((name for name, task in tasks.items() if task.head == head), None)
