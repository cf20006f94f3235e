"""The replay-scheduler contract: which tasks (and how many samples of each) run at a step."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

from mergekit_vision.registry import PluginParams, Registry


@dataclass(frozen=True)
class TaskDraw:
    """One task batch of a step; the engine multiplies the task's weighted loss by
    ``loss_scale`` (a scheduler that drops tasks renormalises the kept ones with it)."""

    task: str
    batch_size: int
    loss_scale: float = 1.0


class ReplayScheduler(ABC):
    """Decides the task batches of each optimiser step.

    ``batch_sizes`` maps each task of the stage to its recipe batch size. Adaptive schedulers may
    read the per-task losses the engine reports through :meth:`observe`; their state is saved in
    checkpoints through :meth:`state_dict`.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    # 1 for schedulers whose every step runs a single task (conflict strategies then see one row)
    tasks_per_step: ClassVar[int | None] = None

    def __init__(self, *, batch_sizes: dict[str, int]):
        self.batch_sizes = dict(batch_sizes)

    @classmethod
    def build(cls, params: Any, *, batch_sizes: dict[str, int]) -> ReplayScheduler:
        return cls(batch_sizes=batch_sizes, **params.model_dump())

    @abstractmethod
    def draws(self, *, step: int) -> list[TaskDraw]:
        """The task batches of step ``step`` (0-based within the stage), in backward order."""

    def observe(self, *, step: int, losses: dict[str, float]) -> None:
        """Per-task losses of the step just taken (unweighted)."""

    def observe_heldout(self, *, step: int, losses: dict[str, float]) -> None:
        """Per-task held-out distillation losses (the forgetting signal), when measured."""

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass


REPLAY: Registry[ReplayScheduler] = Registry("replay")
