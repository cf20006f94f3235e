"""Build every component a recipe names: teachers, the merged model (student + heads), tasks.

What a task reads in place of its teacher (a targets cache) is not built here: the caller opens
it and hands it in as the task's :class:`TargetSource`.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from mergekit_vision.contracts import (
    HEADS,
    LOSSES,
    STUDENTS,
    TEACHERS,
    Head,
    Loss,
    Prompts,
    Student,
    TargetSpec,
    Teacher,
)
from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.views import stable_seed, with_views
from mergekit_vision.engine.named_weights import uncached_weights
from mergekit_vision.errors import BuildError, Issue
from mergekit_vision.recipe.resolution import resolution_sides
from mergekit_vision.recipe.schema import (
    BACKBONE,
    DatasetSpec,
    Recipe,
    TaskSpec,
    task_load_resolution,
)
from mergekit_vision.sam.prompts import PromptSampler, PromptSamplerParams
from mergekit_vision.strategies.normalization.base import NORMALIZATION, TargetNormalizer
from mergekit_vision.strategies.upsampling.base import UPSAMPLING, TeacherUpsampler
from mergekit_vision.students.lora import apply_lora


class MergedModel(nn.Module):
    """The trained artefact: one student backbone and one head per teacher target."""

    def __init__(
        self,
        *,
        student: Student,
        heads: dict[str, Head],
        normalizers: dict[str, TargetNormalizer] | None = None,
    ):
        """
        Args:
            student: the backbone.
            heads: one head per teacher target, by recipe name.
            normalizers: per task, the teacher-target normalization its head predicts in.
        """
        super().__init__()
        self.student = student
        self.heads = nn.ModuleDict(heads)
        self.normalizers = nn.ModuleDict(normalizers or {})
        # Callers that never name blocks (evaluation, export) still hand each head its own.
        student.returned_blocks = tuple(
            sorted({i for h in heads.values() for i in getattr(h, "student_blocks", ())})
        )

    def parameter_groups(self) -> dict[str, list[nn.Parameter]]:
        """Named parameter groups a stage can train: ``backbone`` and each head by name."""
        groups = {BACKBONE: list(self.student.parameters())}
        groups.update({name: list(head.parameters()) for name, head in self.heads.items()})
        return groups


class TargetSource(Protocol):
    """Where a task reads the prompts and teacher targets of its keyed sample views (batches with
    ``"view"``, see :mod:`mergekit_vision.data.views`) instead of running its teacher, e.g. the
    targets cache (:class:`mergekit_vision.data.targets_cache.reader.CachedTargets`).

    Opened by whoever builds the components (``vmerge run``, the tools) and handed to
    :func:`build_components`; the engine knows no more of it than these methods.
    """

    def check_dataset(self, dataset: Any) -> None:
        """Raise a :class:`~mergekit_vision.errors.BuildError` if this source cannot serve the
        task's (built) ``dataset``."""

    def prompts(self, batch: dict[str, Any], images: Tensor) -> Prompts:
        """The prompts of the batch's views at ``images``' resolution (``[B, 3, R, R]``)."""

    def target(self, batch: dict[str, Any], images: Tensor) -> Tensor:
        """The teacher targets ``[B, ...]`` (float32, on ``images``' device) of the batch's
        views."""


@dataclass
class BuiltTask:
    """One task of the recipe, built: its teacher, loss, data, prompt sampling and, when handed
    one, the target source read for keyed views."""

    name: str
    spec: TaskSpec
    teacher: Teacher
    loss: Loss
    dataset: Any
    heldout: Any
    prompt_sampler: PromptSampler | None
    prompt_source: str
    has_masks: bool
    # Read in place of the teacher for keyed views when set.
    targets: TargetSource | None = None
    # Makes the dense target on a finer grid than the teacher's (recipe: teacher_upsampler).
    upsampler: TeacherUpsampler | None = None


@dataclass
class Components:
    """Everything a recipe names, built: the frozen teachers, the merged model being trained,
    the tasks, and the device they live on. What the engine, eval and the tools work on."""

    recipe: Recipe
    teachers: dict[str, Teacher]
    model: MergedModel
    tasks: dict[str, BuiltTask]
    device: torch.device


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def missing_paths(recipe: Recipe, *, weight_names: bool = True) -> list[Issue]:
    """Every checkpoint or data path the recipe names that does not exist (checked before work),
    and, with ``weight_names``, every weights name the local cache lacks."""
    issues: list[Issue] = []
    for name, spec in recipe.teachers.items():
        cls = TEACHERS.get(spec.type)
        named = cls.weight_names(spec.params)
        for field, path in cls.checkpoint_fields(spec.params).items():
            where = f"teachers.{name}.params.{field}"
            if field in named:
                continue  # a name, checked against the cache below
            if path is None:
                issues.append(
                    Issue(
                        where, "no checkpoint given; set it to a local file (or name the weights)"
                    )
                )
            elif not Path(path).is_file():
                issues.append(Issue(where, f"checkpoint file {str(path)!r} does not exist"))
    for name, task in recipe.tasks.items():
        cls = DATASETS.get(task.data.type)
        params = task.data.params
        for field, path in cls.path_fields(params).items():
            if not Path(path).exists():
                where = f"tasks.{name}.data.params.{field}"
                issues.append(Issue(where, f"path {str(path)!r} does not exist"))
    return issues + (uncached_weights(recipe) if weight_names else [])


def build_components(
    recipe: Recipe,
    *,
    allow_random_init: bool = False,
    target_sources: Mapping[str, TargetSource] | None = None,
) -> Components:
    """Build the recipe's teachers, merged model and tasks.

    Args:
        allow_random_init: let teachers without a checkpoint start from random weights.
        target_sources: per task name, what its keyed views' targets are read from instead of
            its teacher (e.g. its targets cache); tasks not named run their teacher.
    """
    sources = dict(target_sources or {})
    device = resolve_device(recipe.device)
    torch.manual_seed(recipe.seed)  # freshly initialised weights (heads) depend on the seed only
    teachers: dict[str, Teacher] = {}
    for name, spec in recipe.teachers.items():
        with _blame(f"teachers.{name}"):
            teacher = TEACHERS.get(spec.type).build(
                spec.params, allow_random_init=allow_random_init
            )
        teachers[name] = teacher.freeze().to(device)
    with _blame("student"):
        student = STUDENTS.get(recipe.student.type).build(recipe.student.params, teachers=teachers)
    heads = {}
    for name, spec in recipe.heads.items():
        with _blame(f"heads.{name}"):
            heads[name] = HEADS.get(spec.type).build(
                spec.params, student=student, teachers=teachers
            )
    lora = recipe.student.lora
    if lora is not None:  # after the heads: one that copies a student block copies it plain
        with _blame("student.lora"):
            apply_lora(student, rank=lora.rank, alpha=lora.alpha, targets=lora.targets)
    tasks = {}
    for name, spec in recipe.tasks.items():
        with _blame(f"tasks.{name}"):
            tasks[name] = _build_task(name, spec, recipe, teachers, sources.get(name))
    normalizers = {}
    for name, spec in recipe.tasks.items():
        if spec.normalize is not None:
            with _blame(f"tasks.{name}.normalize"):
                normalizers[name] = _build_normalizer(spec, teachers[spec.teacher])
    model = MergedModel(student=student, heads=heads, normalizers=normalizers).to(device)
    return Components(recipe=recipe, teachers=teachers, model=model, tasks=tasks, device=device)


@contextmanager
def _blame(where: str) -> Iterator[None]:
    """Turn a plugin's error about its input into one that names the recipe field."""
    try:
        yield
    except (ValueError, FileNotFoundError, KeyError) as err:
        if isinstance(err, BuildError):
            raise
        raise BuildError(where, err) from err


def _build_normalizer(spec: TaskSpec, teacher: Teacher) -> TargetNormalizer:
    width = teacher.target_specs()[spec.target].shape[1]  # the feature axis (TargetSpec)
    if not isinstance(width, int):
        raise ValueError(f"target {spec.target!r} has no fixed feature width to normalize")
    assert spec.normalize is not None
    cls = NORMALIZATION.get(spec.normalize.type)
    return cls.build(spec.normalize.params, dim=width)


def _build_dataset(spec: DatasetSpec, task: TaskSpec, recipe: Recipe, name: str) -> Any:
    return DATASETS.get(spec.type).build(
        spec.params,
        resolution=task_load_resolution(recipe, name),
        resize=task.resize,
        seed=recipe.seed,
        max_masks=task.max_masks,
    )


def _build_task(
    name: str, spec: TaskSpec, recipe: Recipe, teachers: dict, source: TargetSource | None
) -> BuiltTask:
    teacher = teachers[spec.teacher]
    targets = teacher.target_specs()
    if spec.target not in targets:
        raise ValueError(
            f"target: teacher {spec.teacher!r} has no target {spec.target!r}; "
            f"it produces: {', '.join(targets)}"
        )
    dataset_cls = DATASETS.get(spec.data.type)
    dataset = _build_dataset(spec.data, spec, recipe, name)
    views = spec.sample_views()
    if views is not None:
        dataset = with_views(
            dataset, views=views, augment=spec.augment, seed=recipe.seed, task=name
        )
    heldout = None if spec.heldout is None else _build_dataset(spec.heldout, spec, recipe, name)
    sampler, prompt_source = None, "none"
    if targets[spec.target].needs_prompts:
        prompts = spec.prompts or PromptSamplerParams()
        sampler = PromptSampler.build(prompts)
        prompt_source = prompts.source
        if prompt_source == "ground_truth" and not dataset_cls.has_masks:
            raise ValueError(
                f"prompts.source: 'ground_truth' needs a dataset with masks, but "
                f"{spec.data.type!r} has none; use 'auto' or 'teacher'"
            )
        if prompt_source == "auto":
            prompt_source = "ground_truth" if dataset_cls.has_masks else "teacher"
    loss = LOSSES.get(spec.loss.type).build(spec.loss.params)
    if source is not None:
        source.check_dataset(dataset)
    upsampler = None
    if spec.teacher_upsampler is not None:
        with _blame(f"tasks.{name}.teacher_upsampler"):
            upsampler = _build_upsampler(name, spec, recipe, targets[spec.target])
    return BuiltTask(
        name=name,
        spec=spec,
        teacher=teacher,
        loss=loss,
        dataset=dataset,
        heldout=heldout,
        prompt_sampler=sampler,
        prompt_source=prompt_source,
        has_masks=dataset_cls.has_masks,
        targets=source,
        upsampler=upsampler,
    )


def _build_upsampler(
    name: str, spec: TaskSpec, recipe: Recipe, target: TargetSpec
) -> TeacherUpsampler:
    shape = target.shape
    if target.needs_prompts or len(shape) != 4 or not isinstance(shape[1], int):
        raise ValueError(
            f"target {spec.target!r} has shape {shape}; an upsampler needs a feature map "
            "(B, C, h, w) with a fixed C"
        )
    height, width = shape[2], shape[3]
    grid = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    assert spec.teacher_upsampler is not None
    upsampler = UPSAMPLING.get(spec.teacher_upsampler.type).build(
        spec.teacher_upsampler.params,
        dim=shape[1],
        grid=grid,
        seed=stable_seed(recipe.seed, "teacher_upsampler", name) % 2**31,
    )
    overrides = [stage.resolution[name] for stage in recipe.stages if name in stage.resolution]
    for side in sorted({*spec.resolutions(), *(s for r in overrides for s in resolution_sides(r))}):
        upsampler.check_side(side)
    return upsampler.to(resolve_device(recipe.device))
