"""Optimiser and LR schedule of a stage: parameter groups with per-group LR multipliers."""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from mergekit_vision.engine.lr_schedule import warmup_cosine

if TYPE_CHECKING:
    from mergekit_vision.recipe.schema import OptimizerSpec, ScheduleSpec, StageSpec


def build_optimizer(
    groups: dict[str, list[nn.Parameter]], *, stage: StageSpec, spec: OptimizerSpec
) -> torch.optim.Optimizer:
    """AdamW over the stage's trainable groups; no weight decay on 1-D tensors (norms, biases)."""
    param_groups = []
    for name, params in groups.items():
        lr = stage.lr * stage.lr_mult.get(name, 1.0)
        trainable = [p for p in params if p.requires_grad]
        decay = [p for p in trainable if p.ndim >= 2]
        no_decay = [p for p in trainable if p.ndim < 2]
        for plist, wd, suffix in ((decay, spec.weight_decay, ""), (no_decay, 0.0, "/no_decay")):
            if plist:
                param_groups.append(
                    {"params": plist, "lr": lr, "weight_decay": wd, "name": name + suffix}
                )
    if not param_groups:
        raise ValueError(f"stage {stage.name!r} has no trainable parameters in {stage.train}")
    params = [p for g in param_groups for p in g["params"]]
    fused = getattr(spec, "fused", None)
    if fused is None:
        fused = fused_adamw_available(params)
    elif fused and not fused_adamw_available(params):
        raise ValueError("optimizer.fused: no fused AdamW kernel for these parameters' device")
    return torch.optim.AdamW(param_groups, betas=spec.betas, eps=spec.eps, fused=fused or None)


def fused_adamw_available(params: list[nn.Parameter]) -> bool:
    """Whether ``AdamW(fused=True)`` runs on ``params`` (floating point, one fused device type)."""
    from torch.utils._foreach_utils import _get_fused_kernels_supported_devices

    supported = set(_get_fused_kernels_supported_devices())
    return bool(params) and all(
        p.is_floating_point() and p.device.type in supported for p in params
    )


def build_schedule(
    optimizer: torch.optim.Optimizer, *, spec: ScheduleSpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    def factor(step: int) -> float:
        return warmup_cosine(
            step,
            warmup=spec.warmup_steps,
            total_steps=total_steps,
            constant=spec.type == "constant",
            min_lr_ratio=spec.min_lr_ratio,
        )

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
