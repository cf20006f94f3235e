"""``vmerge bench``: training-step cost of strategy variants, measured side by side.

Machines drift (other jobs, turbo, thermal), so variants are timed interleaved in one process:
step 1 of every variant, then step 2 of every variant, ... and each is reported as a ratio to the
first variant over the same rounds. A timed step is the engine's own training step
(:meth:`~mergekit_vision.engine.loop.Engine.step`), so what is measured is what training runs.
Weights do not matter for timing: missing teacher checkpoints are replaced by random weights (said
in the report).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from mergekit_vision.engine.build import build_components, missing_paths
from mergekit_vision.engine.loop import Engine
from mergekit_vision.engine.performance import keep_freed_memory
from mergekit_vision.engine.run_folder import TrainState
from mergekit_vision.engine.stage import StageRun
from mergekit_vision.engine.step import PHASES
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.schema import BACKBONE, ConflictSpec
from mergekit_vision.students.vitdet import ViTDetStudent


def bench_conflict(
    recipe_path: Path,
    *,
    strategies: list[str],
    overrides: list[str] | None = None,
    steps: int = 20,
    warmup: int = 3,
) -> dict[str, Any]:
    """Median step time of each conflict strategy on the recipe's first multi-task stage."""
    recipe = load_recipe(recipe_path, overrides)
    index = next((i for i, s in enumerate(recipe.stages) if len(s.tasks) > 1), None)
    if index is None:
        raise RecipeError(str(recipe_path), [Issue("stages", "no stage runs more than one task")])
    random_weights = bool(missing_paths(recipe))
    engine = Engine(build_components(recipe, allow_random_init=random_weights))
    stage_spec = recipe.stages[index]
    runs = {
        name: engine.build_stage(
            stage_spec.model_copy(update={"conflict": ConflictSpec(type=name)})
        )
        for name in strategies
    }
    engine.open_streams(TrainState())
    times: dict[str, list[float]] = {name: [] for name in strategies}
    for round_index in range(warmup + steps):
        for name, stage in runs.items():
            started = time.perf_counter()
            engine.step(stage, TrainState(global_step=round_index))
            if round_index >= warmup:
                times[name].append(time.perf_counter() - started)
    base = strategies[0]
    ratios = {
        name: statistics.median(t / b for t, b in zip(times[name], times[base], strict=True))
        for name in strategies
    }
    return {
        "stage": stage_spec.name,
        "steps": steps,
        "random_weights": random_weights,
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        "ratio_to_first": ratios,
    }


def matmul_peak(*, size: int = 3072, repeats: int = 3, device: str = "cpu") -> float:
    """FLOP/s of the best of ``repeats`` square fp32 matmuls: this machine's attainable peak."""
    a = torch.randn(size, size, device=device)
    b = torch.randn(size, size, device=device)
    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        started = time.perf_counter()
        torch.mm(a, b)
        _sync(device)
        best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best


def count_flops(fn: Callable[[], Any]) -> int:
    """FLOPs of ``fn()`` (forward and whatever backward it runs), by torch's FLOP counter.

    The counter knows ``baddbmm`` but not its in-place form, which the blockwise CPU attention
    (``students/rel_pos_attention.py``) uses to accumulate into existing buffers; it is counted
    with the same formula, so executed FLOPs include that attention's recomputation.
    """
    in_place = {torch.ops.aten.baddbmm_: _baddbmm_flops}
    with FlopCounterMode(display=False, custom_mapping=in_place) as counter:
        fn()
    return counter.get_total_flops()


def _baddbmm_flops(self_shape, a_shape, b_shape, *args, **kwargs) -> int:
    """``baddbmm``'s product: ``2 * B * M * K * N`` for ``[B, M, K] @ [B, K, N]``."""
    batch, rows, inner = a_shape
    return 2 * batch * rows * inner * b_shape[-1]


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_student(
    *,
    variant: str = "vit_b",
    resolution: int = 1024,
    batch: int = 1,
    steps: int = 5,
    warmup: int = 0,
    attentions: Sequence[str] = ("sdpa", "original"),
    activation_checkpointing: bool = False,
    device: str = "cpu",
    architecture: dict[str, Any] | None = None,
    peak_size: int = 3072,
    keep_memory: bool = True,
) -> dict[str, Any]:
    """MFU of the ViT-Det student's forward + backward, attention implementations interleaved.

    Model FLOPs are counted on segment_anything's own encoder (``attention="original"``, so its
    window padding counts as it computes it) and used for every variant; the FLOPs a variant
    actually executes are reported beside. Each round times the matmul peak, then one step of
    every variant, so machine drift hits all alike; MFU is the median over rounds of
    ``model FLOPs / step time / that round's peak``. The FLOP-counting passes run every variant
    once before timing, so ``warmup`` rounds are optional. ``architecture`` overrides the variant's
    sizes (``ViTDetStudent.Params`` fields, e.g. for a tiny ``custom`` student). A variant
    ``"<attention>+compile"`` runs the same student through ``torch.compile`` (compiled once
    before timing; its executed FLOPs are those of the plain attention). ``keep_memory`` applies
    :func:`~mergekit_vision.engine.performance.keep_freed_memory` on CPU, as training does by
    default (process-wide, so it cannot be interleaved: compare it across two runs).
    """
    kept = keep_memory and torch.device(device).type == "cpu" and keep_freed_memory()
    step = _student_step(
        variant, resolution, batch, activation_checkpointing, device, attentions, architecture
    )
    model_flops = count_flops(lambda: step("original"))
    plain = {name.partition("+")[0] for name in attentions}
    executed_by = {name: count_flops(lambda name=name: step(name)) for name in plain}
    executed = {name: executed_by[name.partition("+")[0]] for name in attentions}
    for name in attentions:
        if name.endswith("+compile"):
            step(name)  # compiles (same FLOPs as the plain attention, counted above)

    def timed(name: str, round_index: int) -> float:
        started = time.perf_counter()
        step(name)
        _sync(device)
        return time.perf_counter() - started

    times, peaks = _interleaved_rounds(
        attentions, timed, warmup=warmup, steps=steps, peak_size=peak_size, device=device
    )
    mfu = {
        name: [model_flops / t / p for t, p in zip(ts, peaks, strict=True)]
        for name, ts in times.items()
    }
    base = attentions[-1]
    return {
        "variant": variant,
        "resolution": resolution,
        "batch": batch,
        "steps": steps,
        "threads": torch.get_num_threads(),
        "activation_checkpointing": activation_checkpointing,
        "freed_memory_kept": kept,
        "model_gflops": model_flops / 1e9,
        "executed_gflops": {name: f / 1e9 for name, f in executed.items()},
        "matmul_peak_gflops": statistics.median(peaks) / 1e9,
        "median_step_s": {name: statistics.median(t) for name, t in times.items()},
        "mfu": {name: statistics.median(m) for name, m in mfu.items()},
        "rounds": {"peak_gflops": [p / 1e9 for p in peaks], "step_s": times, "mfu": mfu},
        "speedup_vs_" + base: {
            name: statistics.median(b / t for t, b in zip(times[name], times[base], strict=True))
            for name in attentions
        },
    }


def _student_step(
    variant: str,
    resolution: int,
    batch: int,
    activation_checkpointing: bool,
    device: str,
    attentions: Sequence[str],
    architecture: dict[str, Any] | None,
) -> Callable[[str], None]:
    """One forward + backward of a seeded ViT-Det student under a named attention variant."""
    params = ViTDetStudent.Params(variant=variant, native_size=resolution, **(architecture or {}))
    torch.manual_seed(0)
    student = ViTDetStudent(**params.architecture()).to(device)
    student.activation_checkpointing = activation_checkpointing
    compiled = torch.compile(student) if any(a.endswith("+compile") for a in attentions) else None
    images = torch.rand(batch, 3, resolution, resolution, device=device)

    def step(name: str) -> None:
        attention, _, how = name.partition("+")
        student.attention = attention
        features = (compiled if how == "compile" else student)(images)
        (features.tokens.square().mean() + features.feature_map.square().mean()).backward()
        student.zero_grad(set_to_none=True)

    return step


def _interleaved_rounds(
    variants: Sequence[str],
    run: Callable[[str, int], Any],
    *,
    warmup: int,
    steps: int,
    peak_size: int,
    device: str,
) -> tuple[dict[str, list[Any]], list[float]]:
    """Each round times the matmul peak, then runs every variant once (``run(name, round)``),
    so machine drift hits all alike; returns each variant's results and the peaks of the rounds
    after ``warmup``."""
    results: dict[str, list[Any]] = {name: [] for name in variants}
    peaks: list[float] = []
    for round_index in range(warmup + steps):
        peak = matmul_peak(size=peak_size, device=device)
        for name in variants:
            result = run(name, round_index)
            if round_index >= warmup:
                results[name].append(result)
        if round_index >= warmup:
            peaks.append(peak)
    return results, peaks


def bench_training(
    recipe_path: Path,
    *,
    overrides: list[str] | None = None,
    steps: int = 10,
    warmup: int = 2,
    attentions: Sequence[str] = ("sdpa", "original"),
    peak_size: int = 3072,
) -> dict[str, Any]:
    """Steady-state training throughput of the recipe's distillation stage, per attention.

    The stage is the first that trains the backbone (else the last). A step is the engine's
    training step of that stage (the replay's task batches: data, teacher target, student and
    head forward, backward; then the strategies and the optimiser), each phase timed apart, at
    the stage's first resolution; attention implementations are interleaved round by round on the
    same model. MFU counts the trained model's FLOPs (student and heads, forward and backward,
    segment_anything's attention) against the matmul peak timed in every round.
    """
    recipe = load_recipe(recipe_path, overrides)
    spec = next((s for s in recipe.stages if BACKBONE in s.train), recipe.stages[-1])
    random_weights = bool(missing_paths(recipe))
    components = build_components(recipe, allow_random_init=random_weights)
    engine = Engine(components)  # the recipe's performance switches, as in training
    if not hasattr(components.model.student, "attention"):
        attentions = ("default",)
    step = PhasedStep(engine, engine.build_stage(spec))
    engine.open_streams(TrainState())
    step.use_attention(attentions[-1])
    flops = step.count_model_flops()
    device = str(components.device)

    def timed(attention: str, round_index: int) -> dict[str, float]:
        step.use_attention(attention)
        return step.run(round_index)

    rounds, peaks = _interleaved_rounds(
        attentions, timed, warmup=warmup, steps=steps, peak_size=peak_size, device=device
    )
    peak = statistics.median(peaks)
    batch_sizes = {name: components.tasks[name].spec.batch_size for name in spec.tasks}
    report = {}
    for attention in attentions:
        step_s = statistics.median(sum(timed.values()) for timed in rounds[attention])
        report[attention] = {
            "median_step_s": step_s,
            "phase_s": {p: statistics.median(r[p] for r in rounds[attention]) for p in PHASES},
            "images_per_s": {name: b / step_s for name, b in batch_sizes.items()},
            "mfu": flops["model"] / step_s / peak,
        }
    return {
        "recipe": recipe.name,
        "stage": spec.name,
        "steps": steps,
        "random_weights": random_weights,
        "device": device,
        "threads": torch.get_num_threads(),
        "batch_sizes": batch_sizes,
        "model_gflops_per_step": flops["model"] / 1e9,
        "teacher_gflops_per_step": flops["teacher"] / 1e9,
        "matmul_peak_gflops": peak / 1e9,
        "peak_memory_mb": peak_memory_mb(device),
        "attention": report,
    }


class PhasedStep:
    """The engine's training step of one stage, its phases (:data:`PHASES`) timed or
    FLOP-counted apart through the step's ``lap`` hook."""

    def __init__(self, engine: Engine, stage: StageRun):
        self.engine, self.stage = engine, stage

    def use_attention(self, attention: str) -> None:
        if attention != "default":
            self.engine.c.model.student.attention = attention

    def run(self, index: int) -> dict[str, float]:
        """Seconds of each phase of step ``index`` (at the stage's first resolution)."""
        timed = dict.fromkeys(PHASES, 0.0)
        clock = _Clock(str(self.engine.c.device))

        def lap(phase: str) -> None:
            timed[phase] += clock.lap()

        self.engine.step(self.stage, TrainState(global_step=index), lap=lap)
        return timed

    def count_model_flops(self) -> dict[str, int]:
        """FLOPs of one step's trained model (forward and backward) and of its teachers."""
        flops = dict.fromkeys(PHASES, 0)
        with FlopCounterMode(display=False) as counter:
            counted = 0

            def lap(phase: str) -> None:
                nonlocal counted
                total = counter.get_total_flops()
                flops[phase], counted = flops[phase] + total - counted, total

            self.engine.step(self.stage, TrainState(), lap=lap)
        return {"model": flops["student_forward"] + flops["backward"], "teacher": flops["teacher"]}


class _Clock:
    def __init__(self, device: str):
        self.device = device
        self.last = time.perf_counter()

    def lap(self) -> float:
        _sync(self.device)
        now = time.perf_counter()
        elapsed, self.last = now - self.last, now
        return elapsed


def peak_memory_mb(device: str) -> float:
    """CUDA: max allocated; CPU: the process's peak resident set size."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
