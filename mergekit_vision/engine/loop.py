"""The training loop: stages of steps; each step runs the replay scheduler's task batches, one
backward each, lets the conflict strategy combine the shared gradients, then one optimiser step.

Everything a step needs is injected (replay scheduler, conflict strategy, loss weighting,
optimiser, streams), so the loop itself stays short; the run folder (:mod:`.run_folder`) holds the
state needed to resume exactly, the forgetting monitor is wired in :mod:`.monitor`, and the
streams open in :mod:`.streams`.

Under ``torchrun`` every rank runs this same loop on its share of each batch (see
:mod:`.distributed`): each task's gradient is averaged over the ranks before the
conflict strategy sees it, losses are averaged before strategies observe them, and only rank 0
writes metrics, progress and checkpoints. With ``accumulate: k`` each task runs k micro-batches
per step, their mean loss's gradient being one per-task row.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from mergekit_vision.engine.build import Components
from mergekit_vision.engine.calibration import calibrate_targets
from mergekit_vision.engine.distributed import (
    Parallel,
    World,
    barrier,
    full_model_state,
    mean_over_ranks,
)
from mergekit_vision.engine.monitor import StageMonitor
from mergekit_vision.engine.nonfinite import NonFiniteGuard, check_finite_weights
from mergekit_vision.engine.performance import apply_performance
from mergekit_vision.engine.run_folder import RunFolder, TrainState
from mergekit_vision.engine.skips import SkipLedger
from mergekit_vision.engine.stage import (
    StageRun,
    build_stage,
    check_parallel_support,
    stage_steps,
)
from mergekit_vision.engine.step import Lap, no_lap, task_loss
from mergekit_vision.engine.streams import BatchStream, open_streams
from mergekit_vision.recipe.resolution import reference_side, resolution_sides, side_at
from mergekit_vision.recipe.schema import StageSpec
from mergekit_vision.trackers.group import TrackerGroup

__all__ = ["Engine", "TrainState"]


class Engine:
    """Trains built components through the recipe's stages.

    :meth:`run` is the loop: it starts or resumes the run folder, wraps the model for data
    parallelism, and steps through each stage, with the forgetting monitor's readings, metrics
    lines and checkpoints in between. :meth:`step` is the one training step, also driven from
    outside the loop (``vmerge bench``) with :meth:`build_stage` and :meth:`open_streams`.

    Args:
        components: what the recipe names, built.
        output_dir: the run folder (needed by :meth:`run` only).
        recipe_yaml: the resolved recipe, saved in the run folder and every checkpoint.
        world: this process's place under ``torchrun`` (one process by default).
        trackers: experiment trackers handed every metrics line (the caller closes them).
    """

    def __init__(
        self,
        components: Components,
        *,
        output_dir: Path | None = None,
        recipe_yaml: str = "",
        world: World | None = None,
        trackers: TrackerGroup | None = None,
    ):
        self.c = components
        apply_performance(components.model, components.recipe.performance, device=components.device)
        self.world = world or World()
        self.recipe = components.recipe
        self.folder = None
        if output_dir is not None:
            self.folder = RunFolder(
                output_dir, recipe_yaml=recipe_yaml, is_main=self.world.is_main, trackers=trackers
            )
        # What a plugin froze by design (e.g. SAM's prompt encoder) stays frozen in every stage.
        self._trainable_names = {n: p.requires_grad for n, p in self.c.model.named_parameters()}
        # one process until run() wraps or shards (steps driven from outside run() stay local)
        self.parallel = Parallel(self.c.model, world=World(), strategy="ddp", device=self.c.device)
        self.streams: dict[str, BatchStream] | None = None
        self.monitor = StageMonitor(None, tasks=self.c.tasks, seed=self.recipe.seed)
        self.nonfinite = NonFiniteGuard(bound=self.recipe.optimizer.max_nonfinite_steps)
        self.skips: SkipLedger | None = None  # counts undecodable samples once run() starts

    def run(
        self, *, max_steps: int | None = None, resume: bool = False, progress: bool = True
    ) -> TrainState:
        """Train every stage from the start, or from the run folder's last checkpoint.

        ``max_steps`` is a global step number ("stop at step N", the same on every resume); the
        run stops there with a checkpoint.
        """
        if self.folder is None:
            raise ValueError("Engine.run needs an output_dir (the run folder)")
        sharded = self.world.distributed and self.recipe.distributed.strategy == "fsdp"
        check_parallel_support(self.recipe, sharded=sharded)
        state, saved = self.folder.begin(resume=resume, model=self.c.model)
        barrier(self.world)  # every rank has read the run folder before rank 0 writes to it
        self._parallelise()
        self.folder.write_recipe()
        streams = self.open_streams(state)
        self.skips = SkipLedger(
            bound=self.recipe.data.max_skip_fraction,
            saved=state.skips,
            lengths={name: stream.length for name, stream in streams.items()},
            folder=self.folder,
            world=self.world,
        )
        total = sum(stage_steps(self.c, s) for s in self.recipe.stages)
        shown = progress and self.recipe.logging.progress and self.world.is_main
        with _progress(enabled=shown) as bar:
            bar_task = bar.add_task("training", total=total, completed=state.global_step)
            show = functools.partial(bar.update, bar_task)
            self._estimate_normalizers(lambda text: show(description=text))
            for index in range(state.stage_index, len(self.recipe.stages)):
                stage = self._start_stage(index, saved if index == state.stage_index else None)
                saved = None
                if not self._run_stage(stage, state, budget=max_steps, show=show):
                    return state
                state.stage_index, state.step_in_stage = index + 1, 0
            self._checkpoint(state, None)
        return state

    def _run_stage(
        self, stage: StageRun, state: TrainState, *, budget: int | None, show: Callable[..., None]
    ) -> bool:
        """The stage's remaining steps; False when the step budget stopped the run (saved)."""
        while state.step_in_stage < stage.steps:
            if budget is not None and state.global_step >= budget:
                self._checkpoint(state, stage)
                return False
            metrics = self.step(stage, state)
            assert self.skips is not None and self.streams is not None
            metrics.update(self.skips.update(self.streams, step=state.global_step + 1))
            metrics.update(self._read_monitor(stage, state))
            show(advance=1, description=_describe(metrics))
            self._after_step(stage, state, metrics)
            if "early_stop" in metrics:
                show(advance=stage.steps - state.step_in_stage)
                break
        return True

    def step(self, stage: StageRun, state: TrainState, *, lap: Lap = no_lap) -> dict[str, Any]:
        """One training step of ``stage`` at ``state`` (not advanced here); its metrics line.

        The replay scheduler's task batches run one backward each (weighted, under the recipe's
        autocast); the conflict strategy combines the recorded per-task gradients; then gradient
        clipping, the optimiser and LR schedule, and the strategies observe the losses. ``lap``
        is called at the end of each phase (:data:`~mergekit_vision.engine.step.PHASES`). Without
        :meth:`open_streams` the streams start at the beginning of the data.

        A step whose loss (any task's, averaged over the ranks) is NaN or inf updates nothing:
        its gradients are dropped, the optimiser, schedule and strategies stay where they were,
        and ``nonfinite_steps`` counts it; ``optimizer.max_nonfinite_steps`` of them in a row
        raise :class:`~mergekit_vision.engine.nonfinite.NonFiniteError`.
        """
        started = time.perf_counter()
        streams = self.streams if self.streams is not None else self.open_streams(TrainState())
        stage.optimizer.zero_grad(set_to_none=True)
        stage.gradients.begin_step()
        local: dict[str, float] = {}
        sides: dict[str, int] = {}
        for order, draw in enumerate(stage.replay.draws(step=state.step_in_stage)):
            stream = streams[draw.task]
            side = self._resolution(stage.spec, draw.task, state.step_in_stage)
            if len(resolution_sides(self._chosen_resolution(stage.spec, draw.task))) > 1:
                sides[f"resolution/{draw.task}"] = side  # what a varying task's step trained at
            local[draw.task] = self._task_backward(
                stage, state, stream, draw.task, order, lap, side=side, scale=draw.loss_scale
            )
            # The last micro-batch's backward averaged this task's gradient over the ranks.
            stage.gradients.after_backward(task=draw.task)
        self.parallel.sync_extra(list(stage.weighting.parameters()))
        losses = mean_over_ranks(local, self.world)  # strategies' state stays identical
        skipped = self.nonfinite.skip(losses, step=state.global_step + 1, stage=stage.spec.name)
        if skipped:
            stage.optimizer.zero_grad(set_to_none=True)
            lr, diagnostics = stage.optimizer.param_groups[0]["lr"], {}
        else:
            lr, diagnostics = self._update(stage, state, losses)
        lap("optimizer")
        weights = stage.weighting.current_weights()
        return {
            "step": state.global_step + 1,
            "stage": stage.spec.name,
            **{f"loss/{name}": value for name, value in losses.items()},
            "lr": lr,
            "nonfinite_steps": state.nonfinite_steps + int(skipped),
            "step_time": time.perf_counter() - started,
            **sides,
            **{f"weight/{name}": w for name, w in weights.items() if len(weights) > 1},
            **diagnostics,
        }

    def _task_backward(
        self,
        stage: StageRun,
        state: TrainState,
        stream: BatchStream,
        name: str,
        order: int,
        lap: Lap,
        *,
        side: int,
        scale: float = 1.0,
    ) -> float:
        """``accumulate`` micro-batches of task ``name`` at resolution ``side``, one backward
        each, gradients summed (of the mean loss, times the draw's ``scale``); only the last
        backward synchronises the ranks. Returns the mean (unscaled, unweighted) loss.
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
                    stream.next(),
                    model=self.c.model,
                    resolution=side,
                    generator=generator,
                    device=self.c.device,
                    forward=forward,
                    lap=lap,
                )
                (stage.weighting.weighted(task=name, loss=loss) * scale / k).backward()
                lap("backward")
            total += float(loss.detach())
        return total / k

    def _update(
        self, stage: StageRun, state: TrainState, losses: dict[str, float]
    ) -> tuple[float, dict[str, Any]]:
        """The step's update from its recorded gradients: the conflict strategy, the optimiser,
        then the strategies observe ``losses``. Returns (the LR used, the strategy's diagnostics).
        """
        task_gradients = stage.gradients.rows()
        diagnostics = stage.conflict.finish_step(shared=stage.shared, task_gradients=task_gradients)
        lr = self._optimizer_step(stage)
        stage.replay.observe(step=state.step_in_stage, losses=losses)
        stage.weighting.observe(
            step=state.step_in_stage, losses=losses, task_gradients=task_gradients or None
        )
        return lr, diagnostics

    def _optimizer_step(self, stage: StageRun) -> float:
        """Clip, step the optimiser and the LR schedule; returns the LR the step used."""
        if self.recipe.optimizer.grad_clip is not None:
            trainable = [p for g in stage.optimizer.param_groups for p in g["params"]]
            torch.nn.utils.clip_grad_norm_(trainable, self.recipe.optimizer.grad_clip)
        lr = stage.optimizer.param_groups[0]["lr"]
        stage.optimizer.step()
        stage.schedule.step()
        return lr

    def _read_monitor(self, stage: StageRun, state: TrainState) -> dict[str, Any]:
        """Held-out losses when due; ``early_stop`` names the forgetting tasks ending the stage."""
        if not self.monitor.due(state.step_in_stage + 1):
            return {}
        losses, metrics = self.monitor.read(
            model=self.c.model,
            tasks=stage.spec.tasks,
            resolution_of=lambda task: reference_side(self._chosen_resolution(stage.spec, task)),
            device=self.c.device,
        )
        self.parallel.reshard()
        stage.replay.observe_heldout(step=state.step_in_stage, losses=losses)
        return metrics

    def _after_step(self, stage: StageRun, state: TrainState, metrics: dict[str, Any]) -> None:
        assert self.folder is not None
        state.global_step += 1
        state.step_in_stage += 1
        state.nonfinite_steps = metrics["nonfinite_steps"]
        if state.global_step % self.recipe.logging.every == 0:
            self.folder.log(metrics)
        if state.global_step % self.recipe.checkpointing.every == 0:
            self._checkpoint(state, stage)

    def _chosen_resolution(self, stage: StageSpec, task: str) -> Any:
        """The stage's resolution for ``task`` (its override, else the task's own)."""
        return stage.resolution.get(task, self.recipe.tasks[task].resolution)

    def _resolution(self, stage: StageSpec, task: str, step: int) -> int:
        """The side ``task`` trains at in the stage's step ``step``: a list cycles, a stochastic
        resolution draws from (run seed, stage, task, step), so a resumed run draws the same."""
        chosen = self._chosen_resolution(stage, task)
        return side_at(chosen, step=step, seed=self.recipe.seed, key=f"{stage.name}/{task}")

    def build_stage(self, spec: StageSpec) -> StageRun:
        """``spec`` built on this engine's model: it trains what the stage names, except what a
        plugin froze by design (whatever an earlier stage froze)."""
        # Sharding swapped the parameter objects: frozen-by-design is keyed by name.
        by_design = {id(p): self._trainable_names[n] for n, p in self.c.model.named_parameters()}
        return build_stage(self.c, spec, trainable_by_design=by_design)

    def _start_stage(self, index: int, saved: dict[str, Any] | None) -> StageRun:
        self.parallel.reshard()
        stage = self.build_stage(self.recipe.stages[index])
        self.parallel.start_stage()
        self.monitor = StageMonitor(
            stage.spec.monitor,
            tasks=self.c.tasks,
            seed=self.recipe.seed,
            saved=None if saved is None else saved.get("monitor"),
        )
        if saved is not None:
            stage.load_state_dict(saved)
        return stage

    def open_streams(self, state: TrainState) -> dict[str, BatchStream]:
        """Every task's training stream at ``state``'s positions (this rank's share), used by
        the following steps."""
        self.streams = open_streams(
            self.c.tasks,
            seed=self.recipe.seed,
            positions=state.streams,
            rank=self.world.rank,
            world_size=self.world.size,
        )
        return self.streams

    def _estimate_normalizers(self, describe: Callable[[str], None]) -> None:
        """Teacher upsamplers fitted and target statistics estimated before the first step
        (:mod:`.calibration`)."""
        calibrate_targets(
            self.c.tasks,
            model=self.c.model,
            seed=self.recipe.seed,
            device=self.c.device,
            rank=self.world.rank,
            world_size=self.world.size,
            describe=describe,
        )

    def _parallelise(self) -> None:
        """Wrap or shard the model, after the resumed weights are in (a checkpoint holds the full
        model)."""
        self.parallel = Parallel(
            self.c.model,
            world=self.world,
            strategy=self.recipe.distributed.strategy,
            device=self.c.device,
        )

    def _checkpoint(self, state: TrainState, stage: StageRun | None) -> None:
        """Every rank gathers (FSDP shards are collective); rank 0 writes the single-process
        format; the others wait so nobody reads a half-written run folder."""
        assert self.folder is not None and self.streams is not None
        state.streams = {name: stream.position() for name, stream in self.streams.items()}
        if self.skips is not None:
            state.skips = self.skips.state_dict()
        saved = None
        if stage is not None:
            saved = stage.state_dict()
            monitor = self.monitor.state_dict()
            if monitor is not None:
                saved["monitor"] = monitor
        self.parallel.reshard()
        weights = {}
        if self.world.is_main or self.parallel.sharded:  # gathering shards takes every rank
            weights = full_model_state(self.c.model)
        # never a checkpoint of diverged weights; DDP's other ranks check their identical replica
        checked = weights or self.c.model.state_dict()
        check_finite_weights(checked.items(), step=state.global_step)
        self.folder.save(state, model=weights, stage=saved, keep=self.recipe.checkpointing.keep)
        barrier(self.world)


def _describe(metrics: dict[str, Any]) -> str:
    losses = " ".join(f"{k[5:]}={v:.4f}" for k, v in metrics.items() if k.startswith("loss/"))
    nonfinite = metrics.get("nonfinite_steps", 0)
    skipped = f" nonfinite={nonfinite}" if nonfinite else ""
    undecodable = "".join(
        f" skipped {k[8:]}={v}" for k, v in metrics.items() if k.startswith("skipped/")
    )
    return f"{metrics['stage']} {losses}{skipped}{undecodable}"


def _progress(*, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )
