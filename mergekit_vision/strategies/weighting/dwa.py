"""Dynamic Weight Average: weights from how fast each task's loss has been falling."""

from __future__ import annotations

import math
from typing import Any

from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.weighting.base import WEIGHTING, LossWeighting


@WEIGHTING.register("dwa")
class DynamicWeightAverage(LossWeighting):
    """Dynamic Weight Average: more weight to tasks whose loss has been falling slower.

    Liu, Johns & Davison, "End-to-End Multi-Task Learning with Attention" (MTAN), CVPR 2019.

    The paper's epochs become windows of ``window`` steps: each task's mean loss is taken per
    window, and with ``r_t = mean_{k-1} / mean_{k-2}`` over the last two complete windows the
    multipliers are ``lambda_t = T * softmax(r / temperature)_t`` (summing to ``T``); a task whose
    loss falls slowly (``r_t`` near or above 1) gains weight. The weight applied is
    ``base_t * lambda_t``, so the recipe's weights stay the prior and the first two windows (all
    ``lambda_t = 1``) train exactly as ``static``. A task without a loss in a window keeps its
    previous window mean (ratio 1).

    Args:
        base_weights: the recipe's task weights.
        temperature: softness of the softmax (the paper's ``T = 2``).
        window: steps per window (the paper's epoch).
    """

    class Params(PluginParams):
        temperature: float = Field(2.0, gt=0.0)
        window: int = Field(100, gt=0)

    def __init__(
        self, *, base_weights: dict[str, float], temperature: float = 2.0, window: int = 100
    ):
        super().__init__(base_weights=base_weights)
        self.temperature, self.window = temperature, window
        self.tasks = list(base_weights)
        self._sums: dict[str, float] = {}
        self._counts: dict[str, int] = {}
        self._steps_in_window = 0
        self.history: dict[str, list[float]] = {t: [] for t in self.tasks}
        self.multipliers = {t: 1.0 for t in self.tasks}

    def weighted(self, *, task: str, loss: Tensor) -> Tensor:
        return self.base_weights[task] * self.multipliers[task] * loss

    def observe(
        self,
        *,
        step: int,
        losses: dict[str, float],
        task_gradients: dict[str, Tensor] | None = None,
    ) -> None:
        for task, loss in losses.items():
            self._sums[task] = self._sums.get(task, 0.0) + loss
            self._counts[task] = self._counts.get(task, 0) + 1
        self._steps_in_window += 1
        if self._steps_in_window < self.window:
            return
        for task in self.tasks:
            if self._counts.get(task):
                mean = self._sums[task] / self._counts[task]
            elif self.history[task]:
                mean = self.history[task][-1]
            else:
                continue
            self.history[task] = (self.history[task] + [mean])[-2:]
        self._sums, self._counts, self._steps_in_window = {}, {}, 0
        self.multipliers = self._multipliers()

    def _multipliers(self) -> dict[str, float]:
        ratios = {
            t: h[-1] / max(h[-2], 1e-12) if len(h) == 2 else 1.0 for t, h in self.history.items()
        }
        top = max(ratios.values())
        exps = {t: math.exp((r - top) / self.temperature) for t, r in ratios.items()}
        total = sum(exps.values())
        return {t: len(self.tasks) * e / total for t, e in exps.items()}

    def current_weights(self) -> dict[str, float]:
        return {t: self.base_weights[t] * self.multipliers[t] for t in self.tasks}

    def state_dict_extra(self) -> dict[str, Any]:
        return {
            "sums": dict(self._sums),
            "counts": dict(self._counts),
            "steps_in_window": self._steps_in_window,
            "history": {t: list(h) for t, h in self.history.items()},
        }

    def load_state_dict_extra(self, state: dict[str, Any]) -> None:
        self._sums, self._counts = dict(state["sums"]), dict(state["counts"])
        self._steps_in_window = int(state["steps_in_window"])
        self.history = {t: list(state["history"].get(t, [])) for t in self.tasks}
        self.multipliers = self._multipliers()
