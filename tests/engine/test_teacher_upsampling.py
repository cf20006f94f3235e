"""Teacher upsamplers and mixed data in a tiny merge run through ``vmerge run``: a dense CLIP
task trained against tile-stitched (or learned-upsampled) targets on a mixture of sources,
with the recipe's mistakes refused before any work."""

from __future__ import annotations

import json

import pytest
import torch
import yaml

from mergekit_vision.cli.main import main
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.calibration import fit_teacher_upsamplers
from mergekit_vision.engine.step import batch_targets
from mergekit_vision.errors import BuildError, RecipeError
from mergekit_vision.recipe.io import load_recipe

from ..conftest import TINY_RECIPE


def dense_recipe(tmp_path, checkpoints, upsampler: dict, **task) -> str:
    """The tiny recipe with one dense task: the CLIP teacher's 4 x 4 map (32 px input) as the
    target of a student at 64 px (8 x 8 tokens), its data a mixture of two sources."""
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["heads"] = {
        "dense_head": {
            "type": "adaptor",
            "params": {
                "teacher": "clip",
                "summary_target": "image_embedding",
                "spatial_target": "spatial",
                "upsample": False,
                "hidden_dim": 16,
            },
        }
    }
    sources = [
        {"type": "synthetic", "name": "own", "weight": 3.0, "params": {"num_samples": 6}},
        {"type": "synthetic", "name": "generic", "weight": 1.0, "params": {"num_samples": 6}},
    ]
    dense = {
        "teacher": "clip",
        "head": "dense_head",
        "target": "spatial",
        "loss": {"type": "mse"},
        "data": {"type": "mixture", "params": {"sources": sources, "length": 8}},
        "batch_size": 2,
        "resolution": 64,
        "teacher_upsampler": upsampler,
        "normalize": {"type": "standardize", "params": {"estimate_steps": 1}},
        **task,
    }
    data["tasks"] = {"dense": dense}
    data["stages"] = [
        {"name": "distill", "steps": 3, "tasks": ["dense"], "train": ["backbone", "dense_head"],
         "lr": 1.0e-3},
    ]  # fmt: skip
    data["teachers"].pop("sam")
    data["student"]["params"]["init_from"] = None
    data["teachers"]["clip"]["params"]["checkpoint"] = str(checkpoints["clip"])
    path = tmp_path / "dense.yaml"
    path.write_text(yaml.safe_dump(data))
    return str(path)


UPSAMPLERS = {
    "tile_stitch": {"type": "tile_stitch", "params": {"tiles": 2}},
    "learned": {"type": "learned", "params": {"factor": 2, "fit_steps": 2, "tiles": 2}},
}


@pytest.mark.parametrize("name", sorted(UPSAMPLERS))
def test_a_dense_task_trains_on_upsampled_targets(name, tmp_path, tiny_checkpoints):
    recipe = dense_recipe(tmp_path, tiny_checkpoints, UPSAMPLERS[name])
    run = tmp_path / "run"
    assert main(["run", recipe, "--output", str(run)]) == 0
    metrics = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(metrics) == 3
    assert all(0 < m["loss/dense"] < 1e3 for m in metrics)  # finite, on standardized targets


def test_targets_are_on_the_finer_grid_after_the_fit(tmp_path, tiny_checkpoints):
    path = dense_recipe(tmp_path, tiny_checkpoints, UPSAMPLERS["learned"])
    c = build_components(load_recipe(path))
    task = c.tasks["dense"]
    initial = [p.clone() for p in task.upsampler.parameters()]
    losses = fit_teacher_upsamplers(c.tasks, seed=0, device=c.device)
    assert len(losses["dense"]) == 2 and task.upsampler.fitted
    assert any(
        not torch.equal(a, b) for a, b in zip(initial, task.upsampler.parameters(), strict=True)
    )
    batch = {"image": torch.zeros(2, 3, 64, 64, dtype=torch.uint8)}
    images, _, target = batch_targets(
        task, batch, model=c.model, resolution=64, generator=torch.Generator(),
        device=c.device, update_statistics=False,
    )  # fmt: skip
    assert target.shape == (2, 64, 8, 8)  # the teacher's 4 x 4 grid, twice finer
    assert fit_teacher_upsamplers(c.tasks, seed=0, device=c.device) == {}  # fitted: no refit


def test_upsampler_mistakes_are_refused_with_their_place(tmp_path, tiny_checkpoints):
    tiles = UPSAMPLERS["tile_stitch"]
    summary = dense_recipe(
        tmp_path, tiny_checkpoints, tiles, target="image_embedding", loss={"type": "cosine"},
        normalize=None,
    )  # fmt: skip
    with pytest.raises(BuildError, match="tasks.dense.teacher_upsampler: target 'image_emb"):
        build_components(load_recipe(summary))
    with pytest.raises(BuildError, match="resolution 63 does not split into 2 x 2"):
        build_components(
            load_recipe(dense_recipe(tmp_path, tiny_checkpoints, tiles, resolution=63))
        )
    with pytest.raises(RecipeError, match="teacher_upsampler runs the teacher"):
        load_recipe(dense_recipe(tmp_path, tiny_checkpoints, tiles, targets_cache="cache"))
