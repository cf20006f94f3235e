"""``vmerge bench --data`` and ``vmerge bench --gpu-check``: the calls and their tables."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from rich.table import Table

from mergekit_vision.cli.common import console, guarded, user_error


def data_bench(
    recipe: Path,
    *,
    overrides: list[str] | None,
    samples: int,
    gpu_steps_per_s: float | None,
    synthetic: bool,
    json_out: Path | None,
) -> dict[str, Any]:
    from mergekit_vision.tools.data_bench import bench_data

    result = guarded(
        lambda: bench_data(
            recipe,
            overrides=overrides,
            samples=samples,
            gpu_steps_per_s=gpu_steps_per_s,
            synthetic=synthetic,
        )
    )
    print_data_bench(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result


def gpu_check(
    recipe: Path,
    *,
    smoke: bool,
    overrides: list[str] | None,
    batch: int | None,
    steps: int,
    peak_tflops: float | None,
    json_out: Path | None,
) -> dict[str, Any]:
    import torch

    from mergekit_vision.tools.gpu_check import gpu_check as check

    if not smoke and not torch.cuda.is_available():
        user_error(ValueError("--gpu-check needs a CUDA device; add --smoke to run it on CPU"))
    result = guarded(
        lambda: check(
            recipe,
            smoke=smoke,
            overrides=overrides,
            batch=batch,
            steps=steps,
            peak_tflops=peak_tflops,
        )
    )
    print_gpu_check(result)
    if json_out is not None:
        json_out.write_text(json.dumps(result, indent=2))
    return result


def print_data_bench(result: dict[str, Any]) -> None:
    steps = result["gpu_steps_per_s"]
    source = "sample files" if result["synthetic"] else "the recipe's files"
    sized = f"; workers needed for {steps} GPU steps/s" if steps else ""
    table = Table(
        "task",
        "dataset",
        "px",
        "resize",
        "masks",
        "img/s per worker",
        "batch",
        "workers needed",
        "recipe workers",
        title=f"{result['recipe']}: data loaders on {source}, {result['samples']} samples, "
        f"1 thread{sized}",
    )
    for name, row in result["tasks"].items():
        table.add_row(
            name,
            row["dataset"],
            str(row["resolution"]),
            row["resize"],
            f"{row['masks_per_image']:.1f}",
            f"{row['images_per_s']:.1f}",
            str(row["batch_size"]),
            "-" if row["workers_needed"] is None else str(row["workers_needed"]),
            str(row["recipe_workers"]),
        )
    console.print(table)
    decoders = Table(
        "task",
        "images",
        "PIL ms",
        "torchvision ms",
        "PIL / torchvision",
        "same pixels",
        title=f"JPEG decoders (load_image); the loaders use {result['jpeg_decoder']}",
    )
    for name, row in result["tasks"].items():
        d = row["decoders"]
        if d is not None:
            per = d["seconds_per_image"]
            decoders.add_row(
                name,
                str(d["images"]),
                f"{per['pil'] * 1e3:.2f}",
                f"{per['torchvision'] * 1e3:.2f}",
                f"{d['ratio_pil_over_torchvision']:.2f}x",
                "yes" if d["same_pixels"] else "no",
            )
    if decoders.row_count:
        console.print(decoders)
    else:
        console.print(f"the loaders decode JPEG with {result['jpeg_decoder']}")
    total = result["workers_needed_total"]
    if total is not None:
        console.print(f"workers needed in all: {total} (this machine has {result['cpus']} CPUs)")
    for name, why in result["skipped"].items():
        console.print(f"skipped {name}: {why}")


def print_gpu_check(result: dict[str, Any]) -> None:
    student, full = result["student"], result["full_step"]
    console.print(
        f"{result['recipe']} on {result['device']}, {result['precision']}, "
        f"batch {result['batch']}, {result['steps']} timed steps"
        + (" (smoke mode)" if result["smoke"] else "")
    )
    peak = result["peak_tflops"]
    console.print(f"peak: {'-' if peak is None else _tflops(peak)} ({result['peak_source']})")
    table = Table("", "student alone", f"full step ({full['stage']})", title="training cost")
    table.add_row("resolution / batch", f"{student['resolution']} px", _batches(full))
    table.add_row("step (s)", f"{student['step_s']:.4f}", f"{full['step_s']:.4f}")
    for phase, seconds in full["phase_s"].items():
        table.add_row(f"  {phase} (s)", "", f"{seconds:.4f}")
    table.add_row("  sum of phases (s)", "", f"{full['phase_sum_s']:.4f}")
    table.add_row(
        "TFLOP per step",
        f"{student['model_tflop_per_step']:.3g}",
        f"{full['model_tflop_per_step']:.3g} (+ teachers {full['teacher_tflop_per_step']:.3g})",
    )
    table.add_row(
        "achieved",
        _tflops(student["achieved_tflops"]),
        f"{_tflops(full['achieved_tflops'])} (step less data)",
    )
    table.add_row("MFU", _percent(student["mfu"]), _percent(full["mfu"]))
    table.add_row("memory held before (MB)", f"{student['resident_memory_mb']:.0f}", "")
    table.add_row(
        "peak memory (MB)", f"{student['peak_memory_mb']:.0f}", f"{full['peak_memory_mb']:.0f}"
    )
    console.print(table)
    console.print(
        "random weights, generated images; the data phase generates them in the process "
        "(`vmerge bench --data` measures the real loaders)"
    )


def _batches(full: dict[str, Any]) -> str:
    return ", ".join(f"{task} {size}" for task, size in full["batch_sizes"].items())


def _tflops(value: float) -> str:
    return f"{value:.1f} TFLOP/s" if value >= 1 else f"{value * 1e3:.3g} GFLOP/s"


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.1%}"
