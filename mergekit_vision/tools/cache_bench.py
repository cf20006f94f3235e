"""Training throughput of a task with online teachers vs from its targets cache, side by side.

Both variants train the same keyed views (same data pipeline, same student, same stage); one runs
the teacher each step, the other reads the cache. As in :mod:`mergekit_vision.tools.bench` they are
timed interleaved in one process (a step of each per round), so machine drift hits both alike,
and the speed-up is the median over rounds of the online / cached step-time ratio. A step is the
engine's training step (:meth:`~mergekit_vision.engine.loop.Engine.step`) of the stage with this
task alone (next batch, targets, student and head, backward, optimiser step): the other tasks'
cost is the same in both variants.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergekit_vision.data.targets_cache.reader import open_target_sources
from mergekit_vision.engine.build import build_components, missing_paths
from mergekit_vision.engine.loop import Engine
from mergekit_vision.engine.run_folder import TrainState
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
    # One engine per variant, its stages built one after the other on the same model.
    engines = {
        name: Engine(
            build_components(
                variant,
                allow_random_init=random_weights,
                target_sources=open_target_sources(variant),
            )
        )
        for name, variant in variants.items()
    }
    results = {}
    for stage_spec in stages:
        spec = stage_spec.model_copy(update={"tasks": [task]})
        results[stage_spec.name] = _time_stage(engines, spec, task, steps=steps, warmup=warmup)
    return {
        "task": task,
        "batch_size": recipe.tasks[task].batch_size,
        "steps": steps,
        "random_weights": random_weights,
        "cache": {"folder": str(folder), "samples": report.samples, "seconds": report.seconds},
        "stages": results,
    }


def _time_stage(
    engines: dict[str, Engine], spec: StageSpec, task: str, *, steps: int, warmup: int
) -> dict[str, Any]:
    """Median step time of each variant: next batch, targets, student, backward, optimiser."""
    steppers = {name: _stepper(engine, spec) for name, engine in engines.items()}
    times: dict[str, list[float]] = {name: [] for name in engines}
    for round_index in range(warmup + steps):
        for name, step in steppers.items():
            started = time.perf_counter()
            step(round_index)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    batch = engines["online"].recipe.tasks[task].batch_size
    median = {name: statistics.median(t) for name, t in times.items()}
    ratios = [o / c for o, c in zip(times["online"], times["cached"], strict=True)]
    return {
        "median_step_s": median,
        "images_per_s": {name: batch / t for name, t in median.items()},
        "speedup": statistics.median(ratios),
    }


def _stepper(engine: Engine, spec: StageSpec) -> Callable[[int], None]:
    """Step ``index`` of stage ``spec`` as the engine trains it (single process)."""
    stage = engine.build_stage(spec)

    def step(index: int) -> None:
        engine.step(stage, TrainState(global_step=index, step_in_stage=index))

    return step
