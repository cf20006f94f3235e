"""``vmerge bench``: training-step cost of strategy variants, measured side by side.

Machines drift (other jobs, turbo, thermal), so variants are timed interleaved in one process:
step 1 of every variant, then step 2 of every variant, ... and each is reported as a ratio to the
first variant over the same rounds. Weights do not matter for timing: missing teacher checkpoints
are replaced by random weights (said in the report).
"""

from __future__ import annotations

import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from mergekit_vision.builder import build_components, missing_paths
from mergekit_vision.engine import Engine, TrainState
from mergekit_vision.recipe import PluginSpec
from mergekit_vision.recipe_io import Issue, RecipeError, dump_recipe, load_recipe
from mergekit_vision.stage import build_stage


def bench_conflict(
    recipe_path: Path,
    *,
    strategies: list[str],
    overrides: list[str] | None = None,
    steps: int = 20,
    warmup: int = 3,
) -> dict[str, Any]:
    """Median step time of each conflict strategy on the recipe's first multi-task stage."""
    recipe = load_recipe(recipe_path, overrides)
    index = next((i for i, s in enumerate(recipe.stages) if len(s.tasks) > 1), None)
    if index is None:
        raise RecipeError(str(recipe_path), [Issue("stages", "no stage runs more than one task")])
    random_weights = bool(missing_paths(recipe))
    components = build_components(recipe, allow_random_init=random_weights)
    engine = Engine(
        components,
        output_dir=Path(tempfile.mkdtemp(prefix="vmerge-bench-")),
        recipe_yaml=dump_recipe(recipe),
    )
    stage_spec = recipe.stages[index]
    runs = {}
    for name in strategies:
        spec = stage_spec.model_copy(update={"conflict": PluginSpec(type=name)})
        runs[name] = build_stage(components, spec, trainable_by_design=engine._trainable_by_design)
    streams = engine._open_streams(TrainState())
    times: dict[str, list[float]] = {name: [] for name in strategies}
    for round_index in range(warmup + steps):
        for name, stage in runs.items():
            started = time.perf_counter()
            engine._step(stage, TrainState(global_step=round_index), streams)
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    base = strategies[0]
    ratios = {
        name: statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))
        for name in strategies
    }
    return {
        "stage": stage_spec.name,
        "steps": steps,
        "random_weights": random_weights,
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        "ratio_to_first": ratios,
    }
