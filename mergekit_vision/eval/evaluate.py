"""``vmerge eval`` as a library call: a run folder (or a recipe's default run folder) in,
``eval.json`` and ``eval.png`` out."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

from mergekit_vision.engine.build import Components, build_components
from mergekit_vision.engine.run_folder import (
    CHECKPOINTS_DIR,
    RECIPE_FILE,
    find_last,
    load_model_weights,
)
from mergekit_vision.eval.features import feature_retention_results, print_feature_table
from mergekit_vision.eval.pictures import save_grid
from mergekit_vision.eval.report import Evaluation, write_results
from mergekit_vision.eval.table import print_table
from mergekit_vision.eval.tasks import dense_labels, iter_pictures, refined_labels
from mergekit_vision.recipe.io import load_recipe


def locate_run(target: Path, overrides: list[str] | None) -> tuple[Path, Any]:
    """(run folder, recipe) for a run folder or a recipe file (whose run folder is runs/<name>)."""
    if target.is_dir():
        recipe_path = target / RECIPE_FILE
        if not recipe_path.is_file():
            raise FileNotFoundError(f"{target} is not a run folder: it has no {RECIPE_FILE}")
        return target, load_recipe(recipe_path, overrides)
    recipe = load_recipe(target, overrides)
    return Path("runs") / recipe.name, recipe


def load_merged(run_dir: Path, recipe: Any) -> Components:
    checkpoint = find_last(run_dir / CHECKPOINTS_DIR)
    if checkpoint is None:
        raise FileNotFoundError(
            f"no checkpoint under {run_dir / CHECKPOINTS_DIR}; train first with vmerge run"
        )
    components = build_components(recipe)
    load_model_weights(components.model, checkpoint)
    components.model.eval()
    return components


def evaluate_components(
    components: Components, *, output_dir: Path, console: Any = None
) -> dict[str, Any]:
    evaluation = Evaluation(components)
    results = evaluation.run()
    results.update(feature_retention_results(evaluation, components))
    output_dir.mkdir(parents=True, exist_ok=True)
    results["files"] = {"json": str(write_results(results, output_dir))}
    picture = save_pictures(evaluation, output_dir / "eval.png", results["models"])
    if picture is not None:
        results["files"]["picture"] = str(picture)
        write_results(results, output_dir)
    print_table(results, console)
    print_feature_table(results, console)
    return results


def save_pictures(evaluation: Evaluation, path: Path, models: dict[str, Any]) -> Path | None:
    """The first scenes with the text-aligned teacher's and the merged model's labels, each at
    its calibrated background threshold."""
    spec = evaluation.spec
    semantic = evaluation.dataset(spec.semantic, spec.resolution)
    merged = evaluation.merged
    if semantic is None or spec.pictures == 0 or "text_dense_embedding" not in merged.capabilities:
        return None
    batch = next(iter_pictures(semantic, spec.pictures))
    texts = evaluation.texts(merged, semantic, skip_background=True)
    predictions = {}
    for name, model in evaluation.teachers.items():
        if model is merged.text_tower:
            threshold = models.get(name, {}).get("semseg_threshold", 0.5)
            predictions[f"{name} teacher"] = partial(
                dense_labels, model, texts=texts, threshold=threshold
            )
    t_head = models["merged"].get("semseg_threshold", 0.5)
    predictions["merged (CLIP head)"] = partial(dense_labels, merged, texts=texts, threshold=t_head)
    if "shared_encoder" in merged.capabilities:
        predictions["merged (refined)"] = partial(
            refined_labels,
            merged,
            texts=texts,
            threshold=models["merged"].get("semseg_refined_threshold", 0.5),
            points_per_class=spec.points_per_class,
            mask_class=spec.refined_mask_class,
        )
    return save_grid(
        path,
        images=batch["image"],
        truth=batch["semantic"],
        class_names=semantic.class_names,
        predictions=predictions,
    )


def evaluate_run(
    target: str | Path, *, overrides: list[str] | None = None, output: str | Path | None = None
) -> dict[str, Any]:
    """What ``vmerge eval`` measures, for a run folder or a recipe (its run is runs/<name>)."""
    run_dir, recipe = locate_run(Path(target), overrides)
    components = load_merged(run_dir, recipe)
    return evaluate_components(components, output_dir=Path(output) if output else run_dir)
