"""The training loop: stages of steps; each step runs the replay scheduler's task batches, one
backward each, lets the conflict strategy combine the shared gradients, then one optimiser step.

Everything a step needs is injected (replay scheduler, conflict strategy, optimiser, streams), so
the loop itself stays short; the state needed to resume exactly is saved in every checkpoint.

Under ``torchrun`` every rank runs this same loop on its share of each batch (see
:mod:`.distributed`): each task's gradient is averaged over the ranks before the
conflict strategy sees it, losses are averaged before strategies observe them, and only rank 0
writes metrics, progress and checkpoints. With ``accumulate: k`` each task runs k micro-batches
per step, their mean loss's gradient being one per-task row.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mergekit_vision.engine.build import Components
from mergekit_vision.engine.distributed import (
    Parallel,
    World,
    barrier,
    full_model_state,
    mean_over_ranks,
)
from mergekit_vision.engine.monitor import ForgettingMonitor
from mergekit_vision.engine.performance import apply_performance
from mergekit_vision.engine.run_folder import find_last, load_checkpoint, save_checkpoint
from mergekit_vision.engine.stage import StageRun, build_stage, stage_steps
from mergekit_vision.engine.step import estimate_target_statistics, task_loss
from mergekit_vision.engine.streams import BatchStream
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.schema import StageSpec
from mergekit_vision.registry import CONFLICT, WEIGHTING


@dataclass
class TrainState:
    global_step: int = 0
    stage_index: int = 0
    step_in_stage: int = 0
    streams: dict[str, dict[str, int]] = field(default_factory=dict)


class Engine:
    def __init__(
        self,
        components: Components,
        *,
        output_dir: Path,
        recipe_yaml: str,
        world: World | None = None,
    ):
        self.c = components
        apply_performance(components.model, components.recipe.performance, device=components.device)
        self.world = world or World()
        self.recipe = components.recipe
        self.output_dir = output_dir
        self.recipe_yaml = recipe_yaml
        self.metrics_path = output_dir / "metrics.jsonl"
        self.checkpoints = output_dir / "checkpoints"
        # What a plugin froze by design (e.g. SAM's prompt encoder) stays frozen in every stage.
        self._trainable_names = {n: p.requires_grad for n, p in self.c.model.named_parameters()}
        # for stages built outside run() (bench), before any sharding swaps the parameters
        self._trainable_by_design = {id(p): p.requires_grad for p in self.c.model.parameters()}
        # one process until run() wraps or shards (steps driven from outside run() stay local)
        self.parallel = Parallel(self.c.model, world=World(), strategy="ddp", device=self.c.device)
        self.monitor: ForgettingMonitor | None = None
        self._saved_monitor: dict[str, Any] | None = None

    def run(self, *, max_steps: int | None = None, resume: bool = False, progress: bool = True):
        self._check_parallel_support()
        state, saved = self._initial_state(resume)
        barrier(self.world)  # every rank has read the run folder before rank 0 writes to it
        self._parallelise()
        if self.world.is_main:
            (self.output_dir / "recipe.resolved.yaml").write_text(self.recipe_yaml)
        streams = self._open_streams(state)
        budget = max_steps  # a global step number: "stop at step N", the same on every resume
        total = sum(stage_steps(self.c, s) for s in self.recipe.stages)
        shown = progress and self.recipe.logging.progress and self.world.is_main
        with _progress(enabled=shown) as bar:
            bar_task = bar.add_task("training", total=total, completed=state.global_step)
            self._estimate_normalizers(lambda text: bar.update(bar_task, description=text))
            for index in range(state.stage_index, len(self.recipe.stages)):
                stage = self._start_stage(index, saved if index == state.stage_index else None)
                saved = None
                while state.step_in_stage < stage.steps:
                    if budget is not None and state.global_step >= budget:
                        self._checkpoint(state, streams, stage)
                        return state
                    metrics = self._step(stage, state, streams)
                    metrics.update(self._monitor(stage, state))
                    bar.update(bar_task, advance=1, description=_describe(metrics))
                    self._after_step(stage, state, streams, metrics)
                    if "early_stop" in metrics:
                        bar.update(bar_task, advance=stage.steps - state.step_in_stage)
                        break
                state.stage_index, state.step_in_stage = index + 1, 0
            self._checkpoint(state, streams, None)
        return state

    def _step(self, stage: StageRun, state: TrainState, streams: dict) -> dict[str, Any]:
        started = time.perf_counter()
        stage.optimizer.zero_grad(set_to_none=True)
        stage.conflict.begin_step(shared=stage.shared)
        local: dict[str, float] = {}
        for order, draw in enumerate(stage.replay.draws(step=state.step_in_stage)):
            local[draw.task] = self._task_backward(stage, state, streams, draw.task, order)
            # The last micro-batch's backward averaged this task's gradient over the ranks.
            stage.conflict.after_task_backward(task=draw.task, shared=stage.shared)
        self.parallel.sync_extra(list(stage.weighting.parameters()))
        losses = mean_over_ranks(local, self.world)  # strategies' state stays identical
        task_gradients = stage.conflict.task_gradients() or None
        diagnostics = stage.conflict.finish_step(shared=stage.shared)
        if self.recipe.optimizer.grad_clip is not None:
            trainable = [p for g in stage.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(trainable, self.recipe.optimizer.grad_clip)
        lr = stage.optimizer.param_groups[0]["lr"]
        stage.optimizer.step()
        stage.schedule.step()
        stage.replay.observe(step=state.step_in_stage, losses=losses)
        stage.weighting.observe(
            step=state.step_in_stage, losses=losses, task_gradients=task_gradients
        )
        weights = stage.weighting.current_weights()
        return {
            "step": state.global_step + 1,
            "stage": stage.spec.name,
            **{f"loss/{name}": value for name, value in losses.items()},
            "lr": lr,
            "step_time": time.perf_counter() - started,
            **{f"weight/{name}": w for name, w in weights.items() if len(weights) > 1},
            **diagnostics,
        }

    def _task_backward(
        self, stage: StageRun, state: TrainState, streams: dict, name: str, order: int
    ) -> float:
        """``accumulate`` micro-batches of task ``name``, one backward each, gradients summed
        (of the mean loss); only the last backward synchronises the ranks. Returns the mean loss.
        """
        task, k = self.c.tasks[name], stage.spec.accumulate
        forward = self.parallel.forward_fn()
        total = 0.0
        for micro in range(k):
            # Seeds differ per rank so prompts differ across a rank's share; rank 0 keeps the
            # single-process seed.
            generator = torch.Generator().manual_seed(
                self.recipe.seed * 1_000_003
                + state.global_step * 101
                + order
                + micro * 7_919
                + self.world.rank * 104_729
            )
            with self.parallel.sync(micro == k - 1):
                loss = task_loss(
                    task,
                    streams[name].next(),
                    model=self.c.model,
                    resolution=self._resolution(stage.spec, name, state.step_in_stage),
                    generator=generator,
                    device=self.c.device,
                    forward=forward,
                )
                (stage.weighting.weighted(task=name, loss=loss) / k).backward()
            total += float(loss.detach())
        return total / k

    def _monitor(self, stage: StageRun, state: TrainState) -> dict[str, Any]:
        """Held-out losses when due; ``early_stop`` names the forgetting tasks ending the stage."""
        spec = stage.spec.monitor
        if spec is None or not self.monitor_for(stage).due(state.step_in_stage + 1):
            return {}
        monitor = self.monitor_for(stage)
        losses = monitor.measure(
            model=self.c.model,
            tasks=stage.spec.tasks,
            resolution_of=lambda task: self._resolution(stage.spec, task, 0),
            device=self.c.device,
        )
        self.parallel.reshard()
        stage.replay.observe_heldout(step=state.step_in_stage, losses=losses)
        out: dict[str, Any] = {f"heldout/{name}": value for name, value in losses.items()}
        forgotten = monitor.forgetting(losses)
        if forgotten and spec.early_stopping:
            out["early_stop"] = ",".join(forgotten)
        return out

    def monitor_for(self, stage: StageRun) -> ForgettingMonitor:
        if self.monitor is None or self.monitor.spec is not stage.spec.monitor:
            assert stage.spec.monitor is not None
            self.monitor = ForgettingMonitor(
                spec=stage.spec.monitor, tasks=self.c.tasks, seed=self.recipe.seed
            )
            if self._saved_monitor is not None:
                self.monitor.load_state_dict(self._saved_monitor)
        return self.monitor

    def _after_step(self, stage: StageRun, state: TrainState, streams: dict, metrics: dict) -> None:
        state.global_step += 1
        state.step_in_stage += 1
        if state.global_step % self.recipe.logging.every == 0 and self.world.is_main:
            with self.metrics_path.open("a") as f:
                f.write(json.dumps(metrics) + "\n")
        if state.global_step % self.recipe.checkpointing.every == 0:
            self._checkpoint(state, streams, stage)

    def _resolution(self, stage: StageSpec, task: str, step: int) -> int:
        chosen = stage.resolution.get(task, self.recipe.tasks[task].resolution)
        sizes = chosen if isinstance(chosen, list) else [chosen]
        return sizes[step % len(sizes)]

    def _start_stage(self, index: int, saved: dict[str, Any] | None) -> StageRun:
        self.parallel.reshard()
        # Sharding swapped the parameter objects: frozen-by-design is keyed by name.
        by_design = {id(p): self._trainable_names[n] for n, p in self.c.model.named_parameters()}
        stage = build_stage(self.c, self.recipe.stages[index], trainable_by_design=by_design)
        self.parallel.start_stage()
        self.monitor, self._saved_monitor = None, None
        if saved is not None:
            stage.load_state_dict(saved)
            self._saved_monitor = saved.get("monitor")
        return stage

    def _open_streams(self, state: TrainState) -> dict[str, BatchStream]:
        return {
            name: self._stream(name, seed=self.recipe.seed + index, start=state.streams.get(name))
            for index, name in enumerate(self.c.tasks)
        }

    def _stream(self, name: str, *, seed: int, start: dict[str, int] | None = None) -> BatchStream:
        """Batches of task ``name``'s data, this rank's share of each."""
        task = self.c.tasks[name]
        return BatchStream(
            task.dataset,
            batch_size=task.spec.batch_size,
            seed=seed,
            num_workers=task.spec.num_workers,
            start=start,
            rank=self.world.rank,
            world_size=self.world.size,
        )

    def _estimate_normalizers(self, describe: Callable[[str], None]) -> None:
        """Each target normaliser's statistics, from its own stream of the task's data (the
        training streams stay untouched), before the first step; a no-op once frozen."""
        for index, (name, task) in enumerate(self.c.tasks.items()):
            if name not in self.c.model.normalizers or self.c.model.normalizers[name].frozen:
                continue
            stream = self._stream(name, seed=self.recipe.seed + 7_919 * (index + 1))
            describe(f"estimating the {name} task's target statistics")
            estimate_target_statistics(
                task,
                stream.next,
                model=self.c.model,
                resolutions=task.spec.resolutions(),
                generator=torch.Generator().manual_seed(self.recipe.seed + index),
                device=self.c.device,
            )

    def _initial_state(self, resume: bool) -> tuple[TrainState, dict[str, Any] | None]:
        last = find_last(self.checkpoints)
        if not resume:
            if last is not None or self.metrics_path.exists():
                raise FileExistsError(
                    f"{self.output_dir} already holds a run; pass --resume to continue it, "
                    "or choose another --output"
                )
            if self.world.is_main:
                self.output_dir.mkdir(parents=True, exist_ok=True)
            return TrainState(), None
        if last is None:
            raise FileNotFoundError(
                f"--resume: no checkpoint under {self.checkpoints}; start without --resume"
            )
        weights, saved = load_checkpoint(last)
        self.c.model.load_state_dict(weights)
        torch.set_rng_state(saved["rng"])
        state = TrainState(**saved["state"])
        if self.world.is_main:
            self._truncate_metrics(state.global_step)
        return state, saved.get("stage")

    def _parallelise(self) -> None:
        """Wrap or shard the model, after the resumed weights are in (a checkpoint holds the full
        model)."""
        self.parallel = Parallel(
            self.c.model,
            world=self.world,
            strategy=self.recipe.distributed.strategy,
            device=self.c.device,
        )

    def _check_parallel_support(self) -> None:
        if not (self.world.distributed and self.recipe.distributed.strategy == "fsdp"):
            return
        issues = [
            Issue(
                f"stages.{i}",
                f"conflict {stage.conflict.type!r} / weighting {stage.weighting.type!r} need "
                "whole per-task gradients, which FSDP shards; use distributed.strategy ddp",
            )
            for i, stage in enumerate(self.recipe.stages)
            if CONFLICT.get(stage.conflict.type).needs_task_gradients
            or WEIGHTING.get(stage.weighting.type).needs_task_gradients
        ]
        if issues:
            raise RecipeError(self.recipe.name, issues)

    def _truncate_metrics(self, step: int) -> None:
        """Drop metric lines a crashed run wrote after its last checkpoint."""
        if not self.metrics_path.exists():
            return
        lines = self.metrics_path.read_text().splitlines()
        kept = [line for line in lines if line and json.loads(line)["step"] <= step]
        self.metrics_path.write_text("".join(line + "\n" for line in kept))

    def _checkpoint(self, state: TrainState, streams: dict, stage: StageRun | None) -> None:
        """Every rank gathers (FSDP shards are collective); rank 0 writes the single-process
        format; the others wait so nobody reads a half-written run folder."""
        state.streams = {name: stream.position() for name, stream in streams.items()}
        saved = {"state": asdict(state), "rng": torch.get_rng_state(), "stage": None}
        if stage is not None:
            saved["stage"] = stage.state_dict()
            if self.monitor is not None:
                saved["stage"]["monitor"] = self.monitor.state_dict()
        self.parallel.reshard()
        if self.world.is_main or self.parallel.sharded:  # gathering shards takes every rank
            weights = full_model_state(self.c.model)
        if self.world.is_main:
            save_checkpoint(
                self.checkpoints,
                step=state.global_step,
                model=weights,
                state=saved,
                recipe_yaml=self.recipe_yaml,
                keep=self.recipe.checkpointing.keep,
            )
        barrier(self.world)


def _describe(metrics: dict[str, Any]) -> str:
    losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    return f"{metrics['stage']} {losses}"


def _progress(*, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
