"""``vmerge bench --gpu-check``: what the reference recipe's training costs on this GPU.

Two measurements on one CUDA device, with random weights and generated images (nothing is
downloaded or read), under the recipe's autocast (bf16 on CUDA by default):

1. **the bare student**: forward + backward of the recipe's student on a batch of square
   images at the recipe's largest load resolution (1024 px for ``recipes/sam_clip.yaml``'s
   ViT-Det ViT-B): median step time, FLOPs, MFU against the GPU's dense bf16 peak, peak memory;
2. **one full training step** of the recipe's first stage that trains the backbone, built as
   ``vmerge run --dry-run`` builds it but at the recipe's own resolutions, every task at
   ``batch`` images: the engine's step split into its phases (data, teacher forward, student
   forward, backward, optimizer), MFU of the trained model's FLOPs and peak memory.

FLOPs are counted by torch's ``FlopCounterMode`` on the same calls. The student's model FLOPs
are segment_anything's own attention's (``attention: original``, as ``vmerge bench --student``
counts them), counted on one image and scaled by the batch; the full step's are the FLOPs it
executes with the recipe's attention (counting it with the original attention would hold its
``[heads, N, N]`` score tensors for a whole batch at once).

``smoke=True`` runs the same code on CPU in fp32 (for CI, on a tiny recipe), with the peak
measured as the best fp32 matmul, since a CPU has no datasheet bf16 peak worth comparing to.
"""

from __future__ import annotations

import statistics
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from mergekit_vision.contracts import TEACHERS
from mergekit_vision.engine.build import Components, build_components
from mergekit_vision.engine.loop import Engine
from mergekit_vision.engine.named_weights import recipe_weight_names
from mergekit_vision.engine.performance import autocast_context, autocast_dtype
from mergekit_vision.engine.run_folder import TrainState
from mergekit_vision.engine.step import PHASES
from mergekit_vision.recipe.io import load_recipe, set_dotted, validate_recipe
from mergekit_vision.recipe.schema import BACKBONE, Recipe, task_load_resolution
from mergekit_vision.run import dry_run_recipe
from mergekit_vision.tools.bench import PhasedStep, count_flops, matmul_peak, peak_memory_mb

# Dense (no sparsity) bf16 tensor-core peaks in TFLOP/s, matched in order against the CUDA
# device name. NVIDIA's datasheets give the figures "with sparsity", twice the dense ones:
# H100 SXM 1,979 -> 989, H100 PCIe 1,513 -> 756, H100 NVL 1,671 -> 835 (H100 datasheet);
# H200 SXM 1,979 -> 989, H200 NVL 1,671 -> 835 (H200 datasheet); A100 624 -> 312 (A100
# datasheet); L40S 733 -> 362 (L40S datasheet); GeForce RTX 4090: 165.2 dense with FP32
# accumulation, as PyTorch's bf16 matmuls accumulate (NVIDIA Ada Lovelace architecture
# whitepaper, appendix A).
BF16_PEAK_TFLOPS: tuple[tuple[str, float], ...] = (
    ("H100 PCIe", 756.0),
    ("H100 NVL", 835.0),
    ("H200 NVL", 835.0),
    ("H100", 989.0),
    ("H200", 989.0),
    ("A100", 312.0),
    ("L40S", 362.0),
    ("RTX 4090", 165.0),
)


def bf16_peak_tflops(device_name: str) -> float | None:
    """The dense bf16 peak of the GPU called ``device_name``, or None when it is not known."""
    return next((peak for key, peak in BF16_PEAK_TFLOPS if key in device_name), None)


def gpu_check(
    recipe_path: Path,
    *,
    smoke: bool = False,
    overrides: list[str] | None = None,
    batch: int | None = None,
    steps: int = 10,
    warmup: int | None = None,
    peak_tflops: float | None = None,
) -> dict[str, Any]:
    """The bare student and one full training step of ``recipe_path`` on CUDA (see module).

    Args:
        smoke: run on CPU in fp32 instead (the recipe shrunk as ``vmerge run --dry-run`` does).
        batch: images per student step and per task of the full step (default 8; smoke 2).
        steps: timed steps of each part, after ``warmup`` untimed ones (default 3; smoke 1).
        peak_tflops: the GPU's dense bf16 peak, for GPUs :data:`BF16_PEAK_TFLOPS` lacks.
    """
    if not smoke and not torch.cuda.is_available():
        raise RuntimeError("gpu check: no CUDA device here; --smoke runs its CPU smoke mode")
    device = "cpu" if smoke else "cuda"
    batch = batch or (2 if smoke else 8)
    warmup = (1 if smoke else 3) if warmup is None else warmup
    recipe = check_recipe(load_recipe(recipe_path, overrides), smoke=smoke, batch=batch)
    peak, peak_source = _peak(device, peak_tflops)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "random weights" warnings: that is the point here
        components = build_components(recipe, allow_random_init=True)
    dtype = autocast_dtype(device, recipe.performance.autocast)
    resolution = max(task_load_resolution(recipe, name) for name in recipe.tasks)
    student = time_student(
        components.model.student,
        resolution=resolution,
        batch=batch,
        steps=steps,
        warmup=warmup,
        device=device,
        dtype=dtype,
    )
    full = time_full_step(components, steps=steps, warmup=warmup)
    for part in (student, full):
        part["mfu"] = None if peak is None else part["achieved_tflops"] * 1e12 / peak
    return {
        "recipe": recipe.name,
        "smoke": smoke,
        "device": _device_name(device),
        "precision": "fp32" if dtype is None else str(dtype).removeprefix("torch."),
        "batch": batch,
        "steps": steps,
        "peak_tflops": None if peak is None else peak / 1e12,
        "peak_source": peak_source,
        "student": student,
        "full_step": full,
    }


def check_recipe(recipe: Recipe, *, smoke: bool, batch: int) -> Recipe:
    """``recipe`` as the check runs it: every teacher from random weights (no file read, nothing
    downloaded), generated images, every task at ``batch``, one step per stage (the dry run's
    shrinking), on CUDA at the recipe's own resolutions, or on CPU shrunk by its ``dry_run.set``.
    """
    data = recipe.model_dump(mode="json")
    for weights in recipe_weight_names(recipe):
        set_dotted(data, weights.where, None)
    for name, spec in recipe.teachers.items():
        for field in TEACHERS.get(spec.type).checkpoint_fields(spec.params):
            data["teachers"][name]["params"][field] = None
    data["device"] = "cpu" if smoke else "cuda"
    dry_run = {**data["dry_run"], "batch_size": batch, "samples": batch}
    if not smoke:
        dry_run["set"] = {}  # full size: the check is about the real shapes
    data["dry_run"] = dry_run
    return dry_run_recipe(validate_recipe(data, source=f"{recipe.name} (gpu check)"))


def time_student(
    student: nn.Module,
    *,
    resolution: int,
    batch: int,
    steps: int,
    warmup: int,
    device: str,
    dtype: torch.dtype | None,
) -> dict[str, Any]:
    """Median time, FLOPs and peak memory of the student's forward + backward on ``batch``
    random ``resolution`` px images under ``dtype`` autocast."""
    student.train().requires_grad_(True)
    images = torch.rand(batch, 3, resolution, resolution, device=device)

    def step(x: torch.Tensor) -> None:
        with autocast_context(device, dtype):
            features = student(x)
            loss = features.tokens.float().square().mean()
            loss = loss + features.feature_map.float().square().mean()
        loss.backward()
        student.zero_grad(set_to_none=True)

    attention = getattr(student, "attention", None)
    if attention is not None:
        student.attention = "original"  # segment_anything's FLOPs, as `bench --student` counts
    flops = count_flops(lambda: step(images[:1])) * batch
    if attention is not None:
        student.attention = attention
    resident = _memory_mb(device)
    _reset_peak_memory(device)
    times = _timed(lambda: step(images), steps=steps, warmup=warmup, device=device)
    step_s = statistics.median(times)
    return {
        "resolution": resolution,
        "attention": attention,
        "step_s": step_s,
        "images_per_s": batch / step_s,
        "model_tflop_per_step": flops / 1e12,
        "achieved_tflops": flops / step_s / 1e12,
        "resident_memory_mb": resident,
        "peak_memory_mb": peak_memory_mb(device),
    }


def time_full_step(components: Components, *, steps: int, warmup: int) -> dict[str, Any]:
    """One training step of the first stage that trains the backbone, its phases timed apart
    (:data:`~mergekit_vision.engine.step.PHASES`; each phase ends with a device sync), its
    FLOPs counted by one extra step. Phase times are means, so they add up to ``phase_sum_s``;
    ``step_s`` is the mean wall time of the whole step."""
    recipe = components.recipe
    spec = next((s for s in recipe.stages if BACKBONE in s.train), recipe.stages[-1])
    engine = Engine(components)  # the recipe's performance switches, as in training
    step = PhasedStep(engine, engine.build_stage(spec))
    engine.open_streams(TrainState())
    device = str(components.device)
    flops = step.count_model_flops()  # also the first warm-up step
    _reset_peak_memory(device)
    phases: list[dict[str, float]] = []
    walls = _timed(
        lambda: phases.append(step.run(len(phases))), steps=steps, warmup=warmup, device=device
    )
    timed = phases[warmup:]
    phase_s = {p: statistics.fmean(r[p] for r in timed) for p in PHASES}
    step_s = statistics.fmean(walls)
    compute_s = step_s - phase_s["data"]  # in training, loader workers prepare the data
    return {
        "stage": spec.name,
        "batch_sizes": {name: components.tasks[name].spec.batch_size for name in spec.tasks},
        "step_s": step_s,
        "phase_s": phase_s,
        "phase_sum_s": sum(phase_s.values()),
        "compute_s": compute_s,
        "model_tflop_per_step": flops["model"] / 1e12,
        "teacher_tflop_per_step": flops["teacher"] / 1e12,
        "achieved_tflops": flops["model"] / compute_s / 1e12,
        "peak_memory_mb": peak_memory_mb(device),
    }


def _timed(fn: Callable[[], Any], *, steps: int, warmup: int, device: str) -> list[float]:
    """Seconds of each of ``steps`` calls of ``fn`` after ``warmup`` untimed ones, each ended
    by a device sync."""
    times = []
    for index in range(warmup + steps):
        started = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if index >= warmup:
            times.append(time.perf_counter() - started)
    return times


def _peak(device: str, peak_tflops: float | None) -> tuple[float | None, str]:
    """FLOP/s to compare with, and where the number comes from."""
    if peak_tflops is not None:
        return peak_tflops * 1e12, "given (--peak-tflops)"
    if device == "cpu":
        return matmul_peak(size=1024, device="cpu"), "measured: best fp32 1024^3 matmul"
    name = torch.cuda.get_device_name()
    known = bf16_peak_tflops(name)
    if known is None:
        return None, f"unknown for {name!r}: pass --peak-tflops (dense bf16, datasheet)"
    return known * 1e12, "datasheet: dense bf16"


def _device_name(device: str) -> str:
    if device == "cpu":
        return f"cpu ({torch.get_num_threads()} threads)"
    return f"{torch.cuda.get_device_name()} (torch {torch.__version__}, CUDA {torch.version.cuda})"


def _memory_mb(device: str) -> float:
    """Memory held now: CUDA's allocated bytes; on CPU the process's peak resident set."""
    if device.startswith("cuda"):
        return torch.cuda.memory_allocated() / 2**20
    return peak_memory_mb(device)


def _reset_peak_memory(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
