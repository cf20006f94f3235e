"""``vmerge plot``: the curves of one or more run folders in one PNG.

Panels: each task's training loss (one line per run and stage, its held-out loss as dots when
the stage monitors it), the learning rate, and the merged model's evaluation when a run has an
``eval.json``. Runs are told apart by colour and named by their folder; stages by line style.
Everything is read from what ``vmerge run`` writes (``metrics.jsonl``, ``eval.json``), so a run
can be plotted while it trains.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from mergekit_vision.engine.run_folder import read_metrics

EVAL_FILE = "eval.json"  # written by vmerge eval (and vmerge run with an eval: section)
PLOT_FILE = "curves.png"
STAGE_STYLES = ("-", "--", ":", "-.")
COLUMNS = 2


@dataclass(frozen=True)
class RunData:
    """What one run folder holds for the plot."""

    label: str
    records: list[dict[str, Any]]
    evaluation: dict[str, float]  # the merged model's top-level numbers in eval.json


def load_runs(run_dirs: Sequence[Path]) -> list[RunData]:
    """Each folder's metrics and evaluation, labelled by folder name (by the path given where
    two folders share a name)."""
    names = [Path(d).name for d in run_dirs]
    labels = [n if names.count(n) == 1 else str(d) for n, d in zip(names, run_dirs, strict=True)]
    return [
        RunData(label, read_metrics(Path(d)), _merged_evaluation(Path(d)))
        for label, d in zip(labels, run_dirs, strict=True)
    ]


def _merged_evaluation(run_dir: Path) -> dict[str, float]:
    path = run_dir / EVAL_FILE
    if not path.is_file():
        return {}
    merged = json.loads(path.read_text()).get("models", {}).get("merged", {})
    return {
        key: float(value)
        for key, value in merged.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def plot_runs(run_dirs: Sequence[Path]) -> Figure:
    """The figure of ``run_dirs`` (see the module docstring); every line's label is
    ``"<run> <stage>"`` (``"<run> <stage> held-out"`` for held-out losses)."""
    if not run_dirs:
        raise ValueError("give at least one run folder to plot")
    runs = load_runs(run_dirs)
    tasks = _keys_after(runs, "loss/")
    evaluated = any(run.evaluation for run in runs)
    count = len(tasks) + 1 + int(evaluated)
    rows = math.ceil(count / COLUMNS)
    figure = Figure(figsize=(6.4 * min(count, COLUMNS), 3.6 * rows), layout="constrained")
    axes = figure.subplots(rows, min(count, COLUMNS), squeeze=False).ravel().tolist()
    for ax, task in zip(axes, tasks, strict=False):
        _plot_task(ax, runs, task)
    _plot_lr(axes[len(tasks)], runs)
    if evaluated:
        _plot_evaluation(axes[len(tasks) + 1], runs)
    for ax in axes[count:]:
        ax.set_visible(False)
    return figure


def write_plot(run_dirs: Sequence[Path], output: Path | None = None) -> Path:
    """Save :func:`plot_runs` as a PNG: ``output``, else ``curves.png`` in the one run folder
    given (in the working folder for several)."""
    if output is None:
        output = Path(run_dirs[0]) / PLOT_FILE if len(run_dirs) == 1 else Path(PLOT_FILE)
    output.parent.mkdir(parents=True, exist_ok=True)
    plot_runs(run_dirs).savefig(output, dpi=110, format="png")
    return output


def _keys_after(runs: list[RunData], prefix: str) -> list[str]:
    """The names after ``prefix`` in the runs' metric keys, in the order first met."""
    found: dict[str, None] = {}
    for run in runs:
        for record in run.records:
            found.update({key[len(prefix) :]: None for key in record if key.startswith(prefix)})
    return list(found)


def _stages(records: list[dict[str, Any]]) -> list[str | None]:
    return list(dict.fromkeys(record.get("stage") for record in records))


def _series(records: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    """(steps, values) of the records that hold ``key``; a null (non-finite) value as NaN."""
    held = [r for r in records if key in r]
    return [r["step"] for r in held], [math.nan if r[key] is None else r[key] for r in held]


def _plot_task(ax: Axes, runs: list[RunData], task: str) -> None:
    for index, run in enumerate(runs):
        color = f"C{index % 10}"
        for number, stage in enumerate(_stages(run.records)):
            records = [r for r in run.records if r.get("stage") == stage]
            steps, losses = _series(records, f"loss/{task}")
            if steps:
                style = STAGE_STYLES[number % len(STAGE_STYLES)]
                ax.plot(steps, losses, style, color=color, label=f"{run.label} {stage}")
            steps, heldout = _series(records, f"heldout/{task}")
            if steps:
                ax.plot(steps, heldout, "o", color=color, label=f"{run.label} {stage} held-out")
    ax.set_title(f"loss: {task}")
    _step_axis(ax)


def _step_axis(ax: Axes) -> None:
    ax.set_xlabel("step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)


def _plot_lr(ax: Axes, runs: list[RunData]) -> None:
    for index, run in enumerate(runs):
        steps, rates = _series(run.records, "lr")
        # each step's LR holds until the next: steps, not slopes, between stages
        ax.plot(steps, rates, color=f"C{index % 10}", label=run.label, drawstyle="steps-post")
    ax.set_title("learning rate")
    _step_axis(ax)


def _plot_evaluation(ax: Axes, runs: list[RunData]) -> None:
    """The merged model's values, grouped by metric, one bar per run."""
    metrics = list(dict.fromkeys(key for run in runs for key in run.evaluation))
    width = 0.8 / len(runs)
    for index, run in enumerate(runs):
        positions = [i + (index - (len(runs) - 1) / 2) * width for i in range(len(metrics))]
        values = [run.evaluation.get(metric, math.nan) for metric in metrics]
        ax.bar(positions, values, width, color=f"C{index % 10}", label=run.label)
    ax.set_xticks(range(len(metrics)), metrics, rotation=30, ha="right", fontsize=7)
    ax.set_title("evaluation: merged model")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3, axis="y")
