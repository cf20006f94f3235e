"""A run survives what a long run meets: a crash before its first checkpoint restarts with
``--resume``, and NaN / inf losses skip their step until too many in a row stop the run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.engine import loop
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.loop import Engine
from mergekit_vision.engine.nonfinite import NonFiniteError, NonFiniteGuard
from mergekit_vision.engine.run_folder import MODEL_FILE, STATE_FILE, TrainState, find_last
from mergekit_vision.recipe.io import load_recipe

from ..conftest import TINY_RECIPE

COMPARED = ("loss/clip", "loss/sam", "lr", "nonfinite_steps")


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture
def short_args(tiny_recipe_args) -> list[str]:
    """The tiny recipe in 6 steps: 3 of the CLIP task alone, then 3 of both tasks."""
    return [*tiny_recipe_args, "--set", "stages.0.steps=3", "--set", "stages.1.steps=3"]


class Poison:
    """Makes ``task``'s loss NaN at the given (1-based, global) steps, the way a real overflow
    does: the loss tensor itself, so its backward fills the gradients with NaN too. With
    ``gradient_only`` the loss stays finite and only its gradient is NaN (weights then diverge
    while the step's loss looked fine)."""

    def __init__(self, monkeypatch, *, task: str, steps: set[int], gradient_only: bool = False):
        self.task, self.steps, self.gradient_only, self.now = task, steps, gradient_only, 0
        step, task_loss = Engine.step, loop.task_loss

        def stepping(engine, stage, state, **kwargs):
            self.now = state.global_step + 1
            return step(engine, stage, state, **kwargs)

        def poisoned(built, batch, **kwargs):
            loss = task_loss(built, batch, **kwargs)
            if built.name != self.task or self.now not in self.steps:
                return loss
            return NanGradient.apply(loss) if self.gradient_only else loss * float("nan")

        monkeypatch.setattr(Engine, "step", stepping)
        monkeypatch.setattr(loop, "task_loss", poisoned)


class NanGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x):
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        return grad * float("nan")


def test_a_run_killed_before_its_first_checkpoint_restarts_with_resume(
    short_args, tmp_path, monkeypatch, capsys
):
    args = [*short_args, "--set", "checkpointing.every=100"]
    clean = tmp_path / "clean"
    assert main(["run", *args, "--output", str(clean)]) == 0
    crashed = tmp_path / "crashed"
    step = Engine.step

    def killed_in_step_3(engine, stage, state, **kwargs):
        if state.global_step == 2:
            raise RuntimeError("killed")
        return step(engine, stage, state, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(Engine, "step", killed_in_step_3)
        with pytest.raises(RuntimeError, match="killed"):
            main(["run", *args, "--output", str(crashed)])
    assert [m["step"] for m in read_metrics(crashed)] == [1, 2]
    assert find_last(crashed / "checkpoints") is None
    capsys.readouterr()

    assert main(["run", *args, "--output", str(crashed)]) == 2
    err = capsys.readouterr().err
    assert "--resume to continue it (or to restart it from step 0" in err

    with pytest.warns(UserWarning, match="holds no checkpoint yet") as warned:
        assert main(["run", *args, "--output", str(crashed), "--resume"]) == 0
    assert any(str(crashed) in str(w.message) and "step 0" in str(w.message) for w in warned)
    restarted, straight = read_metrics(crashed), read_metrics(clean)
    assert [m["step"] for m in restarted] == list(range(1, 7))  # the crashed lines are gone
    for a, b in zip(restarted, straight, strict=True):
        for key in COMPARED:
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_isolated_nonfinite_losses_are_skipped_and_counted(short_args, tmp_path, monkeypatch):
    Poison(monkeypatch, task="clip", steps={2, 5})
    out = tmp_path / "run"
    assert main(["run", *short_args, "--output", str(out)]) == 0
    metrics = read_metrics(out)
    assert [m["step"] for m in metrics] == list(range(1, 7))  # skipped steps still count
    assert [m["nonfinite_steps"] for m in metrics] == [0, 1, 1, 1, 2, 2]
    clip = [m["loss/clip"] for m in metrics]
    # strict JSON: a skipped step's NaN loss is written as null
    assert [v is not None for v in clip] == [True, False, True, True, False, True]
    weights = load_file(str(out / "checkpoints" / "last" / MODEL_FILE))
    bad = [n for n, w in weights.items() if w.is_floating_point() and not w.isfinite().all()]
    assert bad == []
    saved = torch.load(out / "checkpoints" / "last" / STATE_FILE, weights_only=True)
    assert saved["state"]["nonfinite_steps"] == 2


def test_too_many_nonfinite_steps_in_a_row_stop_the_run_keeping_its_last_checkpoint(
    short_args, tmp_path, monkeypatch, capsys
):
    Poison(monkeypatch, task="clip", steps={3, 4, 5, 6})
    out = tmp_path / "run"
    args = [
        *short_args,
        "--set",
        "checkpointing.every=2",
        "--set",
        "optimizer.max_nonfinite_steps=2",
    ]
    assert main(["run", *args, "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert "step 4 (stage 'multitask_distillation'): task 'clip' loss nan" in err
    assert "optimizer.max_nonfinite_steps (2)" in err and "lower lr" in err
    assert [m["nonfinite_steps"] for m in read_metrics(out)] == [0, 0, 1]
    last = find_last(out / "checkpoints")
    assert last is not None
    assert torch.load(last / STATE_FILE, weights_only=True)["state"]["global_step"] == 2
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["last", "step-2"]


def test_nonfinite_weights_are_never_checkpointed(short_args, tmp_path, monkeypatch, capsys):
    Poison(monkeypatch, task="clip", steps={1}, gradient_only=True)
    out = tmp_path / "run"
    assert main(["run", *short_args, "--set", "checkpointing.every=2", "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "step 2: the model's weight" in err and "is not finite" in err
    assert find_last(out / "checkpoints") is None
    # step 1's finite loss updated the weights with NaN; step 2's loss then was NaN: skipped
    assert [m["nonfinite_steps"] for m in read_metrics(out)] == [0, 1]


def test_a_skipped_step_moves_no_weight_no_optimizer_and_no_strategy(tiny_checkpoints, monkeypatch):
    overrides = [f"teachers.{n}.params.checkpoint={p}" for n, p in tiny_checkpoints.items()]
    recipe = load_recipe(TINY_RECIPE, overrides)
    engine = Engine(build_components(recipe))
    stage = engine.build_stage(recipe.stages[1])
    observed: list[str] = []
    monkeypatch.setattr(stage.replay, "observe", lambda **kw: observed.append("replay"))
    monkeypatch.setattr(stage.weighting, "observe", lambda **kw: observed.append("weighting"))
    before = {n: p.detach().clone() for n, p in engine.c.model.named_parameters()}
    Poison(monkeypatch, task="sam", steps={1})

    metrics = engine.step(stage, TrainState())
    assert metrics["nonfinite_steps"] == 1 and math.isfinite(metrics["loss/clip"])
    after = dict(engine.c.model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert all(p.grad is None for p in after.values())
    assert stage.optimizer.state == {} and stage.schedule.last_epoch == 0 and observed == []

    metrics = engine.step(stage, TrainState(global_step=1, step_in_stage=1))
    assert metrics["nonfinite_steps"] == 0 and observed == ["replay", "weighting"]
    assert stage.schedule.last_epoch == 1 and stage.optimizer.state != {}
    assert any(not torch.equal(before[n], p) for n, p in engine.c.model.named_parameters())


def test_the_guard_counts_consecutive_bad_steps_only():
    guard = NonFiniteGuard(bound=3)
    nan, inf = float("nan"), float("inf")
    assert guard.skip({"a": nan, "b": 1.0}, step=1, stage="s")
    assert guard.skip({"a": 1.0, "b": inf}, step=2, stage="s")
    assert not guard.skip({"a": 1.0, "b": 2.0}, step=3, stage="s")  # the streak starts over
    assert guard.skip({"a": -inf}, step=4, stage="s") and guard.skip({"a": nan}, step=5, stage="s")
    with pytest.raises(NonFiniteError, match=r"step 6 \(stage 's'\): task 'a' loss nan; 3 "):
        guard.skip({"a": nan}, step=6, stage="s")


def test_the_progress_bar_shows_the_skipped_steps():
    line = {"stage": "s", "loss/a": 0.5, "nonfinite_steps": 2}
    assert loop._describe(line) == "s a=0.5000 nonfinite=2"
    assert loop._describe({**line, "nonfinite_steps": 0}) == "s a=0.5000"
