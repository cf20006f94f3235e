"""The forgetting signal: each task's distillation loss on fixed held-out batches.

SAM-CLIP (arXiv 2310.15308, sec. 4) stopped multi-task distillation at epoch 16 of 20 because the
SAM ability (COCO mask mAP) started to drop. Here that signal is first-class: every ``every``
steps each task's loss is measured on the same held-out batches; a task whose loss stays above
``(1 + tolerance)`` x its best for ``patience`` readings in a row is forgetting, and with
``early_stopping`` the stage ends there. Replay schedulers see every reading.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import DataLoader

from mergekit_vision.data.base import collate_samples
from mergekit_vision.engine.build import BuiltTask, MergedModel
from mergekit_vision.engine.step import task_loss
from mergekit_vision.recipe.schema import MonitorSpec


class ForgettingMonitor:
    """Held-out losses of every task on fixed batches, and which tasks are forgetting."""

    def __init__(self, *, spec: MonitorSpec, tasks: dict[str, BuiltTask], seed: int):
        self.spec, self.tasks, self.seed = spec, tasks, seed
        self.batches = {name: self._fixed_batches(task) for name, task in tasks.items()}
        self.best: dict[str, float] = {}
        self.strikes: dict[str, int] = {}

    def _fixed_batches(self, task: BuiltTask) -> list[dict[str, Any]]:
        """The first batches of the held-out data (or, without it, of the training data)."""
        dataset = task.heldout if task.heldout is not None else task.dataset
        loader = DataLoader(dataset, batch_size=task.spec.batch_size, collate_fn=collate_samples)
        return list(itertools.islice(loader, self.spec.batches))

    def due(self, step: int) -> bool:
        return step % self.spec.every == 0

    @torch.no_grad()
    def measure(
        self, *, model: MergedModel, tasks: list[str], resolution_of, device: torch.device
    ) -> dict[str, float]:
        """Mean held-out loss of each of ``tasks`` (unweighted; normalizers left as they are)."""
        losses = {}
        for name in tasks:
            values = []
            for index, batch in enumerate(self.batches[name]):
                generator = torch.Generator().manual_seed(self.seed * 7919 + index)
                loss = task_loss(
                    self.tasks[name],
                    batch,
                    model=model,
                    resolution=resolution_of(name),
                    generator=generator,
                    device=device,
                    update_statistics=False,
                )
                values.append(float(loss))
            losses[name] = sum(values) / len(values)
        return losses

    def forgetting(self, losses: dict[str, float]) -> list[str]:
        """Record a reading; the tasks that have been forgetting for ``patience`` readings."""
        forgotten = []
        for name, loss in losses.items():
            best = self.best.get(name)
            if best is None or loss < best:
                self.best[name], self.strikes[name] = loss, 0
            elif loss > best * (1 + self.spec.tolerance):
                self.strikes[name] = self.strikes.get(name, 0) + 1
            else:
                self.strikes[name] = 0
            if self.strikes[name] >= self.spec.patience:
                forgotten.append(name)
        return forgotten

    def state_dict(self) -> dict[str, Any]:
        return {"best": dict(self.best), "strikes": dict(self.strikes)}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.strikes = dict(state["best"]), dict(state["strikes"])


class StageMonitor:
    """The forgetting monitor of the running stage, as the engine loop drives it.

    The :class:`ForgettingMonitor` is built at the stage's first step (it reads its fixed
    batches then) and restored from the stage's checkpoint; a stage without ``monitor`` reads
    nothing.

    Args:
        spec: the stage's ``monitor``, or None.
        tasks: the built tasks.
        seed: the recipe's seed.
        saved: the monitor's state saved with the stage, when resuming.
    """

    def __init__(
        self,
        spec: MonitorSpec | None,
        *,
        tasks: dict[str, BuiltTask],
        seed: int,
        saved: dict[str, Any] | None = None,
    ):
        self.spec, self.tasks, self.seed, self._saved = spec, tasks, seed, saved
        self._monitor: ForgettingMonitor | None = None

    @property
    def monitor(self) -> ForgettingMonitor:
        if self._monitor is None:
            assert self.spec is not None
            self._monitor = ForgettingMonitor(spec=self.spec, tasks=self.tasks, seed=self.seed)
            if self._saved is not None:
                self._monitor.load_state_dict(self._saved)
        return self._monitor

    def due(self, steps_done: int) -> bool:
        """Whether a reading is due once the stage has taken ``steps_done`` steps."""
        return self.spec is not None and self.monitor.due(steps_done)

    def read(
        self,
        *,
        model: MergedModel,
        tasks: list[str],
        resolution_of: Callable[[str], int],
        device: torch.device,
    ) -> tuple[dict[str, float], dict[str, Any]]:
        """(held-out losses, their metrics); ``early_stop`` names the forgetting tasks that end
        the stage when the spec stops early."""
        assert self.spec is not None
        losses = self.monitor.measure(
            model=model, tasks=tasks, resolution_of=resolution_of, device=device
        )
        metrics: dict[str, Any] = {f"heldout/{name}": value for name, value in losses.items()}
        forgotten = self.monitor.forgetting(losses)
        if forgotten and self.spec.early_stopping:
            metrics["early_stop"] = ",".join(forgotten)
        return losses, metrics

    def state_dict(self) -> dict[str, Any] | None:
        """The monitor's state for the stage's checkpoint (None before its first step)."""
        return None if self._monitor is None else self._monitor.state_dict()
