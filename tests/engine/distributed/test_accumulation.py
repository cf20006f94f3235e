"""Gradient accumulation: k micro-batches of b per task make the same step as one batch of k x b."""

from __future__ import annotations

import pytest

TOLERANCE = 2e-5


@pytest.mark.parametrize("conflict", ["sum", "pcgrad"])
def test_two_micro_batches_match_one_batch_twice_as_large(runs, recipe_args, tmp_path, conflict):
    """``pcgrad`` checks that the per-task rows it projects are the accumulated gradients."""
    # eps near the gradients' size makes Adam's step depend on their scale (the mean over k)
    common = [
        *recipe_args,
        "--set",
        f"stages.1.conflict.type={conflict}",
        "--set",
        "optimizer.eps=1e-3",
    ]
    whole, halves = tmp_path / "whole", tmp_path / "halves"
    runs.run_here([*common, "--output", str(whole)])
    accumulate = ["--set", "stages.0.accumulate=2", "--set", "stages.1.accumulate=2"]
    runs.run_here([*common, *accumulate, *runs.batch_sizes(2, 2), "--output", str(halves)])
    want, halfway = runs.weights(whole), runs.weights(whole, "step-3")
    assert runs.max_difference(want, halfway, prefix="student.") > 100 * TOLERANCE
    assert runs.max_difference(runs.weights(halves), want) < TOLERANCE
