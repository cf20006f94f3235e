"""``vmerge run`` as a library call: recipe -> components -> engine -> checkpoints and metrics."""

from __future__ import annotations

import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

from mergekit_vision.contracts import TEACHERS
from mergekit_vision.data.targets_cache.reader import open_target_sources
from mergekit_vision.engine.build import build_components, missing_paths
from mergekit_vision.engine.distributed import World, barrier, close_world, init_world
from mergekit_vision.engine.loop import Engine, TrainState
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.app import APPS
from mergekit_vision.recipe.io import dump_recipe, load_recipe, set_dotted, validate_recipe
from mergekit_vision.recipe.schema import Recipe


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
    files that do not exist are dropped so the teachers start from random weights, target
    caches are ignored (the synthetic images are not in them), and target normalizers estimate
    from one batch.
    """
    data = recipe.model_dump(mode="json")
    for dotted, value in recipe.dry_run.set.items():
        set_dotted(data, dotted, value)
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
        problems = missing_paths(recipe)
        if problems:
            raise MissingPathsError(str(recipe_path), problems + [_how_to_fix(recipe_path)])
        output = output or Path("runs") / recipe.name
    if dry_run:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            components = build_components(recipe, allow_random_init=True)
    else:
        # a task with a targets cache reads its keyed views' targets there, not from its teacher
        components = build_components(recipe, target_sources=open_target_sources(recipe))
    output.mkdir(parents=True, exist_ok=True)
    recipe_yaml = dump_recipe(recipe)
    engine = Engine(components, output_dir=output, recipe_yaml=recipe_yaml, world=world)
    state = engine.run(max_steps=max_steps, resume=resume, progress=progress)
    finished = state.stage_index >= len(recipe.stages)
    if finished and recipe.eval is not None and not dry_run and world.distributed:
        if world.is_main:
            warnings.warn(
                f"evaluation skipped under torchrun: run `vmerge eval {output}` in one process",
                stacklevel=2,
            )
    elif finished and recipe.eval is not None and not dry_run:
        from mergekit_vision.eval.evaluate import evaluate_components

        components.model.eval()
        evaluate_components(components, output_dir=output)
    return RunResult(output_dir=output, state=state, recipe=recipe, main_process=world.is_main)


def _how_to_fix(recipe_path: str | Path) -> Issue:
    return Issue(
        "",
        f"edit {recipe_path} or pass --set <path>=<value> with local files "
        "(weights and data cannot be downloaded by vmerge); --dry-run runs without them",
    )
