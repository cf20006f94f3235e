"""Every registered replay scheduler, conflict strategy, loss weighting and target normalizer
runs in a (tiny, real-class) SAM+CLIP merge, chosen from the recipe by name."""

from __future__ import annotations

import json

import pytest
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.normalization.base import NORMALIZATION
from mergekit_vision.strategies.replay.base import REPLAY
from mergekit_vision.strategies.weighting.base import WEIGHTING

# Params a plugin cannot do without, as they would appear in a recipe.
REQUIRED_PARAMS = {
    ("replay", "proportional"): "{probabilities: {clip: 0.5, sam: 0.5}}",
    ("replay", "curriculum"): (
        "{schedule: [{step: 0, ratios: {clip: 1.0, sam: 0.0}}, "
        "{step: 2, ratios: {clip: 1.0, sam: 1.0}}]}"
    ),
    ("normalization", "standardize"): "{estimate_steps: 2}",
    ("normalization", "phi_s"): "{estimate_steps: 2}",
    ("normalization", "teacher_norm"): "{estimate_steps: 2}",
    ("replay", "random_subset"): "{k: 1}",
}

CASES = [
    (registry.kind, name)
    for registry in (REPLAY, CONFLICT, WEIGHTING, NORMALIZATION)
    for name in registry.names()
]


def spec(kind: str, name: str) -> str:
    params = REQUIRED_PARAMS.get((kind, name))
    return f"{{type: {name}, params: {params}}}" if params else f"{{type: {name}}}"


@pytest.mark.parametrize(("kind", "name"), CASES, ids=[f"{k}-{n}" for k, n in CASES])
def test_strategy_runs_in_a_toy_merge(kind, name, tiny_recipe_args, tmp_path):
    if kind == "normalization":
        where = "tasks.clip.normalize"
    else:
        where = f"stages.1.{kind}"
    run = tmp_path / "run"
    args = [
        *tiny_recipe_args,
        "--set", f"{where}={spec(kind, name)}",
        "--set", "stages.0.steps=1", "--set", "stages.1.steps=4",
        "--output", str(run),
    ]  # fmt: skip
    assert main(["run", *args]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 5
    distill = metrics[1:]
    losses = [v for m in distill for k, v in m.items() if k.startswith("loss/")]
    assert losses and all(v == v and v < 1e3 for v in losses)  # finite, not exploding
    if kind != "replay":  # fixed-ratio replay: both tasks every step
        assert all("loss/clip" in m and "loss/sam" in m for m in distill)


def test_unknown_strategy_lists_the_valid_names(tiny_recipe_args, capsys):
    assert main(["validate", *tiny_recipe_args, "--set", "stages.1.conflict={type: pcgard}"]) == 2
    err = capsys.readouterr().err
    assert "stages.1.conflict.type" in err and "pcgrad" in err and "upgrad" in err


@pytest.mark.parametrize("name", NORMALIZATION.names())
def test_normalizer_statistics_freeze_before_the_first_step(name, tiny_recipe_args, tmp_path):
    """A normalizer estimating for longer than the run trains is still frozen from step 1: its
    statistics come from a calibration pass before training, not from the training steps (with
    PHI-S, freezing mid-run would switch its rotation on under a head trained without it). An
    online normalizer (teacher_norm) warms up in that pass, then every training batch updates
    it."""
    run = tmp_path / "run"
    args = [
        *tiny_recipe_args,
        "--set", f"tasks.clip.normalize={{type: {name}, params: {{estimate_steps: 6}}}}",
        "--set", "stages.0.steps=1", "--set", "stages.1.steps=2",
        "--output", str(run),
    ]  # fmt: skip
    assert main(["run", *args]) == 0
    weights = load_file(str(run / "checkpoints" / "last" / "model.safetensors"))
    online = NORMALIZATION.get(name).online
    # 6 calibration batches, then 3 steps that run the clip task once each
    assert int(weights["normalizers.clip.updates"]) == (9 if online else 6)
    if name == "phi_s":
        assert bool(weights["normalizers.clip.solved"])


@pytest.mark.parametrize("name", ["pcgrad", "upgrad"])
def test_a_conflict_strategy_in_head_probing_acts_as_sum(name, tiny_recipe_args, tmp_path):
    """A stage with a frozen backbone has no shared gradients to record: two tasks probing
    their own heads under a conflict strategy train as under 'sum' (this once failed with
    torch.cat of an empty list, as `vmerge compare --grid conflict=...` sets every stage)."""
    runs = {}
    for conflict in ("sum", name):
        run = tmp_path / conflict
        args = [
            *tiny_recipe_args,
            "--set", "stages.0.tasks=[clip, sam]", "--set", "stages.0.train=[clip_head, sam_head]",
            "--set", f"stages.0.conflict={{type: {conflict}}}",
            "--set", "stages.0.steps=2", "--set", "stages.1.steps=1", "--output", str(run),
        ]  # fmt: skip
        assert main(["run", *args]) == 0
        runs[conflict] = [
            json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()
        ]
    probing = [m for m in runs[name] if m["stage"] == "head_probing"]
    assert [m["loss/sam"] for m in probing] == pytest.approx(
        [m["loss/sam"] for m in runs["sum"] if m["stage"] == "head_probing"], rel=1e-5
    )
    assert len(probing) == 2
