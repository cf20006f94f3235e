"""How each variant of a system runs a batch, and its peak memory, measured in a process of its own.

A run is what a deployment does per batch: the encoder once on the batch, then the decoder once
per image for its point prompt (SAM's decoder takes one image's embedding). Variants:

- ``eager``: the PyTorch modules, fp32, under ``torch.inference_mode``;
- ``compile``: the same modules through ``torch.compile`` (compiled on the first batch of each
  size, before timing);
- ``ort``: the modules' ONNX graphs in onnxruntime (CPU provider), fp32;
- ``ort_int8``: those graphs with their linear layers dynamically quantized to int8
  (:mod:`mergekit_vision.tools.quantization`).

Peak memory (CPU): the resident set's high-water mark (``VmHWM``) in a fresh process that loads
one system in one variant, runs a warm-up batch (where ``torch.compile`` compiles), resets the
mark (``/proc/self/clear_refs``) and runs the measured batches; reported above the resident set
the process had before loading the model, so it counts the weights, the activations and the
runtime's workspace, and not the interpreter, the libraries or a compiler's transient memory.
Python's ``tracemalloc`` does not see tensors, and the bench's own process holds every variant
at once, hence a process per variant. ``python -m mergekit_vision.tools.inference_runners SPEC``
is that process. The onnxruntime variants are also timed there: at the reference sizes one
session holds 6-15 GB at batch 1-2, and the bench's process cannot hold the four of them at once
in 24 GiB.
"""

from __future__ import annotations

import gc
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

VARIANTS = ("eager", "compile", "ort", "ort_int8")
LABELS = {
    "eager": "eager fp32",
    "compile": "torch.compile fp32",
    "ort": "ORT fp32",
    "ort_int8": "ORT int8",
}
Runner = Callable[[tuple[Tensor, ...]], None]


def torch_runner(
    encoder: nn.Module, decoder: nn.Module, prompt: tuple[Tensor, ...], *, compiled: bool
) -> Runner:
    """Encoder on the batch, decoder per image, through PyTorch (compiled or not)."""
    if compiled:
        encoder, decoder = torch.compile(encoder), torch.compile(decoder)

    def run(images: tuple[Tensor, ...]) -> None:
        with torch.inference_mode():
            _, embeddings = encoder(*images)
            for index in range(embeddings.shape[0]):
                decoder(embeddings[index : index + 1], *prompt)

    return run


def ort_runner(encoder: Path, decoder: Path, prompt: tuple[Tensor, ...], *, threads: int) -> Runner:
    """The same through onnxruntime's CPU provider, with the thread count PyTorch uses."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    # Idle onnxruntime workers would spin after each run, starving the variant timed next.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    providers = ["CPUExecutionProvider"]
    encode = onnxruntime.InferenceSession(str(encoder), options, providers=providers)
    decode = onnxruntime.InferenceSession(str(decoder), options, providers=providers)
    image_names = [node.name for node in encode.get_inputs()]
    prompt_names = [node.name for node in decode.get_inputs()][1:]
    prompt_feed = {name: t.numpy() for name, t in zip(prompt_names, prompt, strict=True)}
    embedding_name = decode.get_inputs()[0].name

    def run(images: tuple[Tensor, ...]) -> None:
        feed = {name: t.numpy() for name, t in zip(image_names, images, strict=True)}
        _, embeddings = encode.run(None, feed)
        for index in range(embeddings.shape[0]):
            decode.run(None, {embedding_name: embeddings[index : index + 1], **prompt_feed})

    return run


def make_runner(
    variant: str, files: dict[str, str], prompt: tuple[Tensor, ...], *, threads: int
) -> Runner:
    """The runner of ``variant`` from the files the bench wrote: ``system`` (the modules,
    ``torch.save``), ``<variant>_encoder`` and ``<variant>_decoder`` (ONNX)."""
    if variant in ("eager", "compile"):
        saved = torch.load(files["system"], weights_only=False)
        return torch_runner(
            saved["encoder"], saved["decoder"], prompt, compiled=variant == "compile"
        )
    return ort_runner(
        Path(files[f"{variant}_encoder"]),
        Path(files[f"{variant}_decoder"]),
        prompt,
        threads=threads,
    )


def _status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(f"{field}:"):
                return int(line.split()[1])
    except OSError:
        pass
    return None


def _reset_peak() -> bool:
    """Reset this process's resident high-water mark (Linux >= 4.0); False where it cannot."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return False
    return True


def measure(spec: dict[str, Any]) -> dict[str, Any]:
    """One system in one variant, per batch size: its peak resident memory (MB) above the bare
    process (module docstring) and, with ``rounds``, the seconds of each timed run.

    ``spec``: ``variant``, ``files``, ``threads``, ``batches``; optional ``memory`` (default
    true), ``rounds`` (timed runs per batch, default 0) and ``warmup`` (untimed runs before
    them, beyond the first call, default 0). The first call per batch is timed apart
    (``first_call_s``)."""
    torch.set_num_threads(spec["threads"])
    variant, files = spec["variant"], spec["files"]
    memory, rounds = spec.get("memory", True), spec.get("rounds", 0)
    inputs = torch.load(files["inputs"], weights_only=False)
    if variant in ("eager", "compile"):
        # unpickling imports the models' libraries: once before the baseline, so they are not
        # counted as the model's memory (the weights are freed again: large tensors are
        # mapped and unmapped whole)
        imported = make_runner(variant, files, inputs["prompt"], threads=spec["threads"])
        del imported
        gc.collect()
    else:
        import onnxruntime  # noqa: F401
    before = _status_kb("VmRSS")
    if memory and before is None:
        return {"memory_unmeasured": "no /proc/self/status: peak memory is measured on Linux"}
    run = make_runner(variant, files, inputs["prompt"], threads=spec["threads"])
    result: dict[str, Any] = {}
    for batch in spec["batches"]:
        images = tuple(t[:batch] for t in inputs["images"])
        # the first call: compiles, fills the allocators' caches
        result.setdefault("first_call_s", {})[str(batch)] = _timed(run, images)
        if memory:
            if not _reset_peak():
                return {"memory_unmeasured": "/proc/self/clear_refs is not writable"}
            run(images)
            peak = (_status_kb("VmHWM") - before) / 1024
            result.setdefault("peak_memory_mb", {})[str(batch)] = peak
        for _ in range(spec.get("warmup", 0) if rounds else 0):
            run(images)
        result.setdefault("seconds", {})[str(batch)] = [_timed(run, images) for _ in range(rounds)]
    return result


def _timed(run: Runner, images: tuple[Tensor, ...]) -> float:
    started = time.perf_counter()
    run(images)
    return time.perf_counter() - started


def run_child(spec: dict[str, Any], stem: Path, timeout_s: float) -> dict[str, Any]:
    """``python -m mergekit_vision.tools.inference_runners`` on ``spec``: its result, or why not."""
    request, out = stem.with_name(f"{stem.name}.json"), stem.with_name(f"{stem.name}_out.json")
    request.write_text(json.dumps(spec))
    command = [sys.executable, "-m", "mergekit_vision.tools.inference_runners", str(request)]
    try:
        done = subprocess.run(
            [*command, str(out)], capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired:
        return {"error": f"gave up after {timeout_s:.0f} s (compiling or running)"}
    if done.returncode != 0 or not out.is_file():
        return {"error": f"the measuring process failed: {done.stderr.strip()[-300:]}"}
    return json.loads(out.read_text())


def timing_fields(
    found: dict[str, Any], latency_batch: int, throughput_batch: int
) -> dict[str, Any]:
    """A child's seconds per run as the bench's fields: median latency at the latency batch,
    images/s at the throughput batch, the first calls apart."""
    seconds = found.pop("seconds", {})
    for batch, first in found.pop("first_call_s", {}).items():
        if seconds.get(batch):
            found[f"first_call_s_batch_{batch}"] = first
    if seconds.get(str(latency_batch)):
        found["latency_ms"] = statistics.median(seconds[str(latency_batch)]) * 1e3
    if seconds.get(str(throughput_batch)):
        found["images_per_s"] = throughput_batch / statistics.median(seconds[str(throughput_batch)])
    return found


def main(argv: list[str]) -> int:
    spec = json.loads(Path(argv[0]).read_text())
    try:
        result = measure(spec)
    except Exception as error:  # the parent records why the variant could not run
        lines = str(error).strip().splitlines()
        result = {"error": f"{type(error).__name__}: {lines[0][:300] if lines else ''}"}
    Path(argv[1]).write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    from mergekit_vision.engine.performance import flush_denormals

    flush_denormals()  # as every vmerge process (docs/performance.md)
    sys.exit(main(sys.argv[1:]))
