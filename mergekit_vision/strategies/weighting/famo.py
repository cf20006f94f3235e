"""FAMO: balance the tasks' log-loss decrease at O(1) cost per step."""

from __future__ import annotations

import math
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.weighting.base import WEIGHTING, LossWeighting

_EPS = 1e-8  # floor of a loss before taking its log (FAMO's min-loss offset, here 0)
_BETAS = (0.9, 0.999)  # Adam on the logits, as the official implementation


@WEIGHTING.register("famo")
class FAMO(LossWeighting):
    """FAMO: weights that balance the tasks' log-loss decrease, at O(1) cost per step.

    Liu et al., "FAMO: Fast Adaptive Multitask Optimization", NeurIPS 2023.

    Task weights ``z = softmax(xi + log base)`` (the recipe weights are the prior; ``xi`` starts at
    0). The update follows ``sum_t z_t log L_t`` rescaled: the scalar backpropagated for task ``t``
    is ``S * z_t / (c * L_t) * L_t`` with ``L_t`` detached in the factor, ``c = sum_j z_j / L_j``
    and ``S`` the sum of the recipe weights, so the effective weights sum to about ``S`` as with
    ``static``. After each step, ``delta_t = log L_t(prev) - log L_t(now)`` and the logits take an
    Adam step (``lr``, L2 ``weight_decay`` pulling ``xi`` back to the prior) along
    ``d xi = J_softmax^T delta = z * (delta - z . delta)``: tasks whose log-loss fell less than
    average gain weight. No per-task gradients are needed (the O(1) cost of the paper).

    Simplifications, because the engine runs one forward/backward per task per step: ``delta``
    compares consecutive steps' losses (different batches) instead of re-evaluating the same batch
    after the update (an extra forward pass); ``c`` uses the previous step's losses; the first
    step (no loss history) uses the recipe weights; a task missing from a step has ``delta = 0``.

    Args:
        base_weights: the recipe's task weights.
        lr: Adam step size of the logits (paper: 0.025).
        weight_decay: L2 pull of the logits towards the prior (paper's gamma: 0.001).
    """

    class Params(PluginParams):
        lr: float = Field(0.025, gt=0.0)
        weight_decay: float = Field(1e-3, ge=0.0)

    def __init__(
        self, *, base_weights: dict[str, float], lr: float = 0.025, weight_decay: float = 1e-3
    ):
        super().__init__(base_weights=base_weights)
        self.lr, self.weight_decay = lr, weight_decay
        self.tasks = list(base_weights)
        n = len(self.tasks)
        prior = [math.log(max(base_weights[t], 1e-12)) for t in self.tasks]
        self.register_buffer("prior", torch.tensor(prior, dtype=torch.float64))
        for name in ("logits", "adam_m", "adam_v"):
            self.register_buffer(name, torch.zeros(n, dtype=torch.float64))
        self.register_buffer("adam_step", torch.zeros((), dtype=torch.long))
        self.last_losses: dict[str, float] = {}

    def task_weights(self) -> Tensor:
        """``z``: ``[T]`` softmax of the logits over the tasks, float64."""
        return torch.softmax(self.logits + self.prior, dim=0)

    def _factors(self) -> dict[str, float] | None:
        """``S * z_t / c``; the weight of task ``t`` is this over its loss. None without history."""
        if set(self.last_losses) != set(self.tasks):
            return None
        z = self.task_weights().tolist()
        c = sum(zt / max(self.last_losses[t], _EPS) for zt, t in zip(z, self.tasks, strict=True))
        scale = sum(self.base_weights.values())
        return {t: scale * zt / c for zt, t in zip(z, self.tasks, strict=True)}

    def weighted(self, *, task: str, loss: Tensor) -> Tensor:
        factors = self._factors()
        if factors is None:
            return self.base_weights[task] * loss
        return factors[task] / max(float(loss.detach()), _EPS) * loss

    def observe(
        self,
        *,
        step: int,
        losses: dict[str, float],
        task_gradients: dict[str, Tensor] | None = None,
    ) -> None:
        delta = torch.tensor(
            [
                math.log(max(self.last_losses[t], _EPS)) - math.log(max(losses[t], _EPS))
                if t in losses and t in self.last_losses
                else 0.0
                for t in self.tasks
            ],
            dtype=torch.float64,
        )
        self.last_losses.update(losses)
        z = self.task_weights().cpu()
        grad = z * (delta - z @ delta) + self.weight_decay * self.logits.cpu()
        self._adam_step(grad)

    def _adam_step(self, grad: Tensor) -> None:
        beta1, beta2 = _BETAS
        device = self.logits.device
        self.adam_step += 1
        t = int(self.adam_step)
        self.adam_m.mul_(beta1).add_((1 - beta1) * grad.to(device))
        self.adam_v.mul_(beta2).add_((1 - beta2) * grad.to(device) ** 2)
        m_hat = self.adam_m / (1 - beta1**t)
        v_hat = self.adam_v / (1 - beta2**t)
        self.logits.sub_(self.lr * m_hat / (v_hat.sqrt() + 1e-8))

    def current_weights(self) -> dict[str, float]:
        factors = self._factors()
        if factors is None:
            return dict(self.base_weights)
        return {t: factors[t] / max(self.last_losses[t], _EPS) for t in self.tasks}

    def state_dict_extra(self) -> dict[str, Any]:
        return {"last_losses": dict(self.last_losses)}

    def load_state_dict_extra(self, state: dict[str, Any]) -> None:
        self.last_losses = dict(state.get("last_losses", {}))
