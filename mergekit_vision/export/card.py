"""The whole merged model as a self-describing folder: weights, resolved recipe, model card."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from mergekit_vision.engine.run_folder import MODEL_FILE, RECIPE_FILE
from mergekit_vision.export.loading import LoadedRun
from mergekit_vision.recipe.schema import Recipe

CARD_FILE = "README.md"
EVAL_FILE = "eval.json"


def export_safetensors(run: LoadedRun, output: Path) -> list[Path]:
    """Copy ``model.safetensors`` and ``recipe.resolved.yaml``; write ``README.md`` (and a copy of
    ``eval.json`` when the run has one). The folder loads back with
    :func:`~mergekit_vision.export.loading.load_run`."""
    output.mkdir(parents=True, exist_ok=True)
    written = []
    for name in (MODEL_FILE, RECIPE_FILE):
        shutil.copyfile(run.checkpoint / name, output / name)
        written.append(output / name)
    metrics = read_eval(run)
    if metrics is not None:
        (output / EVAL_FILE).write_text(json.dumps(metrics, indent=2) + "\n")
        written.append(output / EVAL_FILE)
    (output / CARD_FILE).write_text(model_card(run.recipe, metrics))
    return [*written, output / CARD_FILE]


def read_eval(run: LoadedRun) -> dict[str, Any] | None:
    """The run's ``eval.json`` (beside the run folder's checkpoints), if it was evaluated."""
    for folder in (run.run_dir, run.checkpoint):
        if (folder / EVAL_FILE).is_file():
            return json.loads((folder / EVAL_FILE).read_text())
    return None


def model_card(
    recipe: Recipe, metrics: dict[str, Any] | None, *, loading: list[str] | None = None
) -> str:
    """A Markdown model card: what was merged, from what data, how well it does, and how to load
    it (``loading``'s lines; by default this folder's, as :func:`export_safetensors` writes it)."""
    lines = [
        f"# {recipe.name}",
        "",
        "A merged vision backbone trained by multi-teacher distillation with mergekit-vision "
        "(SAM-CLIP recipe, Wang et al., arXiv 2310.15308).",
        "",
        "## Teachers",
        "",
        *[f"- `{name}`: {_plugin(spec)}" for name, spec in recipe.teachers.items()],
        "",
        "## Student and heads",
        "",
        f"- student: {_plugin(recipe.student)}",
        *[f"- head `{name}`: {_plugin(spec)}" for name, spec in recipe.heads.items()],
        "",
        "## Data",
        "",
        *[
            f"- task `{name}` (teacher `{task.teacher}`, target `{task.target}`): "
            f"{_plugin(task.data)}, resolution {list(task.resolutions())}"
            for name, task in recipe.tasks.items()
        ],
        "",
        "## Training",
        "",
        *[
            f"- stage `{stage.name}`: {_length(stage)}, tasks {list(stage.tasks)}, "
            f"trains {list(stage.train)}, lr {stage.lr}"
            for stage in recipe.stages
        ],
        "",
        "## Metrics",
        "",
        *_metric_lines(metrics),
        "",
        *(_loading_lines() if loading is None else loading),
    ]
    return "\n".join(lines)


def _loading_lines() -> list[str]:
    return [
        "## Files and loading",
        "",
        f"- `{MODEL_FILE}`: every weight of the merged model (student `student.*`, heads "
        "`heads.<name>.*`);",
        f"- `{RECIPE_FILE}`: the fully resolved recipe that produced it.",
        "",
        "```python",
        "from mergekit_vision.export.loading import load_run",
        'model = load_run("THIS_FOLDER").model  # a MergedModel: model.student, model.heads',
        "```",
        "",
        "`vmerge export THIS_FOLDER --format sam` / `--format open_clip` convert it further "
        "(see docs/export.md of mergekit-vision).",
        "",
    ]


def _plugin(spec: Any) -> str:
    dumped = spec.params.model_dump(mode="json")
    params = ", ".join(f"{k}={v}" for k, v in dumped.items() if v is not None)
    return f"`{spec.type}` ({params})" if params else f"`{spec.type}`"


def _length(stage: Any) -> str:
    return f"{stage.steps} steps" if stage.steps is not None else f"{stage.epochs} epochs"


def _metric_lines(metrics: dict[str, Any] | None) -> list[str]:
    if metrics is None:
        return ["Not evaluated yet (run `vmerge eval` on the run folder, then export again)."]
    resolution = metrics.get("resolution")
    lines = [f"From `eval.json` at resolution {resolution}:", ""]
    lines += ["| model | metric | value |", "|---|---|---|"]
    for model, values in metrics.get("models", {}).items():
        flat = values.get("by_resolution", {}).get(str(resolution), values)
        for key, value in flat.items():
            if isinstance(value, int | float) and not isinstance(value, bool):
                lines.append(f"| {model} | {key} | {value:.4g} |")
    return lines
