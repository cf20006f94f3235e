"""The printed side of ``vmerge eval``: the values of every model grouped by ability, whether the
merged model is above or below each teacher, and how flat each model stays across resolutions."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

METRIC_WIDTH = len("linear_seg_probe_miou")


def print_table(results: dict[str, Any], console: Console | None = None) -> None:
    """One column per model, the metrics' values in rows grouped by ability; then where the
    merged model stands against each teacher, and how flat each model stays across sides."""
    console = console or Console()
    models, metrics = results["models"], results.get("metrics", {})
    table = Table(title=f"vmerge eval at {results['resolution']} px", show_lines=False)
    table.add_column("ability", max_width=16)
    table.add_column("metric", no_wrap=True, min_width=METRIC_WIDTH)
    for name in models:
        table.add_column(name, justify="right", no_wrap=True, min_width=5)
    for ability, keys in _by_ability(metrics).items():
        table.add_section()
        for i, key in enumerate(keys):
            row = [_fmt(models[name].get(key)) for name in models]
            table.add_row(ability if i == 0 else "", key, *row)
    # Never shrink names or values: a table wider than the console runs on instead of being cut.
    needed = 18 + METRIC_WIDTH + 3 + sum(max(len(name), 5) + 3 for name in models)
    if needed > console.width:
        console = Console(width=needed, file=console.file, force_terminal=console.is_terminal)
    console.print(table)
    print_versus(results, console)
    print_robustness(results, console)


def print_versus(results: dict[str, Any], console: Console) -> None:
    """Per metric and teacher: the merged model's ratio to the teacher and whether it is above
    or below it (oriented so that above is better, for costs too)."""
    versus = results.get("versus_teachers", {})
    teachers = list(dict.fromkeys(t for against in versus.values() for t in against))
    if not teachers:
        return
    table = Table(title="merged vs teachers (merged / teacher; above = merged better)")
    table.add_column("metric", no_wrap=True, min_width=METRIC_WIDTH)
    for teacher in teachers:
        table.add_column(teacher, justify="right", no_wrap=True)
    for key, against in versus.items():
        table.add_row(key, *[versus_cell(against.get(t)) for t in teachers])
    console.print(table)


def versus_cell(about: dict[str, Any] | None) -> str:
    """``"1.021x above"``, ``"0.512x below"``; ``"(merged:dino)"`` marks the heads' view."""
    if about is None:
        return "-"
    word = "above" if about["above"] else "below" if about["ratio"] < 1 else "equal"
    view = f" ({about['model']})" if about["model"] != "merged" else ""
    return f"{about['ratio']:.3f}x {word}{view}"


def print_robustness(results: dict[str, Any], console: Console) -> None:
    """The merged model's values at each side, and every model's worst ratio at another side
    to the main one."""
    models, metrics = results["models"], results.get("metrics", {})
    by_resolution = models["merged"].get("by_resolution", {})
    if len(by_resolution) < 2:
        return
    quality = [key for key, about in metrics.items() if about["higher_is_better"]]
    table = Table(title="merged model across resolutions")
    table.add_column("metric", no_wrap=True, min_width=METRIC_WIDTH)
    for side in by_resolution:
        table.add_column(f"{side} px", justify="right")
    for key in quality:
        if any(key in values for values in by_resolution.values()):
            table.add_row(key, *[_fmt(values.get(key)) for values in by_resolution.values()])
    console.print(table)
    ratios = results.get("robustness", {})
    others = ", ".join(side for side in by_resolution if side != str(results["resolution"]))
    table = Table(title=f"worst ratio at {others} px to {results['resolution']} px (1 = flat)")
    table.add_column("metric", no_wrap=True, min_width=METRIC_WIDTH)
    for name in ratios:
        table.add_column(name, justify="right", no_wrap=True, min_width=5)
    for key in quality:
        if any(key in row for row in ratios.values()):
            table.add_row(key, *[_fmt(row.get(key)) for row in ratios.values()])
    table.add_section()
    table.add_row("worst", *[_fmt(models[n].get("worst_resolution_ratio")) for n in ratios])
    console.print(table)


def _by_ability(metrics: dict[str, Any]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for key, about in metrics.items():
        groups.setdefault(about["ability"], []).append(key)
    return groups


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{value:.3f}"
