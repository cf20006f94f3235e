"""The recipe schema: frozen pydantic models that mirror the YAML one-to-one.

A recipe names its plugins by ``type`` and gives their ``params``; each entry holds its plugin's
typed ``Params`` once validated (:mod:`.specs`), defaults filled in, so the recipe saved beside a
run is fully resolved. Sections owned by an app (the toy world's ``toy:``) are validated by that
app's ``Params`` (:mod:`.app`). Importing this module loads pydantic and the leaves only.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, model_validator

from mergekit_vision.recipe.app import APPS, validate_app_sections, with_app_schemas
from mergekit_vision.recipe.eval_section import EvalSpec
from mergekit_vision.recipe.ranges import (
    MAX_BATCH,
    MAX_COUNT,
    MAX_EPOCHS,
    MAX_WORKERS,
    Beta,
    Count,
    Seed,
)
from mergekit_vision.recipe.references import declared_references
from mergekit_vision.recipe.resolution import TaskResolution, resolution_sides
from mergekit_vision.recipe.specs import (
    ConflictSpec,
    DatasetSpec,
    Frozen,
    HeadSpec,
    LossSpec,
    NormalizationSpec,
    ReplaySpec,
    StudentSpec,
    TeacherSpec,
    TrackerSpec,
    UpsamplingSpec,
    WeightingSpec,
    plugin_specs,
)
from mergekit_vision.recipe.task_params import AugmentSpec, PromptSamplerParams
from mergekit_vision.registry import ALL_REGISTRIES, PluginParams, UnknownPluginError

BACKBONE = "backbone"  # the parameter-group name of the student backbone


class TaskSpec(Frozen):
    """One distillation task: a teacher's target reproduced by a head from the shared backbone."""

    teacher: str
    head: str
    target: str
    loss: LossSpec
    data: DatasetSpec
    batch_size: int = Field(ge=1, le=MAX_BATCH)
    resolution: TaskResolution = Field(
        description="side in px; a list cycles per step; {low, high, p_high} draws per step"
    )
    resize: Literal["pad", "crop"] = "crop"
    weight: float = Field(1.0, ge=0, description="the task's loss weight (SAM-CLIP's lambda)")
    prompts: PromptSamplerParams | None = None
    max_masks: int = Field(64, ge=1, le=MAX_COUNT)
    num_workers: int = Field(0, ge=0, le=MAX_WORKERS)
    normalize: NormalizationSpec | None = Field(
        None, description="teacher-target normalization (standardize, phi_s)"
    )
    heldout: DatasetSpec | None = Field(
        None,
        description="held-out data for the forgetting signal (default: the first "
        "training batches, a fixed in-sample set)",
    )
    views: int | None = Field(
        None,
        ge=1,
        le=MAX_COUNT,
        description="augmentation views per sample, view = epoch mod views",
    )
    augment: AugmentSpec | None = None
    targets_cache: str | None = Field(
        None, description="folder written by `vmerge cache`: targets read instead of the teacher"
    )
    teacher_upsampler: UpsamplingSpec | None = Field(
        None,
        description="the dense target on a finer grid than the teacher's (tile_stitch, learned)",
    )

    @model_validator(mode="after")
    def _upsampler_runs_the_teacher(self) -> TaskSpec:
        if self.teacher_upsampler is not None and self.targets_cache is not None:
            raise ValueError(
                "teacher_upsampler runs the teacher, but targets_cache reads its targets instead; "
                "drop one of them"
            )
        return self

    def resolutions(self) -> list[int]:
        return resolution_sides(self.resolution)

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

    every: Count = 50
    batches: Count = 2
    early_stopping: bool = False
    patience: Count = 3
    tolerance: float = Field(0.05, ge=0)


class StageSpec(Frozen):
    """A training stage: which tasks run, which parameter groups train, and at what LR."""

    name: str
    steps: Count | None = None
    epochs: float | None = Field(
        None, gt=0, le=MAX_EPOCHS, description="epochs over the first task's data"
    )
    tasks: list[str] = Field(min_length=1)
    train: list[str] = Field(min_length=1, description="'backbone' and/or head names")
    lr: float = Field(gt=0)
    lr_mult: dict[str, Annotated[float, Field(ge=0)]] = Field(default_factory=dict)
    resolution: dict[str, TaskResolution] = Field(
        default_factory=dict, description="per-task resolution override for this stage"
    )
    # Built when a stage omits them, not on import: building an entry looks its plugin up.
    replay: ReplaySpec = Field(default_factory=lambda: ReplaySpec(type="fixed_ratio"))
    conflict: ConflictSpec = Field(default_factory=lambda: ConflictSpec(type="sum"))
    weighting: WeightingSpec = Field(default_factory=lambda: WeightingSpec(type="static"))
    monitor: MonitorSpec | None = None
    accumulate: int = Field(
        1, ge=1, le=MAX_COUNT, description="micro-batches summed per task into one optimiser step"
    )

    @model_validator(mode="after")
    def _one_length(self) -> StageSpec:
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give exactly one of 'steps' or 'epochs'")
        return self


class OptimizerSpec(Frozen):
    type: Literal["adamw"] = "adamw"
    weight_decay: float = Field(0.05, ge=0)
    betas: tuple[Beta, Beta] = (0.9, 0.999)
    eps: float = Field(1e-8, ge=0)
    grad_clip: float | None = Field(None, gt=0)
    fused: bool | None = Field(
        None, description="fused AdamW kernel; None: wherever the parameters' device has one"
    )
    max_nonfinite_steps: int = Field(
        10,
        ge=1,
        description="a step whose loss is NaN or inf is skipped; this many in a row stop the run "
        "(its last checkpoint kept)",
    )


class ScheduleSpec(Frozen):
    """LR schedule applied within each stage (restarted at every stage)."""

    type: Literal["cosine", "constant"] = "cosine"
    warmup_steps: int = Field(0, ge=0, le=MAX_COUNT)
    min_lr_ratio: float = Field(0.0, ge=0, le=1)


class LoggingSpec(Frozen):
    """Where a run's metrics go: ``metrics.jsonl`` in the run folder, every line of it also to
    each of ``trackers`` (``tensorboard``, ``wandb``, ``mlflow``; ``vmerge plugins trackers``)."""

    every: int = Field(1, ge=1, le=MAX_COUNT, description="write metrics.jsonl every N steps")
    progress: bool = True
    trackers: list[TrackerSpec] = Field(
        default_factory=list,
        description="experiment trackers that receive every metrics line, the resolved recipe "
        "and the final evaluation; a name or {type, params}",
    )


class CheckpointSpec(Frozen):
    every: Count = 500
    keep: int = Field(3, ge=1, le=MAX_COUNT, description="step-<N> folders kept besides 'last'")


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
    batch_size: int = Field(2, ge=1, le=MAX_BATCH)
    samples: Count = 8


class DataSpec(Frozen):
    """How training treats its data files: a sample that cannot be decoded (a broken image, mask
    or annotation) is skipped and logged to ``skipped.jsonl``; the run stops only when a task
    skips more than ``max_skip_fraction`` of the samples it reads (judged once it has read
    ``10 / max_skip_fraction`` samples or one pass over its data, whichever is fewer)."""

    max_skip_fraction: float = Field(
        0.01,
        ge=0,
        le=1,
        description="the largest share of a task's samples read that may be undecodable and "
        "skipped before the run stops (0: stop at the first)",
    )


class Recipe(Frozen):
    """A whole recipe, mirroring the YAML; frozen, every name it uses checked to exist.

    Top-level keys besides these fields are app sections: each names a registered app
    (:data:`~mergekit_vision.registry.APPS`) and holds that app's ``Params``, read as an attribute
    (``recipe.toy``); every app's section is there, None where the recipe has none.
    """

    model_config = ConfigDict(extra="allow", frozen=True)

    name: str
    seed: Seed = 0
    device: Literal["auto", "cpu", "cuda"] = "auto"
    init_from: Path | None = Field(
        None,
        description="an earlier run's folder (vmerge run's --output): its student backbone and "
        "the heads of the same names start this run (step-by-step merging; a resume loads its "
        "own checkpoint instead)",
    )
    teachers: dict[str, TeacherSpec] = Field(min_length=1)
    student: StudentSpec
    heads: dict[str, HeadSpec] = Field(min_length=1)
    tasks: dict[str, TaskSpec] = Field(min_length=1)
    stages: list[StageSpec] = Field(min_length=1)
    optimizer: OptimizerSpec = OptimizerSpec()
    schedule: ScheduleSpec = ScheduleSpec()
    logging: LoggingSpec = LoggingSpec()
    checkpointing: CheckpointSpec = CheckpointSpec()
    dry_run: DryRunSpec = DryRunSpec()
    performance: PerformanceSpec = PerformanceSpec()
    distributed: DistributedSpec = DistributedSpec()
    data: DataSpec = DataSpec()
    eval: EvalSpec | None = None

    @model_validator(mode="before")
    @classmethod
    def _app_sections(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        unknown = [key for key in data if key not in cls.model_fields and key not in APPS]
        if unknown:
            raise ValueError(unknown_key_message(unknown[0]))
        return {**data, **validate_app_sections(data)}

    def app_sections(self) -> dict[str, PluginParams]:
        """The app sections this recipe has, by app name (``{"toy": ToySpec(...)}``)."""
        extra = self.model_extra or {}
        return {name: value for name, value in extra.items() if value is not None}

    @model_validator(mode="after")
    def _references_exist(self) -> Recipe:
        problems = dangling_references(self.model_dump())
        if problems:
            raise ValueError("; ".join(f"{path}: {msg}" for path, msg in problems))
        return self


def recipe_json_schema() -> dict[str, Any]:
    """The recipe's JSON Schema (for editor completion), the registered apps' sections included."""
    return with_app_schemas(Recipe.model_json_schema())


def unknown_key_message(key: str) -> str:
    valid = [*Recipe.model_fields, *APPS.names()]
    return f"unknown key {key!r}; valid keys here: {', '.join(valid)}"


def dangling_references(data: Mapping[str, Any]) -> list[tuple[str, str]]:
    """(dotted path, message) for every name in recipe data that points at nothing.

    Works on plain (even partly invalid) recipe data, where plugin params and app sections may
    already be typed, so a loader can report these alongside type errors elsewhere in the same
    recipe. Besides the schema's own names, it checks every name a plugin's or app's ``Params``
    declares (:class:`~mergekit_vision.registry.RefersTo`).
    """
    out: list[tuple[str, str]] = []

    def names(key: str) -> list[str]:
        value = data.get(key)
        return list(value) if isinstance(value, dict) else []

    def check(path: str, name: Any, valid: list[str], what: str) -> None:
        if isinstance(name, str) and name not in valid:
            defined = ", ".join(map(str, valid))  # a YAML key may be a number
            out.append((path, f"unknown {what} {name!r}; defined: {defined}"))

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
    for section, valid in (("teachers", teachers), ("heads", heads)):
        for j, name in enumerate(_list(evaluation.get(section))):
            check(f"eval.{section}.{j}", name, valid, section.removesuffix("s"))
    defined = {"teachers": teachers, "heads": heads, "tasks": tasks}
    for path, section, name in _declared_references(data):
        check(path, name, defined[section], section.removesuffix("s"))
    return out


def _declared_references(data: Mapping[str, Any]) -> list[tuple[str, str, Any]]:
    """Names given by plugin params, then by app sections (in recipe order)."""
    found = []
    for spec_cls, path, spec in plugin_specs(Recipe, dict(data)):
        try:
            model = ALL_REGISTRIES[spec_cls.kind].params_model(spec["type"])
        except UnknownPluginError:
            continue  # reported as such
        found += declared_references(model, spec.get("params"), f"{path}.params")
    for name, section in data.items():
        if name not in Recipe.model_fields and name in APPS:
            found += declared_references(APPS.params_model(name), section, name)
    return found


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
            sizes += resolution_sides(override)
    return max(sizes)


def task_of_head(tasks: Mapping[str, TaskSpec], head: str) -> str | None:
    """The name of the first task (recipe order) whose head is ``head``, if any."""
    return next((name for name, task in tasks.items() if task.head == head), None)
