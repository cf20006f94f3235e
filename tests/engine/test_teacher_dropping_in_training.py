"""Teacher dropping and online target normalisation in training: a replay draw's
``loss_scale`` multiplies its task's backward (the logged loss stays raw), and a resumed run
drops the same tasks and continues the same running statistics."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.loop import Engine
from mergekit_vision.engine.run_folder import TrainState
from mergekit_vision.recipe.io import load_recipe

from ..conftest import TINY_RECIPE


def first_step_gradients(overrides: list[str], renormalize: bool) -> tuple[dict, dict]:
    """Step 0 of the tiny recipe's two-task stage under ``random_subset`` with k = 1 (scale 2
    when renormalised): its metrics and the gradients its one backward left."""
    replay = f"{{type: random_subset, params: {{k: 1, seed: 4, renormalize: {renormalize}}}}}"
    recipe = load_recipe(TINY_RECIPE, [*overrides, f"stages.1.replay={replay}"])
    torch.manual_seed(0)  # the heads' initialisation
    engine = Engine(build_components(recipe))
    stage = engine.build_stage(recipe.stages[1])
    grads: dict[str, torch.Tensor] = {}

    def lap(phase: str) -> None:
        if phase == "backward":  # before clipping and the optimiser
            model = engine.c.model
            grads.update(
                {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
            )

    metrics = engine.step(stage, TrainState(), lap=lap)
    return metrics, grads


def test_the_draws_loss_scale_multiplies_the_gradient_not_the_logged_loss(tiny_checkpoints):
    overrides = [f"teachers.{n}.params.checkpoint={p}" for n, p in tiny_checkpoints.items()]
    plain, plain_grads = first_step_gradients(overrides, renormalize=False)
    scaled, scaled_grads = first_step_gradients(overrides, renormalize=True)
    losses = {k: v for k, v in plain.items() if k.startswith("loss/")}
    assert len(losses) == 1  # one task of two ran
    assert {k: v for k, v in scaled.items() if k.startswith("loss/")} == losses
    assert plain_grads and set(scaled_grads) == set(plain_grads)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(scaled_grads[name], 2.0 * grad, rtol=1e-5, atol=1e-8)


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_a_resumed_run_drops_the_same_tasks_and_continues_the_statistics(
    tiny_recipe_args, tmp_path
):
    args = [
        *tiny_recipe_args,
        "--set", "stages.0.steps=1", "--set", "stages.1.steps=6",
        "--set", "stages.1.replay={type: teacher_drop, params: {p: 0.5, seed: 1}}",
        "--set", "tasks.clip.normalize={type: teacher_norm, params: {estimate_steps: 2}}",
        "--set", "checkpointing.every=100",
    ]  # fmt: skip
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    assert main(["run", *args, "--output", str(straight)]) == 0
    assert main(["run", *args, "--output", str(interrupted), "--max-steps", "4"]) == 0
    assert main(["run", *args, "--output", str(interrupted), "--resume"]) == 0
    a, b = read_metrics(straight), read_metrics(interrupted)
    ran = [sorted(k for k in m if k.startswith("loss/")) for m in a[1:]]
    assert ran != [["loss/clip", "loss/sam"]] * 6  # some step dropped a task
    assert [sorted(k for k in m if k.startswith("loss/")) for m in b[1:]] == ran
    for x, y in zip(a, b, strict=True):
        for key in (k for k in x if k.startswith("loss/")):
            assert y[key] == pytest.approx(x[key], rel=1e-5, abs=1e-7), (x["step"], key)
    last = "checkpoints/last/model.safetensors"
    saved = [load_file(str(run / last)) for run in (straight, interrupted)]
    clip_steps = sum("loss/clip" in m for m in a)
    assert int(saved[0]["normalizers.clip.updates"]) == 2 + clip_steps  # warm-up, then online
    for key in ("normalizers.clip.mean", "normalizers.clip.std"):
        torch.testing.assert_close(saved[1][key], saved[0][key], rtol=1e-5, atol=1e-7)
