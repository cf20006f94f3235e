"""DDP on 2 CPU processes (gloo): the same training as one process with both ranks' batches."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

TOLERANCE = 2e-5  # float rounding of a mean over 2 x 2 vs 4 samples, through 6 Adam steps
STANDARDIZE = "{type: standardize, params: {estimate_steps: 3}}"


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_ranks_with_half_batches_match_one_process(runs, recipe_args, tmp_path):
    """pcgrad on the two tasks, and task b's targets standardised by statistics of its first
    3 batches: gathered from both ranks, they must equal one process's."""
    normalized = [*recipe_args, "--set", f"tasks.b.normalize={STANDARDIZE}"]
    one, two = tmp_path / "one", tmp_path / "two"
    runs.run_here([*normalized, "--output", str(one)])
    runs.torchrun([*normalized, *runs.batch_sizes(2, 2), "--output", str(two)])
    reference = runs.weights(one)
    moved = runs.max_difference(reference, runs.weights(one, "step-3"), prefix="student.")
    assert moved > 100 * TOLERANCE  # training moved the weights far more than the tolerance
    assert runs.max_difference(runs.weights(two), reference) < TOLERANCE
    # rank 0 alone logs: one line per step, losses averaged over the ranks = one process's
    logged, expected = metrics(two), metrics(one)
    assert [m["step"] for m in logged] == list(range(1, 7))
    for got, want in zip(logged, expected, strict=True):
        for key in ("loss/a", "loss/b"):
            if key in want:
                assert got[key] == pytest.approx(want[key], rel=1e-5)
    assert sorted(p.name for p in (two / "checkpoints").iterdir()) == ["last", "step-3", "step-6"]


def test_one_process_checkpoint_resumes_on_two_ranks_accumulating(
    runs, one_process, recipe_args, tmp_path
):
    """Stopped at step 3 in one process; resumed on 2 ranks x batch 1 x 2 micro-batches."""
    run = tmp_path / "run"
    shutil.copytree(one_process / "checkpoints" / "step-3", run / "checkpoints" / "last")
    half = ["--set", "stages.1.accumulate=2", *runs.batch_sizes(1, 1)]
    runs.torchrun([*recipe_args, *half, "--output", str(run), "--resume"])
    assert runs.max_difference(runs.weights(run), runs.weights(one_process)) < TOLERANCE
