"""recipes/sam2_clip.yaml: it validates, and its dry run trains every stage, with the sam2_hiera
student and the sam2_head started from the SAM 2 teacher, on tiny real-class SAM 2 and SigLIP 2
(fast) and on the real SAM 2.1 Hiera-B+ and SigLIP 2 ViT-B/16 at the recipe's reduced sides
(slow)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from safetensors import safe_open

from mergekit_vision.cli.main import main

from ..tiny_sam2 import TINY_SAM2_CONFIG

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sam2_clip.yaml"
STAGES = ["head_probing", "multitask_distillation", "resolution_adaptation"]


def test_sam2_clip_recipe_validates(capsys):
    assert main(["validate", str(RECIPE)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["student"]["type"] == "sam2_hiera"
    assert printed["student"]["params"] == {"init_from": "sam2", "config": None}
    assert printed["heads"]["sam_head"]["type"] == "sam2_head"
    assert printed["heads"]["sam_head"]["params"]["high_res_levels"] == ["stride4", "stride8"]
    assert printed["tasks"]["clip"]["teacher"] == "siglip"


def _flow(value) -> str:
    return yaml.safe_dump(value, default_flow_style=True, width=10**6).strip()


def tiny_architectures() -> list[str]:
    """``--set`` overrides: tests/tiny_sam2.py's SAM 2 (two blocks in the last Hiera stage, whose
    last block the CLIP head copies) and a one-layer SigLIP 2 NaFlex, all at 64 px."""
    backbone = {
        **TINY_SAM2_CONFIG["vision_config"]["backbone_config"],
        "blocks_per_stage": [1, 1, 2, 2],
    }
    vision = {**TINY_SAM2_CONFIG["vision_config"], "backbone_config": backbone}
    layers = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2)
    siglip = {
        "model_type": "siglip2",
        "text_config": dict(vocab_size=64, max_position_embeddings=8, bos_token_id=1,
                            eos_token_id=2, pad_token_id=0, **layers),
        "vision_config": dict(num_patches=16, patch_size=8, **layers),
    }  # fmt: skip
    values = {
        "dry_run.set": {},
        "teachers.sam2.params.config": {**TINY_SAM2_CONFIG, "vision_config": vision},
        "teachers.siglip.params.config": siglip,
        "tasks.sam.resolution": 64,
        "tasks.sam.prompts": {"points_per_image": 2, "boxes_per_image": 2},
        "tasks.clip.resolution": [64],
        "stages.2.resolution.clip": [64],
        "schedule.warmup_steps": 0,
    }
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={_flow(value)}")]


def _stages(out: Path) -> list[dict]:
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == STAGES
    assert set(metrics[1]) >= {"loss/clip", "loss/sam"}
    assert all(0 < m["loss/clip"] <= 2 for m in metrics)
    return metrics


def test_sam2_clip_dry_run_on_tiny_architectures(tmp_path):
    out = tmp_path / "dry"
    args = ["run", str(RECIPE), *tiny_architectures(), "--dry-run", "--output", str(out)]
    assert main(args) == 0
    metrics = _stages(out)
    assert 0 < metrics[1]["loss/sam"] < 100
    with safe_open(str(out / "checkpoints" / "last" / "model.safetensors"), "pt") as file:
        names = set(file.keys())
    assert "heads.sam_head.mask_decoder.conv_s1.weight" in names
    assert "student.encoder.neck.convs.0.weight" in names


@pytest.mark.slow
def test_sam2_clip_dry_run_on_the_real_architectures(tmp_path):
    out = tmp_path / "dry"
    assert main(["run", str(RECIPE), "--dry-run", "--output", str(out)]) == 0
    _stages(out)
    with safe_open(str(out / "checkpoints" / "last" / "model.safetensors"), "pt") as file:
        # Hiera-B+: 24 blocks, the last stage 896 wide
        last = file.get_slice("student.encoder.backbone.blocks.23.mlp.proj_out.weight")
        assert last.get_shape() == [896, 3584]
    weights = out / "checkpoints" / "last" / "model.safetensors"
    with safe_open(str(weights), "pt") as file:
        names = set(file.keys())
        # Hiera-B+: 24 blocks, the last stage 896 wide
        last = file.get_slice("student.encoder.backbone.blocks.23.mlp.proj_out.weight")
        assert last.get_shape() == [896, 3584]
    assert "heads.sam_head.mask_decoder.conv_s0.weight" in names
    assert "heads.sam_head.no_memory_embedding" in names
