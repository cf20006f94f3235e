"""Optimiser and LR schedule of a stage: parameter groups with per-group LR multipliers."""

from __future__ import annotations

import math

import torch
from torch import nn

from mergekit_vision.recipe import OptimizerSpec, ScheduleSpec, StageSpec


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
    fused = all(p.is_cuda for g in param_groups for p in g["params"])
    return torch.optim.AdamW(param_groups, betas=spec.betas, eps=spec.eps, fused=fused or None)


def build_schedule(
    optimizer: torch.optim.Optimizer, *, spec: ScheduleSpec, total_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    warmup = min(spec.warmup_steps, max(total_steps - 1, 0))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if spec.type == "constant":
            return 1.0
        progress = (step - warmup) / max(1, total_steps - warmup)
        cosine = 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
        return spec.min_lr_ratio + (1 - spec.min_lr_ratio) * cosine

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
