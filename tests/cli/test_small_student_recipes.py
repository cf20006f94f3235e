"""The small-student toy recipes (recipes/sam_clip_tiny_small.yaml, a half-width ViT-Det;
recipes/sam_clip_tiny_efficient.yaml, MobileNetV4 through timm): they validate, start their
students from random weights (SAM's do not fit), and their dry runs train every stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
RECIPES = {
    "sam_clip_tiny_small": ("vitdet", 64),
    "sam_clip_tiny_efficient": ("timm_features", 64),
}
STAGES = ["distillation", "multitask_distillation"]


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_small_student_recipe_keeps_the_toy_recipes_teachers_and_eval(name, capsys):
    """Only the student and its training differ, so the eval tables compare directly."""
    path = ROOT / "recipes" / f"{name}.yaml"
    assert main(["validate", str(path)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    student_type, width = RECIPES[name]
    assert printed["student"]["type"] == student_type
    assert printed["student"]["params"]["embed_dim"] == width  # half the toy student's 128
    assert printed["student"]["params"].get("init_from") is None
    toy = yaml.safe_load((ROOT / "recipes" / "sam_clip_tiny.yaml").read_text())
    small = yaml.safe_load(path.read_text())
    for section in ("toy", "teachers", "eval", "dry_run"):
        assert small[section] == toy[section], section


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_small_student_recipe_dry_run(name, tmp_path):
    out = tmp_path / "dry"
    recipe = ROOT / "recipes" / f"{name}.yaml"
    assert main(["run", str(recipe), "--dry-run", "--output", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == STAGES
    assert set(metrics[0]) >= {"loss/clip", "loss/sam_embedding", "loss/sam"}
    assert all(0 < m["loss/clip"] <= 2 for m in metrics)
