"""recipes/agglomerative.yaml and recipes/radio_like.yaml: they validate, and their dry runs work on
the real architectures (SigLIP 2's SiglipModel, DINOv3ViTModel, Sam2Model, Depth Anything and
C-RADIO's RadioModel) at tiny sizes; a dry run's merged model loads back as a run. The dry runs
at the recipes' own sizes (ViT-B/16 teachers and student) are the slow tests."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.export.loading import load_run
from mergekit_vision.students.radio import RadioStudent

from ..tiny_depth import TINY_DEPTH_CONFIG
from ..tiny_radio import TINY_RADIO_CONFIG
from ..tiny_sam2 import TINY_SAM2_CONFIG

ROOT = Path(__file__).resolve().parents[2]
AGGLOMERATIVE = ROOT / "recipes" / "agglomerative.yaml"
RADIO_LIKE = ROOT / "recipes" / "radio_like.yaml"
TASKS = ["siglip_summary", "siglip_spatial", "dino_summary", "dino_spatial", "sam2_features",
         "depth"]  # fmt: skip
TINY = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
SIGLIP = dict(
    model_type="siglip",
    text_config=dict(vocab_size=64, max_position_embeddings=16, **TINY),
    vision_config=dict(image_size=32, patch_size=8, **TINY),
)
DINOV3 = dict(model_type="dinov3_vit", image_size=32, patch_size=8, num_register_tokens=2, **TINY)


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def tiny_architectures(resolution) -> dict:
    """``--set`` values shared by both recipes: every model at a tiny size, every task at
    ``resolution`` (the student has 3 blocks, so the four-block readers read 0, 1, 1 and 2)."""
    values = {
        "dry_run.set": {},
        "teachers.siglip.params": {"config": SIGLIP},
        "teachers.dino.params": {"config": DINOV3},
        "teachers.sam2.params": {"config": TINY_SAM2_CONFIG},
        "teachers.depth.params": {"config": TINY_DEPTH_CONFIG},
        "student.params": {"config": TINY_RADIO_CONFIG},
        "heads.depth_head.params": dict(
            teacher="depth", layers=[0, 1, 1, 2], features=16, hidden=8
        ),
        "schedule.warmup_steps": 0,
    }
    for head in ("siglip_adaptor", "sam2_adaptor"):
        values[f"heads.{head}.params.hidden_dim"] = 16
    values.update({f"tasks.{task}.resolution": resolution for task in TASKS})
    return values


def as_args(values: dict) -> list[str]:
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={_flow(value)}")]


def read_metrics(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("recipe", [AGGLOMERATIVE, RADIO_LIKE], ids=lambda p: p.stem)
def test_the_recipe_validates(recipe, capsys):
    assert main(["validate", str(recipe)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert set(printed["teachers"]) == {"siglip", "dino", "sam2", "depth"}
    assert printed["student"]["type"] == "radio"
    assert set(printed["tasks"]) == set(TASKS)
    assert printed["tasks"]["depth"]["loss"]["type"] == "ssi"
    # the anchor gives every task the same image shards
    assert len({json.dumps(t["data"]) for t in printed["tasks"].values()}) == 1


def test_agglomerative_dry_run_on_tiny_architectures(tmp_path):
    out = tmp_path / "dry"
    values = tiny_architectures(32)
    values["heads.dino_adaptor.params.hidden_dim"] = 16
    args = ["run", str(AGGLOMERATIVE), *as_args(values), "--dry-run", "--output", str(out)]
    assert main(args) == 0
    (metrics,) = read_metrics(out)
    assert metrics["stage"] == "agglomerative_distillation"
    losses = {task: metrics[f"loss/{task}"] for task in TASKS}
    assert all(math.isfinite(v) and v > 0 for v in losses.values()), losses
    assert losses["siglip_summary"] <= 2 and losses["dino_summary"] <= 2  # cosine losses
    run = load_run(out)
    assert isinstance(run.model.student, RadioStudent)
    assert run.model.student.returned_blocks == (0, 1, 2)  # the depth head's blocks


def test_radio_like_dry_run_on_tiny_architectures(tmp_path):
    out = tmp_path / "dry"
    values = tiny_architectures({"low": [32, 48], "high": [64], "p_high": 0.5})
    values["heads.dino_summary_adaptor.params.hidden_dim"] = 16
    ladder = dict(teacher="dino", summary_target=None, layers=[0, 2], hidden_dim=16)
    values["heads.dino_ladder.params"] = {**ladder, "last_hidden_dim": 32}
    values["stages.0.resolution"] = {task: {"low": [32, 48]} for task in TASKS}
    args = ["run", str(RADIO_LIKE), *as_args(values), "--dry-run", "--output", str(out)]
    assert main(args) == 0
    metrics = read_metrics(out)
    assert [m["stage"] for m in metrics] == ["low_resolution", "multi_resolution"]
    sides = [{v for k, v in m.items() if k.startswith("resolution/")} for m in metrics]
    assert sides[0] and sides[0] <= {32, 48}  # stage 1: the low sides only
    assert sides[1] and sides[1] <= {32, 48, 64}
    ran = [[task for task in TASKS if f"loss/{task}" in m] for m in metrics]
    assert all(ran) and any(len(tasks) < len(TASKS) for tasks in ran)  # teachers dropped
    losses = [m[key] for m in metrics for key in m if key.startswith("loss/")]
    assert all(math.isfinite(value) for value in losses)
    weights = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    normalizers = {key.split(".")[1] for key in weights if key.startswith("normalizers.")}
    assert normalizers == {"siglip_spatial", "dino_spatial", "sam2_features"}
    run = load_run(out)
    assert run.model.student.returned_blocks == (0, 1, 2)  # the ladder's and depth head's


@pytest.mark.slow
@pytest.mark.parametrize("recipe", [AGGLOMERATIVE, RADIO_LIKE], ids=lambda p: p.stem)
def test_dry_run_at_the_recipes_own_architectures(recipe, tmp_path):
    out = tmp_path / "dry"
    assert main(["run", str(recipe), "--dry-run", "--output", str(out)]) == 0
    assert read_metrics(out)[-1]["stage"] in ("agglomerative_distillation", "multi_resolution")
    assert (out / "checkpoints" / "last" / "model.safetensors").stat().st_size > 300e6
