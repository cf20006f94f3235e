"""``vmerge run`` as a library call: recipe -> components -> engine -> checkpoints and metrics."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mergekit_vision.contracts import TEACHERS
from mergekit_vision.data.targets_cache.reader import open_target_sources
from mergekit_vision.engine.build import Components, build_components, missing_paths
from mergekit_vision.engine.distributed import World, barrier, close_world, init_world
from mergekit_vision.engine.init_from import init_from_issues, start_from_earlier_run
from mergekit_vision.engine.loop import Engine, TrainState
from mergekit_vision.engine.named_weights import fetch_weights, recipe_weight_names
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.hub import cached
from mergekit_vision.recipe.app import APPS
from mergekit_vision.recipe.io import dump_recipe, load_recipe, set_dotted, validate_recipe
from mergekit_vision.recipe.schema import Recipe
from mergekit_vision.trackers.group import TrackerGroup, open_trackers


class MissingPathsError(RecipeError):
    """Checkpoint or data paths of a recipe that do not exist; raised before any work."""


@dataclass
class RunResult:
    output_dir: Path
    state: TrainState
    recipe: Recipe
    main_process: bool = True  # rank 0 under torchrun (the one that reports)


def dry_run_recipe(recipe: Recipe) -> Recipe:
    """The recipe shrunk for ``--dry-run``: synthetic data, small batches, one step per stage.

    The recipe's own ``dry_run.set`` overrides apply first (e.g. reduced resolutions); checkpoint
    files that do not exist and weights names the local cache lacks (a dry run downloads
    nothing) are dropped so those models start from random weights, target caches are ignored
    (the synthetic images are not in them), and target normalizers estimate from one batch.
    """
    data = recipe.model_dump(mode="json")
    for dotted, value in recipe.dry_run.set.items():
        set_dotted(data, dotted, value)
    for weights in recipe_weight_names(recipe):
        if cached(weights) is None:
            warnings.warn(
                f"dry run: {weights.where} {weights.name!r} is not in the local cache "
                f"({weights.source.folder}); using random weights (`vmerge fetch` downloads it)",
                stacklevel=2,
            )
            set_dotted(data, weights.where, None)
    for name, spec in recipe.teachers.items():
        fields = TEACHERS.get(spec.type).checkpoint_fields(spec.params)
        for field, path in fields.items():
            if path is not None and not Path(path).is_file():
                warnings.warn(
                    f"dry run: teachers.{name}.params.{field} {str(path)!r} does not exist; "
                    "using random weights",
                    stacklevel=2,
                )
                data["teachers"][name]["params"][field] = None
    for task in data["tasks"].values():
        task["data"] = {"type": "synthetic", "params": {"num_samples": recipe.dry_run.samples}}
        task["batch_size"] = recipe.dry_run.batch_size
        task["num_workers"] = 0
        task["targets_cache"] = None  # synthetic images are not in any cache: teachers run online
        if task.get("normalize"):  # one calibration batch: the wiring, not the statistics
            task["normalize"]["params"] = {**task["normalize"]["params"], "estimate_steps": 1}
        upsampler = task.get("teacher_upsampler")
        if upsampler and upsampler.get("type") == "learned":  # one fitting batch, likewise
            upsampler["params"] = {**(upsampler.get("params") or {}), "fit_steps": 1}
    for stage in data["stages"]:
        stage.update(steps=1, epochs=None)
    data["logging"]["every"] = 1
    data["checkpointing"]["every"] = 10**9
    return validate_recipe(data, source=f"{recipe.name} (dry run)")


def run_recipe(
    recipe_path: str | Path,
    *,
    overrides: list[str] | None = None,
    output: str | Path | None = None,
    max_steps: int | None = None,
    resume: bool = False,
    dry_run: bool = False,
    progress: bool = True,
) -> RunResult:
    """Train ``recipe_path``; under ``torchrun`` every rank calls this (see docs/distributed.md).

    A process group this call opens is closed when it returns.
    """
    recipe = load_recipe(recipe_path, overrides)
    output = Path(output) if output is not None else None
    opened = not _group_open()
    world = init_world(device=recipe.device)
    try:
        return _run(recipe, recipe_path, world, output, max_steps, resume, dry_run, progress)
    finally:
        if opened:
            close_world()


def _group_open() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _run(
    recipe: Recipe,
    recipe_path: str | Path,
    world: World,
    output: Path | None,
    max_steps: int | None,
    resume: bool,
    dry_run: bool,
    progress: bool,
) -> RunResult:
    if dry_run:
        recipe = dry_run_recipe(recipe)
        if output is None and world.distributed:
            issue = Issue("--output", "--dry-run under torchrun: give a folder all ranks share")
            raise RecipeError(str(recipe_path), [issue])
        output = output or Path(tempfile.mkdtemp(prefix=f"vmerge-dry-run-{recipe.name}-"))
    else:
        apps = recipe.app_sections()  # e.g. the toy world's data and teachers
        if apps:
            if world.is_main:  # one process writes what the apps share with every rank
                for name in apps:
                    APPS.get(name).prepare(recipe, progress=progress)
            barrier(world)
        # local files and data first: a run that cannot start downloads nothing
        problems = missing_paths(recipe, weight_names=False) + init_from_issues(recipe)
        if problems:
            raise MissingPathsError(str(recipe_path), problems + [_how_to_fix(recipe_path)])
        if world.is_main:  # one process downloads what the ranks then read from the cache
            fetch_weights(recipe, source=str(recipe_path))
        barrier(world)
        output = output or Path("runs") / recipe.name
    # Before any model is built, so that a tracker's missing library costs no time; a dry run
    # checks the libraries but sends nothing (its metrics are not a run's).
    trackers = open_trackers(
        recipe.logging.trackers, run_dir=output, enabled=world.is_main and not dry_run
    )
    if dry_run:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            components = build_components(recipe, allow_random_init=True)
    else:
        # a task with a targets cache reads its keyed views' targets there, not from its teacher
        components = build_components(recipe, target_sources=open_target_sources(recipe))
    # an earlier run's student and heads (step-by-step merging), unless resuming this run's own
    start_from_earlier_run(components.model, recipe, output=output, resume=resume)
    output.mkdir(parents=True, exist_ok=True)
    recipe_yaml = dump_recipe(recipe)
    with trackers:
        engine = Engine(
            components, output_dir=output, recipe_yaml=recipe_yaml, world=world, trackers=trackers
        )
        state = engine.run(max_steps=max_steps, resume=resume, progress=progress)
        finished = state.stage_index >= len(recipe.stages)
        if finished and recipe.eval is not None and not dry_run:
            _evaluate(components, output, world=world, trackers=trackers, step=state.global_step)
    return RunResult(output_dir=output, state=state, recipe=recipe, main_process=world.is_main)


def _evaluate(
    components: Components, output: Path, *, world: World, trackers: TrackerGroup, step: int
) -> None:
    """What ``vmerge eval`` measures, written to the run folder; the merged model's numbers
    also go to the trackers, at the last step."""
    if world.distributed:
        if world.is_main:
            warnings.warn(
                f"evaluation skipped under torchrun: run `vmerge eval {output}` in one process",
                stacklevel=3,
            )
        return
    from mergekit_vision.eval.evaluate import evaluate_components

    components.model.eval()
    results = evaluate_components(components, output_dir=output)
    trackers.log({"step": step, **merged_eval_scalars(results)})


def merged_eval_scalars(results: dict[str, Any]) -> dict[str, float]:
    """The merged model's numbers in ``eval.json`` results, flat: ``eval/<model>/<key>`` for the
    merged model and its per-head views (``merged:<head>``), per-resolution values under
    ``by_resolution/<side>/``, and ``eval/feature_retention/<task>/<key>``."""
    merged = {
        name: values
        for name, values in results.get("models", {}).items()
        if name == "merged" or name.startswith("merged:")
    }
    tree = {**merged, "feature_retention": results.get("feature_retention", {})}
    return _numbers(tree, "eval/")


def _numbers(tree: dict[str, Any], prefix: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for key, value in tree.items():
        if isinstance(value, dict):
            out.update(_numbers(value, f"{prefix}{key}/"))
        elif isinstance(value, int | float) and not isinstance(value, bool):
            out[f"{prefix}{key}"] = float(value)
    return out


def _how_to_fix(recipe_path: str | Path) -> Issue:
    return Issue(
        "",
        f"edit {recipe_path} or pass --set <path>=<value> with local files (data cannot be "
        "downloaded by vmerge; weights can be named instead, see docs/weights.md); --dry-run "
        "runs without them",
    )
