"""``vmerge bench --inference``: what merging saves where the model is deployed.

The separate teachers and the merged model, as a deployment runs them for both abilities
(:mod:`mergekit_vision.tools.inference_systems`), side by side in one process, per variant
(:mod:`mergekit_vision.tools.inference_runners`): eager fp32, ``torch.compile``, onnxruntime fp32
and onnxruntime int8. For each system: parameters, FLOPs per image (torch's FLOP counter, the
eager modules at batch 1), latency at batch 1 (median over rounds), throughput at batch 8 or
``throughput_batch`` (images/s, from the median round) and peak memory (a process per variant).
The PyTorch variants' rounds are interleaved in the bench's process: round ``r`` runs every
system in both once, so drift of the machine hits all alike. The onnxruntime variants are timed
in the process that measures their memory, one system after the other (:data:`TIMED_APART`).
Each ratio is merged / separate.
"""

from __future__ import annotations

import statistics
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from mergekit_vision.export.onnx import export_graph, export_sam_decoder
from mergekit_vision.tools.inference_runners import (
    VARIANTS,
    Runner,
    run_child,
    timing_fields,
    torch_runner,
)
from mergekit_vision.tools.inference_systems import SYSTEMS, Size, System, build_systems
from mergekit_vision.tools.int8_eval import int8_agreement
from mergekit_vision.tools.quantization import quantize_linear_layers

LATENCY_BATCH = 1
THROUGHPUT_BATCH = 8
EXPORT_BATCH = 2  # the example the encoders are exported on (batch is a dynamic axis)
MEMORY_TIMEOUT_S = 1800
# Timed in a process of their own, one system at a time: at the reference sizes one onnxruntime
# session holds 6-15 GB at batch 1-2, so the bench's process cannot hold them all at once.
TIMED_APART = ("ort", "ort_int8")


def bench_inference(
    target: str | Path,
    *,
    size: Size = "reference",
    overrides: list[str] | None = None,
    variants: Sequence[str] = VARIANTS,
    rounds: int = 5,
    warmup: int = 1,
    memory: bool = True,
    work_dir: str | Path | None = None,
    memory_timeout_s: float = MEMORY_TIMEOUT_S,
    throughput_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """Cost of the separate teachers vs the merged model of ``target`` (a run folder or a
    recipe), per variant; see the module docstring. The systems and their ONNX graphs are
    written to ``work_dir`` (a temporary folder unless given; about 5 GB at the reference
    sizes). ``memory_timeout_s`` bounds each peak-memory process, and so a variant's compile:
    a variant whose process fails or times out is reported with its error, not timed.
    ``throughput_batch`` images make the throughput batch (8; fewer where 8 do not fit in
    memory: SAM's global attention holds ``[batch x 12, 4096, 4096]`` fp32 scores at 1024 px)."""
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {', '.join(VARIANTS)}")
    built = build_systems(target, size=size, overrides=overrides)
    threads = torch.get_num_threads()
    errors: dict[tuple[str, str], str] = {}  # (system, variant) -> why it has no numbers
    with tempfile.TemporaryDirectory(prefix="vmerge-inference-") as scratch:
        folder = Path(work_dir) if work_dir is not None else Path(scratch)
        folder.mkdir(parents=True, exist_ok=True)
        systems, files = _prepare(built.systems, folder, variants, errors, throughput_batch)
        in_process = [v for v in variants if v not in TIMED_APART]
        for (name, variant), found in _measure_apart(
            files, folder, variants, errors, threads=threads, memory=memory, rounds=rounds,
            warmup=warmup, timeout_s=memory_timeout_s, throughput_batch=throughput_batch,
        ).items():  # fmt: skip
            systems[name]["variants"][variant].update(found)
            if "error" in found:
                errors[name, variant] = found["error"]
        runners = _runners(built.systems, in_process, errors)
        timed = _time_all(
            runners,
            built.systems,
            rounds=rounds,
            warmup=warmup,
            errors=errors,
            batches=(LATENCY_BATCH, throughput_batch),
        )
    for (name, variant), row in timed.items():
        systems[name]["variants"][variant].update(row)
    for (name, variant), error in errors.items():
        systems[name]["variants"][variant]["error"] = error
    return {
        "source": built.source,
        "size": size,
        "random_weights": built.random_weights,
        "device": "cpu",
        "threads": threads,
        "rounds": rounds,
        "batches": {"latency": LATENCY_BATCH, "throughput": throughput_batch},
        "variants": list(variants),
        "systems": systems,
        "merged_vs_separate": ratios(systems, variants, throughput_batch),
        "int8_speedup": _int8_speedup(systems),
    }


def _prepare(
    built: dict[str, System],
    folder: Path,
    variants: Sequence[str],
    errors: dict[tuple[str, str], str],
    throughput_batch: int,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, str]]]:
    """Each system's parameters and FLOPs, its files for the memory processes and, for the
    onnxruntime variants, its graphs (a system whose export fails gets those variants' error)."""
    systems: dict[str, dict[str, Any]] = {}
    files: dict[str, dict[str, str]] = {}
    onnx_variants = [v for v in variants if v in ("ort", "ort_int8")]
    for name, system in built.items():
        systems[name] = {**describe(system), "variants": {v: {} for v in variants}}
        files[name] = _write_system(system, folder, throughput_batch)
        if not onnx_variants:
            continue
        try:
            systems[name]["onnx"] = _export(system, folder, files[name], variants, throughput_batch)
        except Exception as error:  # no graph, no onnxruntime variant: say why
            message = f"no ONNX export: {_first_line(error)}"
            systems[name]["onnx"] = {"error": message}
            errors.update({(name, variant): message for variant in onnx_variants})
    return systems, files


def count_flops(fn: Any) -> FlopCounterMode:
    """Run ``fn()`` under torch's FLOP counter, which does not know the CPU kernel of
    ``scaled_dot_product_attention`` (open_clip's attention on CPU): it is counted with the
    formula of the GPU kernels (``q k^T`` and ``attention v``)."""

    def cpu_sdpa(query_shape: Any, key_shape: Any, value_shape: Any, *_: Any, **__: Any) -> int:
        return sdpa_flop_count(query_shape, key_shape, value_shape)

    mapping = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: cpu_sdpa}
    with FlopCounterMode(display=False, custom_mapping=mapping) as counter:
        fn()
    return counter


def describe(system: System) -> dict[str, Any]:
    """Parameters (M) of each part and in all, and FLOPs (G) per image: each part of the
    encoder and the decoder, for one image and its point prompt."""
    images = system.encoder_inputs(1)

    def run() -> None:
        with torch.no_grad():
            _, embedding = system.encoder(*images)
            system.decoder(embedding, *system.point_prompt())

    counts = count_flops(run).get_flop_counts()
    root = type(system.encoder).__name__
    gflops = {
        part: sum(counts.get(f"{root}.{path}", {}).values()) / 1e9
        for part, path in system.flop_parts.items()
    }
    gflops["sam_decoder"] = sum(counts.get(type(system.decoder).__name__, {}).values()) / 1e9
    gflops["total"] = sum(counts["Global"].values()) / 1e9
    params = {part: _count(module) / 1e6 for part, module in system.parts.items()}
    params["total"] = _count(nn.ModuleList(system.parts.values())) / 1e6
    sides = dict(zip(system.input_names, system.input_sides, strict=True))
    return {"input_sides": sides, "params_m": params, "gflops": gflops}


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())  # shared parameters counted once


def _write_system(system: System, folder: Path, throughput_batch: int) -> dict[str, str]:
    """The modules, prompt and inputs as files a memory-measuring process loads."""
    files = {
        "system": str(folder / f"{system.name}.pt"),
        "inputs": str(folder / f"{system.name}_inputs.pt"),
    }
    torch.save({"encoder": system.encoder, "decoder": system.decoder}, files["system"])
    inputs = {"images": system.encoder_inputs(throughput_batch), "prompt": system.point_prompt()}
    torch.save(inputs, files["inputs"])
    return files


def _export(
    system: System,
    folder: Path,
    files: dict[str, str],
    variants: Sequence[str],
    agreement_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """fp32 ONNX graphs (each checked against PyTorch by onnxruntime), and their int8 versions
    when asked, with how far int8 is from fp32 on the bench's batch of inputs."""
    encoder, decoder = (
        folder / f"{system.name}_encoder.onnx",
        folder / f"{system.name}_decoder.onnx",
    )
    batch = torch.export.Dim("batch", min=1)
    encoder_check = export_graph(
        system.encoder,
        system.encoder_inputs(EXPORT_BATCH),
        encoder,
        input_names=list(system.input_names),
        output_names=["zero_shot_logits", "sam_image_embeddings"],
        dynamic_shapes=tuple({0: batch} for _ in system.input_sides),
        check=system.encoder_inputs(1, seed=1),
        strict=False,
    )
    decoder_check = export_sam_decoder(system.decoder, decoder)
    files.update(ort_encoder=str(encoder), ort_decoder=str(decoder))
    report: dict[str, Any] = {
        "max_abs_difference_from_pytorch": {"encoder": encoder_check, "decoder": decoder_check}
    }
    if "ort_int8" in variants:
        quantized = {}
        for graph, path in (("encoder", encoder), ("decoder", decoder)):
            int8 = path.with_name(f"{path.stem}_int8.onnx")
            quantized[graph] = quantize_linear_layers(path, int8)
            files[f"ort_int8_{graph}"] = str(int8)
        report["int8"] = {**quantized, "agreement": int8_agreement(system, files, agreement_batch)}
    return report


def _measure_apart(
    files: dict[str, dict[str, str]],
    folder: Path,
    variants: Sequence[str],
    errors: dict[tuple[str, str], str],
    *,
    threads: int,
    memory: bool,
    rounds: int,
    warmup: int,
    timeout_s: float,
    throughput_batch: int,
) -> dict[tuple[str, str], dict[str, Any]]:
    """Per system and variant, in a process of its own: peak memory (with ``memory``) and, for
    the onnxruntime variants, latency and throughput (:data:`TIMED_APART`)."""
    found = {}
    for name in SYSTEMS:
        for variant in variants:
            apart = variant in TIMED_APART
            if (name, variant) in errors or not (memory or apart):
                continue
            spec = {
                "variant": variant,
                "files": files[name],
                "threads": threads,
                "batches": [LATENCY_BATCH, throughput_batch],
                "memory": memory,
                "rounds": rounds if apart else 0,
                "warmup": warmup,
            }
            stem = f"{Path(files[name]['system']).stem}_{variant}"
            found[name, variant] = timing_fields(
                run_child(spec, folder / stem, timeout_s), LATENCY_BATCH, throughput_batch
            )
    return found


def _runners(
    systems: dict[str, System],
    variants: Sequence[str],
    errors: dict[tuple[str, str], str],
) -> dict[tuple[str, str], Runner]:
    """The PyTorch variants' runners, timed in this process."""
    runners = {}
    for name, system in systems.items():
        prompt = system.point_prompt()
        for variant in variants:
            if (name, variant) in errors:
                continue  # its measuring process already failed (a compile error, a timeout)
            runners[name, variant] = torch_runner(
                system.encoder, system.decoder, prompt, compiled=variant == "compile"
            )
    return runners


def _time_all(
    runners: dict[tuple[str, str], Runner],
    systems: dict[str, System],
    *,
    rounds: int,
    warmup: int,
    errors: dict[tuple[str, str], str],
    batches: tuple[int, int] = (LATENCY_BATCH, THROUGHPUT_BATCH),
) -> dict[tuple[str, str], dict[str, Any]]:
    """Latency at the first of ``batches`` and throughput at the second, of every runner, rounds
    interleaved. A runner's first call per batch size (where ``torch.compile`` compiles) is timed
    apart; one that raises is dropped with its error."""
    report: dict[tuple[str, str], dict[str, Any]] = {key: {} for key in runners}
    for batch, field in zip(batches, ("latency_ms", "images_per_s"), strict=True):
        inputs = {name: system.encoder_inputs(batch, seed=3) for name, system in systems.items()}
        live = {}
        for key, run in runners.items():
            started = time.perf_counter()
            try:
                run(inputs[key[0]])
            except Exception as error:  # e.g. torch.compile without a working compiler
                errors[key] = _first_line(error)
                continue
            report[key][f"first_call_s_batch_{batch}"] = time.perf_counter() - started
            live[key] = run
        runners = live
        seconds: dict[tuple[str, str], list[float]] = {key: [] for key in runners}
        for index in range(warmup + rounds):
            for key, run in runners.items():
                started = time.perf_counter()
                run(inputs[key[0]])
                if index >= warmup:
                    seconds[key].append(time.perf_counter() - started)
        for key, times in seconds.items():
            median = statistics.median(times)
            report[key][field] = median * 1e3 if field == "latency_ms" else batch / median
    return {key: row for key, row in report.items() if key not in errors}


def ratios(
    systems: dict[str, dict[str, Any]],
    variants: Sequence[str],
    throughput_batch: int = THROUGHPUT_BATCH,
) -> dict[str, Any]:
    """merged / separate of FLOPs, parameters, and per variant of latency, throughput and peak
    memory (None where either side is missing)."""
    separate, merged = systems["separate"], systems["merged"]

    def ratio(ours: float | None, theirs: float | None) -> float | None:
        return ours / theirs if ours is not None and theirs else None

    def per_variant(field: str, batch: str | None = None) -> dict[str, float | None]:
        def value(system: dict[str, Any], variant: str) -> float | None:
            row = system.get("variants", {}).get(variant, {})
            found = row.get(field)
            return found.get(batch) if isinstance(found, dict) else found

        return {v: ratio(value(merged, v), value(separate, v)) for v in variants}

    return {
        "gflops": ratio(merged["gflops"]["total"], separate["gflops"]["total"]),
        "params": ratio(merged["params_m"]["total"], separate["params_m"]["total"]),
        "latency": per_variant("latency_ms"),
        "throughput": per_variant("images_per_s"),
        "peak_memory_batch_1": per_variant("peak_memory_mb", str(LATENCY_BATCH)),
        f"peak_memory_batch_{throughput_batch}": per_variant(
            "peak_memory_mb", str(throughput_batch)
        ),
    }


def _int8_speedup(systems: dict[str, dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per system: latency of ORT fp32 and of eager fp32 over that of ORT int8 (above 1: faster)."""
    found = {}
    for name, system in systems.items():
        rows = system.get("variants", {})
        int8 = rows.get("ort_int8", {}).get("latency_ms")
        found[name] = {
            f"vs_{base}": rows[base]["latency_ms"] / int8
            if int8 and rows.get(base, {}).get("latency_ms")
            else None
            for base in ("ort", "eager")
        }
    return found


def _first_line(error: Exception) -> str:
    lines = str(error).strip().splitlines()
    return f"{type(error).__name__}: {lines[0][:300] if lines else ''}"
