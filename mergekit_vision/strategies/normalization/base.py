"""The teacher-target normalization contract.

Teachers' features live on very different scales (AM-RADIO: SAM's feature std is ~191x DFN
CLIP's), which silently reweights multi-teacher losses. A normalizer maps a teacher's targets to a
standard scale before the loss; its statistics are estimated from ``estimate_steps`` batches of
teacher targets before the first training step (the engine's calibration pass,
:func:`~mergekit_vision.engine.calibration.estimate_target_statistics`), then frozen; at export its
inverse folds into the head's last linear layer so the exported head predicts the teacher's raw
targets. An online normalizer (``online = True``, DUNE's TeacherNorm) keeps updating its
statistics from every training batch after that pass; its map then moves with them.
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams, Registry


class TargetNormalizer(nn.Module):
    """Args of every normalizer: ``dim`` (feature width D; targets are ``[..., D]``) and
    ``estimate_steps`` (how many :meth:`update` calls feed the statistics before they freeze)."""

    Params: ClassVar[type[PluginParams]] = PluginParams
    # True: training batches keep feeding update() after the first estimate_steps
    online: ClassVar[bool] = False

    def __init__(self, *, dim: int, estimate_steps: int):
        super().__init__()
        self.dim, self.estimate_steps = dim, estimate_steps
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    @classmethod
    def build(cls, params: Any, *, dim: int) -> TargetNormalizer:
        return cls(dim=dim, **params.model_dump())

    @property
    def frozen(self) -> bool:
        """The calibration pass is done (for an online normalizer, its warm-up)."""
        return int(self.updates) >= self.estimate_steps

    @property
    def tracking(self) -> bool:
        """Training batches feed :meth:`update`: while estimating, and always when online."""
        return self.online or not self.frozen

    def update(self, targets: Tensor) -> None:
        """Accumulate statistics of raw targets ``[..., D]`` (no-op once frozen)."""
        raise NotImplementedError

    def forward(self, targets: Tensor) -> Tensor:
        """Raw ``[..., D]`` -> normalized ``[..., D]``."""
        raise NotImplementedError

    def inverse(self, normalized: Tensor) -> Tensor:
        """Normalized ``[..., D]`` -> raw ``[..., D]``."""
        raise NotImplementedError

    def fold_into(self, linear: nn.Linear) -> nn.Linear:
        """A copy of ``linear`` whose outputs are ``inverse(linear(x))`` (export)."""
        raise NotImplementedError

    # Teacher targets are ``[B, D]`` vectors or ``[B, C, h, w]`` feature maps: the feature axis
    # is 1 (see ``TargetSpec``). These apply the ``[..., D]`` methods above along it.

    def observe(self, targets: Tensor) -> None:
        """:meth:`update` with targets ``[B, D, ...]``."""
        self.update(targets.movedim(1, -1))

    def normalize(self, targets: Tensor) -> Tensor:
        """Raw ``[B, D, ...]`` -> normalized, along the feature axis."""
        return self(targets.movedim(1, -1)).movedim(-1, 1)

    def denormalize(self, normalized: Tensor) -> Tensor:
        """Normalized ``[B, D, ...]`` -> raw (what a head trained on normalized targets means)."""
        return self.inverse(normalized.movedim(1, -1)).movedim(-1, 1)


def fold_scale_shift(linear: nn.Linear, *, scale: Tensor, shift: Tensor) -> nn.Linear:
    """A copy of ``linear`` whose outputs are ``linear(x) * scale + shift`` (``[D]`` each):
    ``W' = diag(scale) W``, ``b' = scale * b + shift``, computed in float64."""
    folded = copy.deepcopy(linear)
    scale, shift = scale.double(), shift.double()
    with torch.no_grad():
        weight = linear.weight.double()
        bias = linear.bias.double() if linear.bias is not None else torch.zeros_like(shift)
        new_bias = scale.to(bias.device) * bias + shift.to(bias.device)
        folded.weight.copy_(scale.to(weight.device)[:, None] * weight)
        if folded.bias is None:
            folded.bias = nn.Parameter(new_bias.to(linear.weight.dtype))
        else:
            folded.bias.copy_(new_bias)
    return folded


class ScaleShiftNormalizer(TargetNormalizer):
    """A per-channel ``(x - mu) / sigma`` normalizer; subclasses give :meth:`statistics`."""

    def statistics(self) -> tuple[Tensor, Tensor]:
        """``mu`` and ``sigma`` (floored), ``[D]`` each."""
        raise NotImplementedError

    def forward(self, targets: Tensor) -> Tensor:
        mean, std = (s.to(targets.device, targets.dtype) for s in self.statistics())
        return (targets - mean) / std

    def inverse(self, normalized: Tensor) -> Tensor:
        mean, std = (s.to(normalized.device, normalized.dtype) for s in self.statistics())
        return normalized * std + mean

    def fold_into(self, linear: nn.Linear) -> nn.Linear:
        """``W' = diag(sigma) W``, ``b' = sigma * b + mu``, with the statistics as they stand."""
        mean, std = self.statistics()
        return fold_scale_shift(linear, scale=std, shift=mean)


NORMALIZATION: Registry[TargetNormalizer] = Registry("normalization")
