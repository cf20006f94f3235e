"""Tables of ``vmerge bench`` and ``vmerge profile`` results (printing only)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table


def print_training_bench(console: Console, result: dict[str, Any]) -> None:
    attentions = list(result["attention"])
    table = Table(
        "", *attentions, title=f"{result['recipe']}: stage {result['stage']} ({result['device']})"
    )
    rows = {name: result["attention"][name] for name in attentions}
    table.add_row("step (s)", *(f"{r['median_step_s']:.3f}" for r in rows.values()))
    for phase in next(iter(rows.values()))["phase_s"]:
        table.add_row(f"  {phase} (s)", *(f"{r['phase_s'][phase]:.3f}" for r in rows.values()))
    for task in result["batch_sizes"]:
        table.add_row(
            f"{task} images/s", *(f"{r['images_per_s'][task]:.1f}" for r in rows.values())
        )
    table.add_row("MFU", *(f"{r['mfu']:.1%}" for r in rows.values()))
    console.print(table)
    console.print(
        f"model {result['model_gflops_per_step']:.2f} GFLOP/step (student + heads, fwd + bwd), "
        f"teachers {result['teacher_gflops_per_step']:.2f} GFLOP/step; "
        f"matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s; "
        f"peak memory {result['peak_memory_mb']:.0f} MB; {result['threads']} threads"
    )
    if result["random_weights"]:
        console.print("(teacher checkpoints missing: timed with random weights)")


def print_student_bench(console: Console, result: dict[str, Any]) -> None:
    attentions = list(result["mfu"])
    title = (
        f"{result['variant']} forward + backward, {result['resolution']} px, "
        f"batch {result['batch']}, {result['threads']} threads"
    )
    table = Table("", *attentions, title=title)
    table.add_row("step (s)", *(f"{result['median_step_s'][a]:.2f}" for a in attentions))
    table.add_row("MFU", *(f"{result['mfu'][a]:.1%}" for a in attentions))
    speedup = next(key for key in result if key.startswith("speedup_vs_"))
    table.add_row(speedup.replace("_", " "), *(f"{result[speedup][a]:.2f}x" for a in attentions))
    table.add_row("executed GFLOP", *(f"{result['executed_gflops'][a]:.0f}" for a in attentions))
    console.print(table)
    console.print(
        f"model {result['model_gflops']:.0f} GFLOP per step (segment_anything's encoder); "
        f"matmul peak {result['matmul_peak_gflops']:.0f} GFLOP/s (median of rounds)"
    )


def print_profile(console: Console, result: dict[str, Any]) -> None:
    table = Table(
        "task",
        "px",
        "teacher",
        "teacher Mparams",
        "teacher GFLOPs",
        "student GFLOPs",
        "head",
        "head Mparams",
        "head GFLOPs",
        title=f"{result['recipe']}: per image, forward",
    )
    for row in result["tasks"]:
        table.add_row(
            row["task"],
            str(row["resolution"]),
            row["teacher"],
            f"{row['teacher_params_m']:.2f}",
            f"{row['teacher_gflops']:.3f}",
            f"{row['student_gflops']:.3f}",
            row["head"],
            f"{row['head_params_m']:.2f}",
            f"{row['head_gflops']:.3f}",
        )
    console.print(table)
    totals = result["total_gflops"]
    ratio = result["merged_flops_ratio"]
    console.print(
        f"params: merged {result['merged_params_m']:.2f} M (student "
        f"{result['student_params_m']:.2f} M) vs teachers {result['teachers_params_m']:.2f} M "
        f"({result['teachers_used_params_m']:.2f} M used for these outputs)\n"
        f"GFLOPs for all outputs: merged {totals['merged']:.3f} vs teachers separately "
        f"{totals['teachers']:.3f}" + (f" ({ratio:.2f}x)" if ratio is not None else "")
    )
    if result["random_weights"]:
        console.print("(checkpoints missing: measured with random weights)")
