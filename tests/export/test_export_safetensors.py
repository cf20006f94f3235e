"""--format safetensors: the whole merged model, its recipe and a model card, loadable again."""

from __future__ import annotations

import json

import torch

from mergekit_vision.cli.main import main
from mergekit_vision.export.loading import load_run


def test_folder_loads_back_and_card_names_teachers_data_and_metrics(tiny_run, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoints").symlink_to(tiny_run.run_dir / "checkpoints")
    metrics = {
        "resolution": 64,
        "models": {"merged": {"by_resolution": {"64": {"mask_ap": 0.4321}}}},
    }
    (run_dir / "eval.json").write_text(json.dumps(metrics))
    out = tmp_path / "out"
    assert main(["export", str(run_dir), "--format", "safetensors", "--output", str(out)]) == 0
    assert {p.name for p in out.iterdir()} == {
        "model.safetensors",
        "recipe.resolved.yaml",
        "eval.json",
        "README.md",
    }
    card = (out / "README.md").read_text()
    assert "# tiny_sam_clip" in card
    assert (
        "- `sam`: `sam` (variant=custom" in card
        and "- `clip`: `open_clip` (model=tiny-clip" in card
    )
    assert "task `clip` (teacher `clip`, target `image_embedding`): `synthetic`" in card
    assert "| merged | mask_ap | 0.4321 |" in card
    loaded = load_run(out).model.state_dict()
    original = tiny_run.model.state_dict()
    assert set(loaded) == set(original)
    assert all(torch.equal(loaded[k], original[k]) for k in original)


def test_card_says_when_the_run_was_not_evaluated(tiny_run, tmp_path):
    assert (
        main(
            ["export", str(tiny_run.run_dir), "--format", "safetensors", "--output", str(tmp_path)]
        )
        == 0
    )
    assert "Not evaluated yet" in (tmp_path / "README.md").read_text()
    assert not (tmp_path / "eval.json").exists()
