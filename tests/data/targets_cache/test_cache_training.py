"""Training from a targets cache: the same losses as online, and stale caches refused."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mergekit_vision.cli.main import main

from .conftest import keyed_args


def losses(run: Path) -> list[dict[str, float]]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(x).items() if k.startswith("loss/")} for x in lines]


def test_run_from_cache_matches_online(built_cache, tiny_recipe_args, tmp_path):
    online, cached = tmp_path / "online", tmp_path / "cached"
    assert main(["run", *keyed_args(tiny_recipe_args, None), "--output", str(online)]) == 0
    assert main(["run", *keyed_args(tiny_recipe_args, built_cache), "--output", str(cached)]) == 0
    expected, got = losses(online), losses(cached)
    assert len(got) == len(expected) == 18  # both stages; 8 samples, 2 views: epochs 0-4
    for step_expected, step_got in zip(expected, got, strict=True):
        assert step_got.keys() == step_expected.keys()
        for name, value in step_expected.items():
            assert step_got[name] == pytest.approx(value, rel=2e-3, abs=1e-4), name


def refused(args: list[str], tmp_path: Path, capsys) -> str:
    code = main(["run", *args, "--output", str(tmp_path / "run"), "--max-steps", "1"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    return " ".join(err.split())


def test_changed_checkpoint_refused(
    built_cache, tiny_recipe_args, tiny_checkpoints, tmp_path, capsys
):
    weights = torch.load(tiny_checkpoints["clip"], weights_only=True)
    weights["visual.proj"] = weights["visual.proj"] * 1.01
    changed = tmp_path / "clip_finetuned.bin"
    torch.save(weights, changed)
    args = keyed_args(tiny_recipe_args, built_cache)
    args += ["--set", f"teachers.clip.params.checkpoint={changed}"]
    err = refused(args, tmp_path, capsys)
    assert "tasks.clip.targets_cache" in err
    assert "checkpoint_sha256.checkpoint: cached" in err
    assert "vmerge cache <recipe> --task clip" in err


def test_changed_resolution_refused(built_cache, tiny_recipe_args, tmp_path, capsys):
    args = keyed_args(tiny_recipe_args, built_cache) + ["--set", "tasks.clip.resolution=[64, 56]"]
    err = refused(args, tmp_path, capsys)
    assert "resolutions: cached [48, 64], recipe [56, 64]" in err


def test_changed_augmentation_and_views_refused(built_cache, tiny_recipe_args, tmp_path, capsys):
    args = keyed_args(tiny_recipe_args, built_cache) + ["--set", "tasks.sam.views=3"]
    assert "views: cached 2, recipe 3" in refused(args, tmp_path, capsys)
    args = keyed_args(tiny_recipe_args, built_cache) + ["--set", "tasks.sam.augment.hflip=false"]
    assert "augment.hflip: cached true, recipe false" in refused(args, tmp_path, capsys)


def test_changed_dataset_refused(built_cache, tiny_recipe_args, tmp_path, capsys):
    args = keyed_args(tiny_recipe_args, built_cache)
    args += ["--set", "tasks.clip.data.params.num_samples=12"]
    assert "dataset.params.num_samples: cached 8, recipe 12" in refused(args, tmp_path, capsys)


def test_missing_cache_refused(tiny_recipe_args, tmp_path, capsys):
    err = refused(keyed_args(tiny_recipe_args, tmp_path / "nowhere"), tmp_path, capsys)
    assert "no targets cache in" in err and "vmerge cache" in err
