"""``vmerge compare``: run strategy variants of one recipe side by side and show which wins.

Each variant is the recipe with some overrides (a grid over replay schedulers, conflict
strategies, loss weightings or any dotted key), trained and evaluated in its own subfolder by
:func:`~mergekit_vision.run.run_recipe` in a child process of its own: its peak memory is its own
and returned to the system when it ends, and a variant that fails (or crashes the interpreter)
does not stop the others; the failures are reported once the grid is done. Finished variants
(with an ``eval.json``) are not rerun; interrupted ones resume. The tables are rewritten after
each variant, so a grid stopped early has those that finished. The summary reports, per variant,
how much of each teacher's ability the merged model retains, the new ability, step time and peak
memory.
"""

from __future__ import annotations

import csv
import itertools
import json
import multiprocessing
import resource
import statistics
import traceback
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import yaml

from mergekit_vision.engine.performance import flush_denormals
from mergekit_vision.engine.run_folder import CHECKPOINTS_DIR, METRICS_FILE, RECIPE_FILE
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.schema import Recipe
from mergekit_vision.run import run_recipe
from mergekit_vision.strategies.replay.base import REPLAY
from mergekit_vision.tools.compare_seeds import write_seed_tables

STRATEGY_AXES = ("replay", "conflict", "weighting")  # set on every multi-task stage


@dataclass(frozen=True)
class Variant:
    name: str
    overrides: tuple[str, ...]


Axis = tuple[str, list[tuple[str, tuple[str, ...]]]]  # (name, [(value label, overrides)])


def parse_grid(grid: list[str], recipe: Recipe, named: list[Axis] | None = None) -> list[Variant]:
    """``["conflict=sum,pcgrad", "replay=fixed_ratio,alternating"]`` -> every combination.

    ``named`` axes (from :func:`read_variants`) come after the ``--grid`` axes, each value a
    bundle of overrides under one label; the first axis varies slowest."""
    axes: list[Axis] = []
    multi_task = [i for i, s in enumerate(recipe.stages) if len(s.tasks) > 1]
    for item in grid:
        key, _, values = item.partition("=")
        key = key.strip()
        if not values:
            raise RecipeError("--grid", [Issue(item, "expected axis=value1,value2,...")])
        if key in STRATEGY_AXES and not multi_task:
            raise RecipeError("--grid", [Issue("stages", "no stage runs more than one task")])
        labels = [v.strip() for v in values.split(",") if v.strip()]
        axes.append((key, [(v, _axis_overrides(key, v, multi_task)) for v in labels]))
    axes += named or []
    variants = []
    for combo in itertools.product(*[[(k, v) for v in vs] for k, vs in axes]):
        name = ",".join(f"{k}={label}" for k, (label, _) in combo) or "recipe"
        overrides = tuple(o for _, (_, bundle) in combo for o in bundle)
        variants.append(Variant(name=name, overrides=overrides))
    return variants


def _axis_overrides(key: str, value: str, multi_task: list[int]) -> tuple[str, ...]:
    if key in STRATEGY_AXES:
        return tuple(f"stages.{i}.{key}={{type: {value}}}" for i in multi_task)
    return (f"{key}={value}",)


def read_variants(path: Path) -> Axis:
    """A named-variants file: one axis whose values each set several recipe keys at once.

    ```yaml
    axis: technique
    variants:
      none: {}
      ladder: {heads.dino_adaptor: {type: ladder, params: {teacher: dino}}}
    ```
    """
    where = str(path)
    if not path.is_file():
        raise RecipeError(where, [Issue("", "file not found; give a named-variants YAML file")])
    data = yaml.safe_load(path.read_text())
    hint = "expected 'axis: NAME' and 'variants: {LABEL: {dotted.key: value, ...}, ...}'"
    if not isinstance(data, dict) or not isinstance(data.get("variants"), dict):
        raise RecipeError(where, [Issue("variants", hint)])
    axis = str(data.get("axis") or path.stem)
    values = []
    for label, sets in data["variants"].items():
        if not isinstance(sets, dict | None):
            raise RecipeError(where, [Issue(f"variants.{label}", hint)])
        bundle = tuple(f"{key}={json.dumps(value)}" for key, value in (sets or {}).items())
        values.append((str(label), bundle))
    if not values:
        raise RecipeError(where, [Issue("variants", "names no variant; " + hint)])
    return axis, values


def conflict_noops(recipe: Recipe) -> list[str]:
    """Stages whose conflict strategy cannot act: the replay runs one task per step, so each
    step has a single gradient row, which every strategy returns unchanged (as ``sum`` does)."""
    found = []
    for stage in recipe.stages:
        replay = REPLAY.get(stage.replay.type)
        if stage.conflict.type != "sum" and replay.tasks_per_step == 1 and len(stage.tasks) > 1:
            found.append(
                f"stage {stage.name!r}: replay {stage.replay.type!r} runs one task per step, so "
                f"conflict {stage.conflict.type!r} sees one gradient row and acts as 'sum'"
            )
    return found


def slug(name: str) -> str:
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in name.replace(",", "__"))


def run_variant(recipe_path: Path, variant: Variant, base: list[str], folder: Path) -> int:
    """Train + evaluate one variant in a child process; return its peak memory in bytes.

    Raises :class:`VariantFailed` with the child's error (its traceback is on stderr).
    """
    if (folder / "eval.json").is_file():
        return int(json.loads((folder / "peak_memory.json").read_text())["bytes"])
    # spawn, not fork: a fresh interpreter, so the peak memory is the variant's alone
    context = multiprocessing.get_context("spawn")
    receive, send = context.Pipe(duplex=False)
    child = context.Process(
        target=_train_and_evaluate,
        args=(str(recipe_path), [*base, *variant.overrides], str(folder), send),
        name=f"vmerge-compare-{slug(variant.name)}",
    )
    child.start()
    send.close()  # the child holds the sending end now
    child.join()
    try:
        reply = receive.recv()
    except EOFError:  # the child died without a word (killed, out of memory, ...)
        reply = {}
    receive.close()
    if child.exitcode != 0 or "peak" not in reply:
        raise VariantFailed(variant.name, reply.get("error") or f"exit {child.exitcode}")
    peak = int(reply["peak"])
    (folder / "peak_memory.json").write_text(json.dumps({"bytes": peak}))
    return peak


class VariantFailed(RuntimeError):
    """A variant's child process failed; ``reason`` is its error (whose traceback the child
    printed), or its exit status when it died without one."""

    def __init__(self, variant: str, reason: str):
        self.variant, self.reason = variant, reason
        super().__init__(f"variant {variant} failed: {reason}")


def _train_and_evaluate(recipe_path: str, overrides: list[str], folder: str, send: Connection):
    """The child process of one variant: ``vmerge run`` (training, then its evaluation) through
    the library, resuming an interrupted run; sends back the peak memory or the error."""
    flush_denormals()  # as every vmerge process does first; a spawned one starts without
    output = Path(folder)
    try:
        run_recipe(
            recipe_path,
            overrides=overrides,
            output=output,
            resume=(output / CHECKPOINTS_DIR).exists(),
        )
    except Exception as err:  # reported to the parent, which goes on with the other variants
        traceback.print_exc()
        send.send({"error": f"{type(err).__name__}: {err}"})
        raise SystemExit(1) from None
    # Linux reports KiB; data-loader workers are children of their own
    usage = [
        resource.getrusage(who).ru_maxrss
        for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    ]
    send.send({"peak": max(usage) * 1024})
    send.close()


def summarise(variant: Variant, folder: Path, peak: int) -> dict[str, Any]:
    results = json.loads((folder / "eval.json").read_text())
    models = results["models"]
    metrics = [json.loads(line) for line in (folder / METRICS_FILE).read_text().splitlines()]
    # Steps of the multi-task stages, whatever the replay scheduler runs in each step.
    recipe = load_recipe(folder / RECIPE_FILE)
    stages = {stage.name for stage in recipe.stages if len(stage.tasks) > 1}
    multi = [m["step_time"] for m in metrics if m.get("stage") in stages and "step_time" in m]
    return {
        "variant": variant.name,
        **metric_columns(models, results.get("metrics", {})),
        "step_time_s": statistics.median(multi) if multi else None,
        "peak_memory_gib": peak / 2**30,
    }


def metric_columns(models: dict[str, Any], metrics: dict[str, Any]) -> dict[str, Any]:
    """From the metrics that ran (``eval.json``'s ``metrics``): each teacher's retention by its
    own first measure that the merged model also has (``<teacher>_retention``, merged /
    teacher; the merged model as it stands in for that teacher, ``merged:<teacher>``, where it
    has the measure), then the merged model's value of every measure where higher is better."""
    merged = models["merged"]
    better = [key for key, about in metrics.items() if about["higher_is_better"]]
    columns: dict[str, Any] = {}
    for name, row in models.items():
        if name in ("merged", "pipeline") or name.startswith("merged:"):
            continue
        view = models.get(f"merged:{name}", {})
        shared = [key for key in better if key in row and (key in view or key in merged)]
        if shared:
            ours = view if shared[0] in view else merged
            columns[f"{name}_retention"] = _ratio(ours, row, shared[0])
    columns.update({key: merged.get(key) for key in better if key in merged})
    return columns


def _ratio(model: dict, teacher: dict, key: str) -> float | None:
    if model.get(key) is None or not teacher.get(key):
        return None
    return model[key] / teacher[key]


def compare(
    recipe_path: Path,
    *,
    grid: list[str],
    overrides: list[str] | None,
    output: Path,
    variant_files: list[Path] | None = None,
    finished_only: bool = False,
) -> list[dict[str, Any]]:
    """Train and evaluate each variant not yet finished (in ``output/<variant>``) and table them
    all; with ``finished_only``, train nothing: table those that finished, warn of the rest."""
    recipe = load_recipe(recipe_path, overrides)
    if recipe.eval is None:
        raise RecipeError(str(recipe_path), [Issue("eval", "compare needs an 'eval' section")])
    named = [read_variants(Path(f)) for f in variant_files or []]
    variants = parse_grid(grid, recipe, named)
    output.mkdir(parents=True, exist_ok=True)
    rows = []
    for variant in variants:  # a bad strategy name fails here, before any training
        resolved = load_recipe(recipe_path, [*(overrides or []), *variant.overrides])
        for problem in conflict_noops(resolved):
            warnings.warn(f"variant {variant.name}: {problem}", stacklevel=2)
    # The teachers and the pipeline are evaluated once and reused by every variant.
    base = list(overrides or [])
    if recipe.eval.teacher_results is None:
        base.append(f"eval.teacher_results={(output / 'teacher_eval.json').resolve()}")
    failures: list[VariantFailed] = []
    for variant in variants:
        folder = output / slug(variant.name)
        if finished_only and not (folder / "eval.json").is_file():
            warnings.warn(f"variant {variant.name}: not finished, left out", stacklevel=2)
            continue
        try:
            peak = run_variant(recipe_path, variant, base, folder)
        except VariantFailed as failure:
            failures.append(failure)
            continue
        rows.append(summarise(variant, folder, peak))
        write_tables(rows, output)  # after each variant: a long grid stopped early keeps its table
    if failures:
        raise RuntimeError("; ".join(str(f) for f in failures))
    return rows


def write_tables(rows: list[dict[str, Any]], output: Path) -> None:
    with (output / "compare.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    (output / "compare.md").write_text(markdown_table(rows))
    pareto_plot(rows, output / "pareto.png")
    write_seed_tables(rows, output)  # with a seed axis: each setting's mean and spread


def markdown_table(rows: list[dict[str, Any]]) -> str:
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + " --- |" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(format_cell(row[c]) for c in columns) + " |")
    return "\n".join(lines) + "\n"


def format_cell(value: Any) -> str:
    """A table cell: floats to three decimals, a missing value as a dash."""
    if value is None:
        return "-"
    return f"{value:.3f}" if isinstance(value, float) else str(value)


def pareto_plot(rows: list[dict[str, Any]], path: Path) -> None:
    """The first two teachers' retention (CLIP's and SAM's in a SAM-CLIP recipe), the new
    ability (refined semseg mIoU) as colour."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    retention = [c for c in rows[0] if c.endswith("_retention")]
    if len(retention) < 2:
        return
    x_key, y_key = retention[:2]
    points = [r for r in rows if r[x_key] is not None and r[y_key] is not None]
    figure, ax = plt.subplots(figsize=(8, 5.5))
    scatter = ax.scatter(
        [r[x_key] for r in points],
        [r[y_key] for r in points],
        c=[r.get("semseg_miou_refined") or 0.0 for r in points],
        cmap="viridis",
        s=70,
        edgecolors="black",
    )
    # Variants at the same point (e.g. every conflict strategy under a one-task-per-step replay)
    # share one label, one name per line.
    labels: dict[tuple[float, float], list[str]] = {}
    for row in points:
        labels.setdefault((row[x_key], row[y_key]), []).append(row["variant"])
    for xy, names in labels.items():
        ax.annotate(
            "\n".join(names), xy, fontsize=7, xytext=(4, 4), textcoords="offset points",
            verticalalignment="bottom" if len(names) == 1 else "top",
        )  # fmt: skip
    ax.margins(x=0.45, y=0.25)  # room for the labels inside the axes
    ax.set_xlabel(f"{x_key} (merged / teacher)")
    ax.set_ylabel(f"{y_key} (merged / teacher)")
    figure.colorbar(scatter, label="new ability: refined semseg mIoU")
    ax.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
