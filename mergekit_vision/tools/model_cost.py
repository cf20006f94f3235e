"""``vmerge profile``: what the merged model costs against the teachers it replaces.

For every task, at each of its resolutions, one image goes through (a) the task's teacher, for
that task's target, and (b) the merged model's student and the task's head. Parameters are those
of the modules the forward actually ran (a CLIP teacher's text tower does not count towards its
image embedding); FLOPs are torch's FLOP counter over the forward (matmuls and convolutions;
elementwise work is not counted). The totals compare running every teacher separately, once per
side it sees (its own input side, or the task's resolution for a teacher without one) at its
costliest use there (two targets of one teacher, such as SAM's embedding and its mask logits,
come from one pass), with running the shared student once per distinct resolution plus every
head.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from mergekit_vision.contracts import Prompts
from mergekit_vision.engine.build import BuiltTask, Components, build_components, missing_paths
from mergekit_vision.recipe.io import load_recipe


def profile_recipe(recipe_path: Any, *, overrides: list[str] | None = None) -> dict[str, Any]:
    """Parameters and forward FLOPs per image of teachers vs the merged model, per task."""
    recipe = load_recipe(recipe_path, overrides)
    random_weights = bool(missing_paths(recipe))
    components = build_components(recipe, allow_random_init=random_weights)
    components.model.eval()
    rows = []
    student_runs: dict[int, dict[str, float]] = {}
    for name, task in components.tasks.items():
        for resolution in task.spec.resolutions():
            row = _profile_task(components, task, resolution)
            student_runs[resolution] = row.pop("_student")
            rows.append({"task": name, **row})
    student_params = _count(components.model.student.parameters())
    teacher_flops = _teacher_total(rows)
    merged_flops = sum(s["gflops"] for s in student_runs.values()) + sum(
        row["head_gflops"] for row in rows
    )
    return {
        "recipe": recipe.name,
        "random_weights": random_weights,
        "tasks": rows,
        "student_params_m": student_params / 1e6,
        "merged_params_m": _count(components.model.parameters()) / 1e6,
        "teachers_params_m": sum(_count(t.parameters()) for t in components.teachers.values())
        / 1e6,
        "teachers_used_params_m": _used_teacher_params(rows) / 1e6,
        "total_gflops": {"teachers": teacher_flops, "merged": merged_flops},
        "merged_flops_ratio": merged_flops / teacher_flops if teacher_flops else None,
    }


def _profile_task(components: Components, task: BuiltTask, resolution: int) -> dict[str, Any]:
    generator = torch.Generator().manual_seed(components.recipe.seed)
    device = components.device
    images = torch.rand(1, 3, resolution, resolution, generator=generator).to(device)
    prompts = _prompts(task, resolution, generator)
    prompts = prompts.to(device) if prompts is not None else None
    target = task.spec.target
    model = components.model
    with torch.no_grad():
        teacher_flops, teacher_used = _measure(
            lambda: task.teacher(images, targets=[target], prompts=prompts), task.teacher
        )
        features = model.student(images)
        student_flops, _ = _measure(lambda: model.student(images), model.student)
        head = model.heads[task.spec.head]
        head_flops, _ = _measure(lambda: head(features, prompts=prompts), head)
    return {
        "teacher": task.spec.teacher,
        "teacher_side": task.teacher.input_size or resolution,
        "head": task.spec.head,
        "resolution": resolution,
        "teacher_params_m": teacher_used / 1e6,
        "teacher_gflops": teacher_flops / 1e9,
        "student_gflops": student_flops / 1e9,
        "head_params_m": _count(head.parameters()) / 1e6,
        "head_gflops": head_flops / 1e9,
        "merged_gflops": (student_flops + head_flops) / 1e9,
        "_student": {"gflops": student_flops / 1e9},
    }


def _prompts(task: BuiltTask, resolution: int, generator: torch.Generator) -> Prompts | None:
    """Random point prompts for a promptable target (the same prompts for teacher and head)."""
    if task.prompt_sampler is None:
        return None
    return task.prompt_sampler.random_points(1, image_size=resolution, generator=generator)


def _measure(fn: Callable[[], Any], owner: nn.Module) -> tuple[int, int]:
    """FLOPs of ``fn()`` and the parameters of ``owner``'s modules that it ran."""
    with _modules_called() as called, FlopCounterMode(display=False) as counter:
        fn()
    mine = {id(m) for m in owner.modules()}
    seen: set[int] = set()
    used = 0
    for module in called:
        if id(module) not in mine:
            continue
        for parameter in module.parameters(recurse=False):
            if id(parameter) not in seen:
                seen.add(id(parameter))
                used += parameter.numel()
    return counter.get_total_flops(), used


@contextmanager
def _modules_called() -> Iterator[list[nn.Module]]:
    called: list[nn.Module] = []
    handle = nn.modules.module.register_module_forward_pre_hook(
        lambda module, args: called.append(module)
    )
    try:
        yield called
    finally:
        handle.remove()


def _teacher_total(rows: list[dict[str, Any]]) -> float:
    """GFLOPs of the teachers run separately: each teacher once per side it sees, its costliest
    use at that side."""
    best: dict[tuple[str, int], float] = {}
    for row in rows:
        key = (row["teacher"], row["teacher_side"])
        best[key] = max(best.get(key, 0.0), row["teacher_gflops"])
    return sum(best.values())


def _used_teacher_params(rows: list[dict[str, Any]]) -> float:
    """Teacher parameters used, each teacher counted once (its largest use)."""
    best: dict[str, float] = {}
    for row in rows:
        best[row["teacher"]] = max(best.get(row["teacher"], 0.0), row["teacher_params_m"] * 1e6)
    return sum(best.values())


def _count(parameters: Any) -> int:
    return sum(p.numel() for p in parameters)
