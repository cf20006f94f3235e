"""The recipe's speed switches applied to a built model: activation checkpointing,
``torch.compile``, channels-last, the autocast precision of the student and heads, and how the
CPU allocator treats freed memory; and :func:`flush_denormals`, which every ``vmerge`` process
sets at start-up.

None of them changes what is computed beyond float rounding (bf16 autocast on GPU rounds more);
each is opt-in from the recipe's ``performance`` section except autocast, whose ``auto`` default
is bf16 on CUDA and fp32 elsewhere (CPU bf16 matmuls are slower than fp32 on most CPUs), and
``keep_freed_memory``, on by default.
"""

from __future__ import annotations

import contextlib
import ctypes
import sys
from typing import TYPE_CHECKING

import torch
from torch import nn

if TYPE_CHECKING:
    from mergekit_vision.recipe.schema import PerformanceSpec


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


# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3


def keep_freed_memory() -> bool:
    """Let glibc's malloc keep freed memory in the process, for reuse by the next tensor.

    By default glibc serves every block over 32 MB with a fresh ``mmap`` and unmaps it on free,
    and trims the heap's free top: a training step that allocates and frees activations and
    attention blocks of tens of MB then page-faults every page of them in again, at every step.
    With a 1 GB mmap threshold and no trimming, freed blocks return to the heap and are reused
    warm (what jemalloc or tcmalloc, the allocators PyTorch's CPU tuning guide suggests, do on
    their own). The process then holds its peak memory until it exits. Process-wide; no-op off
    glibc (returns False).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # musl, or no libc.so.6
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, 1 << 30)) and bool(mallopt(_M_TRIM_THRESHOLD, 2**31 - 1))


def flush_denormals() -> bool:
    """Compute float32 results below the normal range (< 1.2e-38) as zero on this CPU.

    Such subnormal numbers appear once a network is confident: GELU of a strongly negative
    input, a sigmoid of a large logit. x86 cores handle them in microcode, many times slower than
    normal floats, so a model trained to confident outputs can get slower per step as it
    trains. Measured on the toy SAM teacher trained at lr 3e-3 (docs/performance.md): a training
    step on its final weights took 0.68 s on one thread and 0.44-0.45 s on two, against 0.44 and
    0.29-0.31 s with this switch. No result changes beyond such tiny values.

    The setting is per thread, and a thread started later inherits it, so call this before the
    first parallel torch operation of the process (``vmerge`` does it at start-up; worker
    processes call it first thing). Returns False where the CPU has no such mode.
    """
    return bool(torch.set_flush_denormal(True))


def apply_performance(model: nn.Module, spec: PerformanceSpec, *, device: torch.device) -> None:
    """Set the switches of ``spec`` on a built :class:`MergedModel` (in place).

    Activation checkpointing is the student's own per-block switch (students without one are
    refused, so a recipe asking for it never silently runs without); compile uses
    ``nn.Module.compile`` so parameter names, and so checkpoints, are unchanged.
    """
    student = model.student
    if spec.keep_freed_memory and device.type == "cpu":
        keep_freed_memory()
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
