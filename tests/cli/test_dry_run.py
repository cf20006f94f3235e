"""`vmerge run recipes/sam_clip.yaml --dry-run`: the real ViT-B SAM and ViT-L/14 CLIP architectures
(random weights), every component built, one step of every stage on synthetic images."""

import json
from pathlib import Path

from safetensors.torch import load_file

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]


def test_reference_recipe_dry_run(tmp_path):
    out = tmp_path / "dry"
    assert (
        main(["run", str(ROOT / "recipes" / "sam_clip.yaml"), "--dry-run", "--output", str(out)])
        == 0
    )
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == [
        "head_probing",
        "multitask_distillation",
        "resolution_adaptation",
    ]
    assert set(metrics[1]) >= {"step", "stage", "lr", "loss/clip", "loss/sam"}
    assert all(0 < m["loss/clip"] <= 2 for m in metrics)
    assert (
        out / "checkpoints" / "last" / "model.safetensors"
    ).stat().st_size > 300e6  # ViT-B+heads


def test_dry_run_ignores_target_caches(tiny_recipe_args, tmp_path):
    """A dry run trains on synthetic images, which no cache holds: teachers run online."""
    missing = tmp_path / "no-such-cache"
    args = ["run", *tiny_recipe_args, "--set", f"tasks.clip.targets_cache={missing}"]
    assert main([*args, "--output", str(tmp_path / "real"), "--max-steps", "1"]) == 2
    assert main([*args, "--dry-run", "--output", str(tmp_path / "dry")]) == 0
    assert (tmp_path / "dry" / "metrics.jsonl").is_file()


def test_dry_run_estimates_target_statistics_from_one_batch(tiny_recipe_args, tmp_path):
    """A dry run checks the wiring: a normalizer asking for 100 batches estimates from one."""
    normalize = "tasks.clip.normalize={type: standardize, params: {estimate_steps: 100}}"
    out = tmp_path / "dry"
    args = ["run", *tiny_recipe_args, "--set", normalize, "--dry-run", "--output", str(out)]
    assert main(args) == 0
    weights = load_file(str(out / "checkpoints" / "last" / "model.safetensors"))
    assert int(weights["normalizers.clip.updates"]) == 1
