"""What a toy SAM training step costs under other training settings, timed side by side.

The toy SAM teacher is the slowest part of a fresh toy run, and half of its step is the mask
decoder, which runs once per prompt. So the scenes and prompts per step set the cost as much as
the step count. :func:`time_sam_steps` times real training steps (:func:`sam_training_step`) of
each setting, alternating settings round by round so that the host's drift hits all alike, and
reports each setting's cost relative to the first, per step and for its whole training
(``vmerge toy sam-cost``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from mergekit_vision.teachers.sam import SamParams
from mergekit_vision.toy.fitting import adamw_warmup_cosine
from mergekit_vision.toy.train_sam import ToySamTraining, build_untrained_sam, sam_training_step
from mergekit_vision.toy.world import ToyWorldConfig


def parse_overrides(text: str) -> dict[str, Any]:
    """``"batch_size=4,prompts_per_image=16"`` -> ``{"batch_size": "4", ...}`` (pydantic converts
    the values); raises ``ValueError`` naming the malformed part."""
    overrides: dict[str, Any] = {}
    for part in filter(None, (piece.strip() for piece in text.split(","))):
        key, sep, value = part.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ValueError(f"{part!r} in {text!r}: write KEY=VALUE, e.g. prompts_per_image=16")
        overrides[key.strip()] = value.strip()
    if not overrides:
        raise ValueError(f"{text!r}: give at least one KEY=VALUE")
    return overrides


def training_variant(base: ToySamTraining, overrides: dict[str, Any]) -> ToySamTraining:
    """``base`` with ``overrides`` applied and validated; unknown keys are an error listing the
    valid ones."""
    unknown = sorted(set(overrides) - set(ToySamTraining.model_fields))
    if unknown:
        valid = ", ".join(ToySamTraining.model_fields)
        raise ValueError(f"unknown toy SAM training setting(s) {unknown}; valid: {valid}")
    try:
        return ToySamTraining.model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        problems = "; ".join(
            f"{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in err.errors()
        )
        raise ValueError(problems) from None


def time_sam_steps(
    *,
    sam_params: SamParams,
    world: ToyWorldConfig,
    variants: dict[str, ToySamTraining],
    rounds: int = 3,
    steps: int = 3,
) -> dict[str, Any]:
    """Median seconds per training step of each variant and its cost relative to the first.

    Each variant trains its own randomly initialised SAM with its own AdamW. Every round runs,
    for each variant in turn, one untimed step (caches warm after the switch) and then
    ``steps`` timed ones. The ratios are medians over rounds of the per-round ratios.

    Returns:
        ``{"threads", "rounds", "steps", "variants": {name: {"training", "masks_per_step",
        "step_s", "step_cost", "total_cost"}}}``. ``step_cost`` is relative to the first variant's
        step, and ``total_cost`` scales it by the ratio of training steps.
    """
    if not variants:
        raise ValueError("give at least one variant to time")
    states = {}
    for name, training in variants.items():
        torch.manual_seed(training.seed)
        sam = build_untrained_sam(sam_params).train()
        optimizer, _ = adamw_warmup_cosine(
            sam, lr=training.lr, weight_decay=training.weight_decay, warmup=0, steps=1
        )
        states[name] = (sam, optimizer, np.random.default_rng([training.seed, 1]))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, training in variants.items():
            sam, optimizer, rng = states[name]
            step = len(seconds[name]) * (steps + 1)
            sam_training_step(sam, optimizer, training=training, world=world, step=step, rng=rng)
            started = time.perf_counter()
            for offset in range(1, steps + 1):
                sam_training_step(
                    sam, optimizer, training=training, world=world, step=step + offset, rng=rng
                )
            seconds[name].append((time.perf_counter() - started) / steps)
    base_name, base = next(iter(variants.items()))
    report = {}
    for name, training in variants.items():
        ratio = statistics.median(
            t / b for t, b in zip(seconds[name], seconds[base_name], strict=True)
        )
        report[name] = {
            "training": training.model_dump(),
            "masks_per_step": training.batch_size * training.prompts_per_image,
            "step_s": statistics.median(seconds[name]),
            "step_cost": ratio,
            "total_cost": ratio * training.steps / base.steps,
        }
    return {
        "threads": torch.get_num_threads(),
        "rounds": rounds,
        "steps": steps,
        "variants": report,
    }
