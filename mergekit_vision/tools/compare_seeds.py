"""``vmerge compare`` over seeds: each variant's mean and spread across a ``seed`` axis.

When the grid has a ``seed`` axis (``--grid seed=0,1,2``), the variants that differ only in the
seed are one setting run several times. This module folds them: per setting, the mean and the
sample standard deviation of every numeric column over the seeds that finished
(``compare_seeds.csv`` / ``.md``), and a Pareto picture of the retentions, two teachers per
panel, each point a setting's mean with its standard deviation as error bars
(``pareto_seeds.png``).
"""

from __future__ import annotations

import csv
import re
import statistics
from pathlib import Path
from typing import Any

SEED = re.compile(r"(^|,)seed=[^,]*")


def setting(variant: str) -> str | None:
    """``"seed=1,technique=ladder"`` -> ``"technique=ladder"``; None without a seed axis."""
    if not SEED.search(variant):
        return None
    return SEED.sub("", variant).strip(",") or "recipe"


def over_seeds(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per setting (in the order first seen): ``seeds`` (how many finished), then each
    numeric column's mean and, as ``<column>_sd``, its standard deviation (None from one
    seed). Empty when no variant names a seed."""
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in rows:
        name = setting(row["variant"])
        if name is not None:
            groups.setdefault(name, []).append(row)
    folded = []
    for name, members in groups.items():
        out: dict[str, Any] = {"variant": name, "seeds": len(members)}
        for column in members[0]:
            values = [m[column] for m in members if isinstance(m.get(column), int | float)]
            if column == "variant" or not values:
                continue
            out[column] = statistics.fmean(values)
            out[f"{column}_sd"] = statistics.stdev(values) if len(values) > 1 else None
        folded.append(out)
    return folded


def write_seed_tables(rows: list[dict[str, Any]], output: Path) -> list[dict[str, Any]]:
    """Fold ``rows`` over seeds and write the tables and the picture; return the folded rows."""
    folded = over_seeds(rows)
    if not folded:
        return folded
    columns = list(dict.fromkeys(key for row in folded for key in row))
    with (output / "compare_seeds.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(folded)
    shown = [c for c in columns if not c.endswith("_sd")]
    lines = ["| " + " | ".join(shown) + " |", "|" + " --- |" * len(shown)]
    for row in folded:
        cells = [_mean_sd(row, c) for c in shown]
        lines.append("| " + " | ".join(cells) + " |")
    (output / "compare_seeds.md").write_text("\n".join(lines) + "\n")
    pareto_over_seeds(folded, output / "pareto_seeds.png")
    return folded


def _mean_sd(row: dict[str, Any], column: str) -> str:
    value, spread = row.get(column), row.get(f"{column}_sd")
    if value is None:
        return "-"
    if not isinstance(value, float):
        return str(value)
    return f"{value:.3f} ± {spread:.3f}" if spread is not None else f"{value:.3f}"


def pareto_over_seeds(folded: list[dict[str, Any]], path: Path) -> None:
    """Retention against retention, teachers paired in column order (CLIP with SAM, DINO with
    depth, ...), a point per setting at its mean, bars one standard deviation each way."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    retention = [c for c in folded[0] if c.endswith("_retention")]
    if len(retention) < 2:
        return
    pairs = [
        (retention[i], retention[(i + 1) % len(retention)]) for i in range(0, len(retention), 2)
    ]
    figure, axes = plt.subplots(1, len(pairs), figsize=(7 * len(pairs), 5.5), squeeze=False)
    for ax, (x_key, y_key) in zip(axes[0], pairs, strict=True):
        for index, row in enumerate(folded):
            if row.get(x_key) is None or row.get(y_key) is None:
                continue
            ax.errorbar(
                row[x_key], row[y_key], xerr=row.get(f"{x_key}_sd") or 0,
                yerr=row.get(f"{y_key}_sd") or 0, fmt="o", color=f"C{index % 10}", capsize=3,
                label=f"{row['variant']} (n={row['seeds']})",
            )  # fmt: skip
        ax.set_xlabel(f"{x_key} (merged / teacher), mean ± sd over seeds")
        ax.set_ylabel(f"{y_key} (merged / teacher)")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, loc="best")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)
