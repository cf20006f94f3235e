"""The recipe's speed switches applied to a built model: activation checkpointing,
``torch.compile``, channels-last, and the autocast precision of the student and heads.

None of them changes what is computed beyond float rounding (bf16 autocast on GPU rounds more);
each is opt-in from the recipe's ``performance`` section except autocast, whose ``auto`` default
is bf16 on CUDA and fp32 elsewhere (CPU bf16 matmuls are slower than fp32 on most CPUs).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from mergekit_vision.recipe import PerformanceSpec


def autocast_dtype(device: torch.device | str, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``; ``None`` means plain fp32."""
    device_type = torch.device(device).type
    if precision == "fp32" or (precision == "auto" and device_type != "cuda"):
        return None
    return torch.bfloat16


def autocast_context(
    device: torch.device | str, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` on ``device`` with ``dtype``, or a no-op context for fp32."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=dtype)


def apply_performance(model: nn.Module, spec: PerformanceSpec, *, device: torch.device) -> None:
    """Set the switches of ``spec`` on a built :class:`MergedModel` (in place).

    Activation checkpointing is the student's own per-block switch (students without one are
    refused, so a recipe asking for it never silently runs without); compile uses
    ``nn.Module.compile`` so parameter names, and so checkpoints, are unchanged.
    """
    student = model.student
    if spec.activation_checkpointing:
        if not hasattr(student, "activation_checkpointing"):
            raise ValueError(
                f"performance.activation_checkpointing: student {type(student).__name__} "
                "has no per-block checkpointing"
            )
        student.activation_checkpointing = True
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    model.autocast_dtype = autocast_dtype(device, spec.autocast)
    if spec.compile:
        student.compile()
