"""The forgetting signal: held-out losses in metrics.jsonl, and early stopping on them."""

from __future__ import annotations

import json

from mergekit_vision.cli.main import main
from mergekit_vision.engine.monitor import ForgettingMonitor
from mergekit_vision.recipe.schema import MonitorSpec


def test_strikes_count_readings_above_the_best_by_more_than_the_tolerance():
    monitor = ForgettingMonitor(spec=MonitorSpec(patience=2, tolerance=0.1), tasks={}, seed=0)
    assert monitor.forgetting({"sam": 1.0, "clip": 1.0}) == []
    assert monitor.forgetting({"sam": 1.05, "clip": 0.9}) == []  # within tolerance: no strike
    assert monitor.forgetting({"sam": 1.2, "clip": 0.8}) == []  # first strike
    assert monitor.forgetting({"sam": 1.3, "clip": 0.7}) == ["sam"]  # second: forgetting
    assert monitor.forgetting({"sam": 0.9, "clip": 0.7}) == []  # a new best resets
    assert monitor.state_dict() == {
        "best": {"sam": 0.9, "clip": 0.7},
        "strikes": {"sam": 0, "clip": 0},
    }


def test_heldout_losses_are_logged_and_early_stopping_ends_the_stage(tiny_recipe_args, tmp_path):
    run = tmp_path / "run"
    monitor = "{every: 1, batches: 1, early_stopping: true, patience: 2, tolerance: 0.0}"
    args = [
        *tiny_recipe_args,
        "--set", f"stages.1.monitor={monitor}",
        "--set", "stages.1.lr=0.3",  # far too high: the held-out losses must get worse
        "--output", str(run),
    ]  # fmt: skip
    assert main(["run", *args]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    distill = [m for m in metrics if m["stage"] == "multitask_distillation"]
    assert all("heldout/clip" in m and "heldout/sam" in m for m in distill)
    assert "early_stop" in distill[-1]
    assert len(distill) < 10
