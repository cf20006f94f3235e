"""DUNE's TeacherNorm: per-channel standardisation whose statistics follow training."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.normalization.base import (
    NORMALIZATION,
    ScaleShiftNormalizer,
)


@NORMALIZATION.register("teacher_norm")
class TeacherNorm(ScaleShiftNormalizer):
    """Online standardisation per channel, with statistics every training batch moves.

    The map is ``(y - mu) / sigma`` with ``mu`` and ``sigma`` moving averages.

    DUNE (Sariyildiz et al., "DUNE: Distilling a Universal Encoder from Heterogeneous 2D and 3D
    Teachers", CVPR 2025, arXiv 2503.14405) normalises each teacher's targets with running
    statistics: its TeacherNorm keeps exponential moving averages of the per-channel batch mean
    and standard deviation (of the standard deviation, not the variance).

    Each :meth:`update` takes the batch's per-channel mean ``m`` and population standard
    deviation ``s`` over all its target vectors (the batch for embeddings; batch and positions
    for feature maps, as DUNE's ``cls`` and ``patch`` normalizers do) and moves, from the identity
    ``mu = 0``, ``sigma = 1`` as DUNE starts,

        ``mu <- (1 - momentum) mu + momentum m``,  ``sigma <- (1 - momentum) sigma + momentum s``.

    Unlike ``standardize`` and ``phi_s``, the statistics never freeze: the calibration pass's
    ``estimate_steps`` batches are a warm-up (after ``n`` of them the identity start weighs
    ``(1 - momentum)^n``, so the head does not chase a scale still settling), then every
    training batch updates them too. The map and its inverse use the current statistics, with
    ``sigma`` floored at ``eps``; held-out losses and export read them without updating. They
    are buffers, so a checkpoint carries them and a resumed run continues the same averages.

    DUNE normalises a training batch by that batch's own statistics and uses the averages only
    at inference; here the averages (already updated by the batch) serve both, so training and
    export use one map, which :meth:`inverse` undoes exactly.

    Args:
        dim: feature width ``D``; targets are ``[..., D]``.
        estimate_steps: warm-up updates before the first training step.
        momentum: weight of each new batch in the averages (DUNE: 0.1).
        eps: floor of ``sigma`` (DUNE: 1e-3).
    """

    online = True

    class Params(PluginParams):
        estimate_steps: int = Field(100, gt=0)
        momentum: float = Field(0.1, gt=0.0, le=1.0)
        eps: float = Field(1e-3, gt=0.0)

    def __init__(
        self, *, dim: int, estimate_steps: int = 100, momentum: float = 0.1, eps: float = 1e-3
    ):
        super().__init__(dim=dim, estimate_steps=estimate_steps)
        self.momentum, self.eps = momentum, eps
        self.register_buffer("mean", torch.zeros(dim, dtype=torch.float64))
        self.register_buffer("std", torch.ones(dim, dtype=torch.float64))

    @torch.no_grad()
    def update(self, targets: Tensor) -> None:
        flat = targets.detach().reshape(-1, self.dim).to(self.mean.device, torch.float64)
        if flat.shape[0] == 0:
            return
        batch_mean, batch_std = flat.mean(0), flat.std(0, correction=0)
        self.mean.mul_(1.0 - self.momentum).add_(self.momentum * batch_mean)
        self.std.mul_(1.0 - self.momentum).add_(self.momentum * batch_std)
        self.updates += 1

    def statistics(self) -> tuple[Tensor, Tensor]:
        """The current ``mu`` and floored ``sigma``, ``[D]`` float64 each."""
        return self.mean, self.std.clamp_min(self.eps)
