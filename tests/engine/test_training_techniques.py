"""The training techniques in a tiny merge: a stochastic resolution (RADIOv2.5), a ladder head
(UNIC) and a LoRA student, trained through ``vmerge run``. Each step trains at the side drawn
for it (a resumed run draws the same), the ladder gets its blocks, only the LoRA updates of the
backbone move, and a loaded run is merged back: plain student weights, the same forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.run_folder import load_model_weights
from mergekit_vision.engine.stage import check_parallel_support
from mergekit_vision.errors import RecipeError
from mergekit_vision.export.loading import find_checkpoint, load_run
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.resolution import side_at

from ..conftest import TINY_RECIPE

TECHNIQUES = [
    "stages.0.steps=1", "stages.1.steps=4", "checkpointing.every=100",
    "tasks.clip.resolution={low: [32, 48], high: [64], p_high: 0.5}",
    "heads.clip_head={type: ladder, params: {teacher: clip, summary_target: image_embedding, "
    "spatial_target: null, layers: [0, 1], hidden_dim: 16, last_hidden_dim: 32}}",
    "student.lora={rank: 2, alpha: 4.0, targets: [qkv, proj]}",
]  # fmt: skip


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def overrides(tiny_checkpoints) -> list[str]:
    paths = [f"teachers.{n}.params.checkpoint={p}" for n, p in tiny_checkpoints.items()]
    return [*paths, *TECHNIQUES]


@pytest.fixture(scope="module")
def straight(overrides, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("techniques") / "run"
    sets = [arg for override in overrides for arg in ("--set", override)]
    assert main(["run", str(TINY_RECIPE), *sets, "--output", str(out)]) == 0
    return out


def test_each_step_trains_at_its_drawn_side_and_a_resume_draws_the_same(
    straight, overrides, tmp_path
):
    recipe = load_recipe(TINY_RECIPE, overrides)
    metrics = read_metrics(straight)
    steps_in_stage = [("head_probing", 0), *(("multitask_distillation", s) for s in range(4))]
    expected = [
        side_at(recipe.tasks["clip"].resolution, step=step, seed=recipe.seed, key=f"{stage}/clip")
        for stage, step in steps_in_stage
    ]
    assert [m["resolution/clip"] for m in metrics] == expected
    assert "resolution/sam" not in metrics[-1]  # one fixed side: nothing to log
    sets = [arg for override in overrides for arg in ("--set", override)]
    out = tmp_path / "interrupted"
    assert main(["run", str(TINY_RECIPE), *sets, "--output", str(out), "--max-steps", "3"]) == 0
    assert main(["run", str(TINY_RECIPE), *sets, "--output", str(out), "--resume"]) == 0
    resumed = read_metrics(out)
    assert [m["resolution/clip"] for m in resumed] == expected
    for a, b in zip(resumed, metrics, strict=True):
        assert a["loss/clip"] == pytest.approx(b["loss/clip"], rel=1e-5, abs=1e-7)


def test_only_the_lora_updates_of_the_backbone_train(straight, overrides):
    torch.manual_seed(0)
    initial = build_components(load_recipe(TINY_RECIPE, overrides)).model.state_dict()
    trained = load_file(find_checkpoint(straight) / "model.safetensors")
    student = {k for k in trained if k.startswith("student.")}
    moved = {k for k in student if not torch.equal(trained[k], initial[k])}
    lora = {k for k in student if k.rsplit(".", 1)[-1] in {"lora_a", "lora_b"}}
    assert len(lora) == 2 * 2 * 2  # A and B of qkv and proj in 2 blocks
    assert moved == lora
    ladder = [k for k in trained if k.startswith("heads.clip_head.summary_projectors.")]
    assert any(not torch.equal(trained[k], initial[k]) for k in ladder)  # the ladder trained


def test_a_loaded_run_is_merged_back_with_the_same_forward(straight, overrides):
    run = load_run(straight)  # what every export reads
    plain = build_components(load_recipe(TINY_RECIPE, [*overrides, "student.lora=null"]))
    merged_state = run.model.student.state_dict()
    plain_state = plain.model.student.state_dict()
    assert {k: v.shape for k, v in merged_state.items()} == {
        k: v.shape for k, v in plain_state.items()
    }
    unmerged = build_components(load_recipe(TINY_RECIPE, overrides)).model
    load_model_weights(unmerged, run.checkpoint)
    images = torch.rand(2, 3, 48, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = unmerged.eval().heads["clip_head"](unmerged.student(images))
        got = run.model.heads["clip_head"](run.model.student(images))  # blocks as eval asks
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)


def test_fsdp_refuses_a_lora_student(overrides):
    recipe = load_recipe(TINY_RECIPE, overrides)
    check_parallel_support(recipe, sharded=False)  # one process, DDP: fine
    with pytest.raises(RecipeError, match="student.lora.*use distributed.strategy ddp"):
        check_parallel_support(recipe, sharded=True)
