"""recipes/sam_clip_dinov2.yaml: it validates, its dry run works on tiny architectures (fast) and
on the real ViT-B SAM, ViT-L/14 CLIP and ViT-L/14 DINOv2 with random weights (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sam_clip_dinov2.yaml"
TINY = ROOT / "tests" / "recipes" / "tiny_sam_clip.yaml"
STAGES = ["head_probing", "multitask_distillation", "resolution_adaptation"]


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def tiny_architectures() -> list[str]:
    """``--set`` overrides: the tiny test recipe's SAM, CLIP and ViT-Det, a 2-block DINOv2."""
    tiny = yaml.safe_load(TINY.read_text())
    dino_kwargs = {"img_size": 56, "depth": 2, "embed_dim": 32, "num_heads": 2}
    dino = {"model": "vit_small_patch14_dinov2", "checkpoint": None, "model_kwargs": dino_kwargs}
    values = {
        "dry_run.set": {},
        "teachers.sam.params": tiny["teachers"]["sam"]["params"],
        "teachers.clip.params": tiny["teachers"]["clip"]["params"],
        "teachers.dino.params": dino,
        "student.params": tiny["student"]["params"],
        "tasks.sam.prompts": {"points_per_image": 2, "boxes_per_image": 2},
        "stages.2.resolution.clip": [48],
        "schedule.warmup_steps": 0,
    }
    for task in ("clip", "sam", "dino_summary", "dino_spatial"):
        values[f"tasks.{task}.resolution"] = 64 if task == "sam" else [48, 64]
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={_flow(value)}")]


def test_three_teacher_recipe_validates(capsys):
    assert main(["validate", str(RECIPE)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert set(printed["teachers"]) == {"sam", "clip", "dino"}
    assert printed["teachers"]["dino"]["type"] == "timm"
    assert printed["heads"]["dino_adaptor"]["params"]["depth"] == 2  # default filled in
    assert printed["stages"][1]["tasks"] == ["clip", "sam", "dino_summary", "dino_spatial"]


def _stages_and_losses(out: Path) -> list[dict]:
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == STAGES
    assert set(metrics[1]) >= {"loss/clip", "loss/sam", "loss/dino_summary", "loss/dino_spatial"}
    return metrics


def test_three_teacher_dry_run_on_tiny_architectures(tmp_path):
    out = tmp_path / "dry"
    assert main(["run", str(RECIPE), *tiny_architectures(), "--dry-run", "--output", str(out)]) == 0
    metrics = _stages_and_losses(out)
    assert all(0 < m["loss/dino_summary"] <= 2 for m in metrics[:2])
    assert all(0 < m["loss/dino_spatial"] < 10 for m in metrics[:2])


@pytest.mark.slow
def test_three_teacher_dry_run_real_architectures(tmp_path):
    out = tmp_path / "dry"
    assert main(["run", str(RECIPE), "--dry-run", "--output", str(out)]) == 0
    metrics = _stages_and_losses(out)
    assert all(0 < m["loss/clip"] <= 2 for m in metrics)
    assert (out / "checkpoints" / "last" / "model.safetensors").stat().st_size > 300e6
