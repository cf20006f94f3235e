"""The one warmup + cosine LR factor that the engine and the toy trainers share."""

from __future__ import annotations

import math

import pytest

from mergekit_vision.engine.lr_schedule import warmup_cosine


def test_linear_warmup_then_cosine_to_zero():
    factors = [warmup_cosine(step, warmup=2, total_steps=10) for step in range(11)]
    assert factors[:2] == [0.5, 1.0]
    # Step 6 is half-way through the 8 decay steps: cos(pi / 2) -> factor 0.5.
    assert factors[6] == pytest.approx(0.5)
    assert factors[4] == pytest.approx(0.5 * (1 + math.cos(math.pi * 2 / 8)))
    assert factors[10] == pytest.approx(0.0, abs=1e-12)
    assert all(a >= b for a, b in zip(factors[1:], factors[2:], strict=False))


def test_floor_and_constant():
    assert warmup_cosine(10, warmup=0, total_steps=10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert warmup_cosine(7, warmup=2, total_steps=10, constant=True) == 1.0
    # Past the end the factor stays at the floor instead of rising again.
    assert warmup_cosine(25, warmup=0, total_steps=10, min_lr_ratio=0.1) == pytest.approx(0.1)


def test_warmup_longer_than_the_run_is_capped():
    # One step of training still reaches the peak at its last step.
    assert warmup_cosine(0, warmup=50, total_steps=1) == 1.0
