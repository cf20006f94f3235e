"""Training throughput of a task with online teachers vs from its targets cache, side by side.

Both variants train the same keyed views (same data pipeline, same student, same stage); one runs
the teacher each step, the other reads the cache. As in :mod:`mergekit_vision.tools.bench` they are
timed interleaved in one process (a step of each per round), so machine drift hits both alike,
and the speed-up is the median over rounds of the online / cached step-time ratio. A step is the
engine's for one task (next batch, targets, student and head, backward, optimiser step) without
the multi-task strategies, whose cost is the same in both variants.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from mergekit_vision.engine.build import Components, build_components, missing_paths
from mergekit_vision.engine.stage import build_stage
from mergekit_vision.engine.step import task_loss
from mergekit_vision.engine.streams import BatchStream
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.schema import Recipe, StageSpec
from mergekit_vision.tools.cache_writer import build_cache


def _with_task(recipe: Recipe, task: str, **fields: Any) -> Recipe:
    data = recipe.model_dump(mode="json")
    data["tasks"][task].update(fields)
    return Recipe.model_validate(data)


def bench_cached_targets(
    recipe_path: str | Path,
    *,
    task: str = "clip",
    overrides: list[str] | None = None,
    steps: int = 20,
    warmup: int = 3,
    cache_dir: Path | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Images/s of ``task`` trained online vs from its cache, in every stage that trains it.

    The cache is built first (in ``cache_dir``, else a temporary folder; an existing cache of the
    same settings there is reused). Missing teacher checkpoints become random weights (reported).
    """
    recipe = load_recipe(recipe_path, overrides)
    if task not in recipe.tasks:
        raise RecipeError(str(recipe_path), [Issue("--task", f"no task {task!r} in the recipe")])
    stages = [s for s in recipe.stages if task in s.tasks]
    random_weights = bool(missing_paths(recipe))
    online = _with_task(
        recipe, task, views=recipe.tasks[task].sample_views() or 1, targets_cache=None
    )
    folder = cache_dir or Path(tempfile.mkdtemp(prefix="vmerge-bench-cache-")) / task
    report = build_cache(online, task, folder, allow_random_init=random_weights, progress=progress)
    variants = {"online": online, "cached": _with_task(online, task, targets_cache=str(folder))}
    built = {
        name: build_components(variant, allow_random_init=random_weights)
        for name, variant in variants.items()
    }
    # What each model trains by design, read once: a stage's build freezes the parts it does not
    # train, and the next stage must not mistake that for design (the engine reads it likewise).
    by_design = {
        name: {id(p): p.requires_grad for p in c.model.parameters()} for name, c in built.items()
    }
    results = {}
    for stage_spec in stages:
        spec = stage_spec.model_copy(update={"tasks": [task]})
        results[stage_spec.name] = _time_stage(
            built, by_design, spec, task, steps=steps, warmup=warmup
        )
    return {
        "task": task,
        "batch_size": recipe.tasks[task].batch_size,
        "steps": steps,
        "random_weights": random_weights,
        "cache": {"folder": str(folder), "samples": report.samples, "seconds": report.seconds},
        "stages": results,
    }


def _time_stage(
    built: dict[str, Components],
    by_design: dict[str, dict[int, bool]],
    spec: StageSpec,
    task: str,
    *,
    steps: int,
    warmup: int,
) -> dict[str, Any]:
    """Median step time of each variant: next batch, targets, student, backward, optimiser."""
    steppers = {name: _stepper(c, spec, task, by_design[name]) for name, c in built.items()}
    times: dict[str, list[float]] = {name: [] for name in built}
    for round_index in range(warmup + steps):
        for name, step in steppers.items():
            started = time.perf_counter()
            step(round_index)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    batch = built["online"].recipe.tasks[task].batch_size
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = [o / c for o, c in zip(times["online"], times["cached"], strict=True)]
    return {
        "median_step_s": median,
        "images_per_s": {name: batch / t for name, t in median.items()},
        "speedup": statistics.median(ratios),
    }


def _stepper(
    components: Components, spec: StageSpec, task: str, trainable_by_design: dict[int, bool]
) -> Callable[[int], None]:
    """One training step of ``task`` alone as the engine runs it (single process)."""
    stage = build_stage(components, spec, trainable_by_design=trainable_by_design)
    built = components.tasks[task]
    stream = BatchStream(
        built.dataset,
        batch_size=built.spec.batch_size,
        seed=components.recipe.seed,
        num_workers=built.spec.num_workers,
    )
    sizes = spec.resolution.get(task, built.spec.resolution)
    sizes = sizes if isinstance(sizes, list) else [sizes]

    def step(index: int) -> None:
        stage.optimizer.zero_grad(set_to_none=True)
        loss = task_loss(
            built,
            stream.next(),
            model=components.model,
            resolution=sizes[index % len(sizes)],
            generator=torch.Generator().manual_seed(index),
            device=components.device,
        )
        loss.backward()
        stage.optimizer.step()

    return step
