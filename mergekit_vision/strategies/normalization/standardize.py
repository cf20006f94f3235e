"""Per-dimension standardisation of teacher targets."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.normalization.base import (
    NORMALIZATION,
    ScaleShiftNormalizer,
)


@NORMALIZATION.register("standardize")
class Standardize(ScaleShiftNormalizer):
    """Standardisation: ``(y - mu) / sigma`` per feature dimension.

    The per-teacher standardisation baseline of AM-RADIO (Ranzinger et al., CVPR 2024) and of
    PHI-S (arXiv 2410.01680, sec. 3).

    ``mu`` and ``sigma`` come from running float64 sums over every target vector (all leading
    dimensions flattened) of the first ``estimate_steps`` :meth:`update` calls. Until the first
    update the map is the identity; during estimation it uses the running estimates.

    Args:
        dim: feature width ``D``; targets are ``[..., D]``.
        estimate_steps: updates that feed the statistics before they freeze.
        eps: floor of ``sigma`` (constant dimensions are only centred).
    """

    class Params(PluginParams):
        estimate_steps: int = Field(100, gt=0)
        eps: float = Field(1e-6, gt=0.0)

    def __init__(self, *, dim: int, estimate_steps: int = 100, eps: float = 1e-6):
        super().__init__(dim=dim, estimate_steps=estimate_steps)
        self.eps = eps
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))
        self.register_buffer("total", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("total_sq", torch.zeros(dim, dtype=torch.float64))

    def update(self, targets: Tensor) -> None:
        if self.frozen:
            return
        flat = targets.detach().reshape(-1, self.dim).to(self.total.device, torch.float64)
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.total_sq += (flat * flat).sum(0)
        self.updates += 1

    def statistics(self) -> tuple[Tensor, Tensor]:
        """``mu`` and ``sigma``, ``[D]`` float64 each."""
        if float(self.count) == 0:
            return torch.zeros_like(self.total), torch.ones_like(self.total)
        mean = self.total / self.count
        var = (self.total_sq / self.count - mean * mean).clamp_min(0.0)
        return mean, var.sqrt().clamp_min(self.eps)
