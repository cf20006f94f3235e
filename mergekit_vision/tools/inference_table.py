"""The tables of ``vmerge bench --inference`` (:mod:`mergekit_vision.tools.inference_bench`)."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.table import Table

from mergekit_vision.tools.inference_runners import LABELS


# (row label, field, batch key of a per-batch field, format)
def _timed_rows(n: int) -> tuple[tuple[str, str, str | None, str, str], ...]:
    """(row label, field, batch key of a per-batch field, format, ratio key) at throughput batch
    ``n``."""
    return (
        ("latency, batch 1 (ms)", "latency_ms", None, "{:.1f}", "latency"),
        (f"throughput, batch {n} (img/s)", "images_per_s", None, "{:.2f}", "throughput"),
        ("peak memory, batch 1 (MB)", "peak_memory_mb", "1", "{:.0f}", "peak_memory_batch_1"),
        (
            f"peak memory, batch {n} (MB)",
            "peak_memory_mb",
            str(n),
            "{:.0f}",
            f"peak_memory_batch_{n}",
        ),
    )


def print_inference_bench(console: Console, result: dict[str, Any]) -> None:
    """The cost table (FLOPs, parameters), the timed table (every variant) and int8's report."""
    systems, ratios = result["systems"], result["merged_vs_separate"]
    print_cost(console, result)
    variants = result["variants"]
    table = Table("", "system", *(LABELS[v] for v in variants), title="per variant")
    errors = []
    for label, field, batch, form, key in _timed_rows(result["batches"]["throughput"]):
        for name in ("separate", "merged"):
            cells = []
            for variant in variants:
                row = systems[name].get("variants", {}).get(variant, {})
                value = row.get(field)
                value = value.get(batch) if isinstance(value, dict) else value
                if "error" in row and (name, variant, row["error"]) not in errors:
                    errors.append((name, variant, row["error"]))
                cells.append("error" if value is None and "error" in row else _fmt(value, form))
            table.add_row(label if name == "separate" else "", name, *cells)
        table.add_row("", "merged / separate", *(_fmt(ratios[key][v], "{:.2f}x") for v in variants))
    console.print(table)
    for name, variant, error in errors:
        console.print(f"{name}, {LABELS[variant]}: {error}", highlight=False)
    _print_int8(console, result)
    if result["random_weights"]:
        console.print("(teacher checkpoints missing or a recipe: timed with random weights)")


def print_cost(console: Console, result: dict[str, Any]) -> None:
    systems = result["systems"]
    separate, merged = systems["separate"], systems["merged"]
    title = (
        f"{result['source']} ({result['size']}): one image, both abilities; "
        f"{result['threads']} threads, {result['device']}"
    )
    table = Table("", "separate", "merged", "merged / separate", title=title)
    for label, field in (("GFLOPs", "gflops"), ("parameters (M)", "params_m")):
        ratio = result["merged_vs_separate"]["gflops" if field == "gflops" else "params"]
        table.add_row(
            label,
            _parts(separate[field]),
            _parts(merged[field]),
            _fmt(ratio, "{:.2f}x"),
        )
    sides = [
        ", ".join(f"{name} {side}" for name, side in s["input_sides"].items())
        for s in (separate, merged)
    ]
    table.add_row("inputs (px)", *sides, "")
    console.print(table)


def _parts(values: dict[str, float]) -> str:
    parts = ", ".join(f"{name} {value:.3g}" for name, value in values.items() if name != "total")
    return f"{values['total']:.3g} ({parts})"


def _print_int8(console: Console, result: dict[str, Any]) -> None:
    for name, system in result["systems"].items():
        int8 = system.get("onnx", {}).get("int8")
        if int8 is None:
            continue
        agreement = int8["agreement"]
        speed = result["int8_speedup"][name]
        layers = int8["encoder"]["quantized_layers"] + int8["decoder"]["quantized_layers"]
        size = [int8[g][k] for g in ("encoder", "decoder") for k in ("fp32_mb", "int8_mb")]
        emulation = agreement.get("emulation_relative_error")
        console.print(
            f"int8 {name}: {layers} linear layers quantized; files "
            f"{size[0] + size[2]:.3g} -> {size[1] + size[3]:.3g} MB; "
            f"speed-up {_fmt(speed['vs_ort'], '{:.2f}x')} vs ORT fp32, "
            f"{_fmt(speed['vs_eager'], '{:.2f}x')} vs eager; vs fp32: logits "
            f"{agreement['logits_relative_error']:.2%} off, top-1 agrees "
            f"{agreement['top1_agreement']:.0%}, SAM embedding "
            f"{agreement['sam_embedding_relative_error']:.2%} off, point-mask IoU "
            f"{agreement['point_mask_iou']:.3f}"
            + (f"; PyTorch emulation {emulation:.2%} off" if emulation is not None else ""),
            highlight=False,
        )
    change = result.get("int8_eval")
    if change is not None:
        values = ", ".join(
            f"{key} {change['fp32'][key]:.3f} -> {change['int8'][key]:.3f}"
            for key in change["change"]
        )
        console.print(f"int8 eval metrics ({change['run']}): {values}", highlight=False)


def _fmt(value: float | None, form: str) -> str:
    return "-" if value is None else form.format(value)
