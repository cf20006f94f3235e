"""What a toy SAM training step costs under other settings, timed side by side.

The toy SAM teacher is the slowest part of a fresh toy run, and half of its step is the mask
decoder, which runs once per prompt. So the scenes and prompts per step, and the decoder's
size, set the cost as much as the step count. :func:`time_sam_steps` times real training steps
(:func:`sam_training_step`) of each setting (an architecture and its training), alternating
settings round by round so that the host's drift hits all alike, and reports each setting's cost
relative to the first, per step and for its whole training (``vmerge toy sam-cost``).
"""

from __future__ import annotations

import statistics
import time
from typing import Any, NamedTuple

import numpy as np
import torch
from pydantic import ValidationError

from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.teachers.sam import SamParams
from mergekit_vision.toy.train_sam import (
    ToySamTraining,
    build_untrained_sam,
    sam_optimizer,
    sam_training_step,
)

MODEL_PREFIX = "model."
"""Overrides with this prefix change the SAM architecture (the teacher's ``params``)."""


class SamSetting(NamedTuple):
    """One toy SAM setting to time: its architecture and how it trains."""

    params: SamParams
    training: ToySamTraining


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
    return _validated(ToySamTraining, base, overrides, "toy SAM training setting(s)")


def setting_variant(base: SamSetting, overrides: dict[str, Any]) -> SamSetting:
    """``base`` with ``overrides`` applied: ``model.KEY`` to the architecture (``SamParams``),
    every other key to the training (``ToySamTraining``)."""
    model, training = {}, {}
    for key, value in overrides.items():
        if key.startswith(MODEL_PREFIX):
            model[key.removeprefix(MODEL_PREFIX)] = value
        else:
            training[key] = value
    params = _validated(SamParams, base.params, model, "SAM architecture setting(s)", MODEL_PREFIX)
    try:
        return SamSetting(params, training_variant(base.training, training))
    except ValueError as err:
        raise ValueError(
            f"{err} (architecture: {MODEL_PREFIX}KEY, e.g. model.decoder_depth)"
        ) from None


def _validated(schema, base, overrides: dict[str, Any], what: str, prefix: str = ""):
    unknown = sorted(prefix + key for key in set(overrides) - set(schema.model_fields))
    if unknown:
        valid = ", ".join(prefix + name for name in schema.model_fields)
        raise ValueError(f"unknown {what} {unknown}; valid: {valid}")
    try:
        return schema.model_validate({**base.model_dump(), **overrides})
    except ValidationError as err:
        problems = "; ".join(
            f"{prefix}{'.'.join(map(str, error['loc']))}: {error['msg']}" for error in err.errors()
        )
        raise ValueError(problems) from None


def time_sam_steps(
    *,
    world: ToyWorldConfig,
    variants: dict[str, SamSetting],
    rounds: int = 3,
    steps: int = 3,
) -> dict[str, Any]:
    """Median seconds per training step of each variant and its cost relative to the first.

    Each variant trains its own randomly initialised SAM of its architecture with its own AdamW.
    Every round runs, for each variant in turn, one untimed step (caches warm after the switch)
    and then ``steps`` timed ones. The ratios are medians over rounds of the per-round ratios.

    Returns:
        ``{"threads", "rounds", "steps", "variants": {name: {"training", "model_changes",
        "masks_per_step", "step_s", "step_cost", "total_cost"}}}``. ``model_changes`` are the
        architecture fields that differ from the first variant's, ``step_cost`` is relative to
        the first variant's step, and ``total_cost`` scales it by the ratio of training steps.
    """
    if not variants:
        raise ValueError("give at least one variant to time")
    states = {}
    for name, (params, training) in variants.items():
        torch.manual_seed(training.seed)
        sam = build_untrained_sam(params).train()
        optimizer, _ = sam_optimizer(sam, training.model_copy(update={"warmup": 0, "steps": 1}))
        states[name] = (sam, optimizer, np.random.default_rng([training.seed, 1]))
    seconds: dict[str, list[float]] = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (_, training) in variants.items():
            sam, optimizer, rng = states[name]
            step = len(seconds[name]) * (steps + 1)
            sam_training_step(sam, optimizer, training=training, world=world, step=step, rng=rng)
            started = time.perf_counter()
            for offset in range(1, steps + 1):
                sam_training_step(
                    sam, optimizer, training=training, world=world, step=step + offset, rng=rng
                )
            seconds[name].append((time.perf_counter() - started) / steps)
    base_name, (base_params, base) = next(iter(variants.items()))
    base_model = base_params.model_dump(mode="json")
    report = {}
    for name, (params, training) in variants.items():
        ratio = statistics.median(
            t / b for t, b in zip(seconds[name], seconds[base_name], strict=True)
        )
        report[name] = {
            "training": training.model_dump(),
            "model_changes": {
                key: value
                for key, value in params.model_dump(mode="json").items()
                if value != base_model[key]
            },
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
