"""``vmerge bench --data``: loader images/s per worker, workers needed, the JPEG decoders."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import yaml

from mergekit_vision.cli.main import main
from mergekit_vision.errors import RecipeError
from mergekit_vision.tools.data_bench import bench_data, workers_needed
from mergekit_vision.tools.data_samples import write_sa1b_folder, write_webdataset_shards

from ..conftest import TINY_RECIPE

SMALL = {"sa1b": (48, 72), "webdataset": (40, 56)}  # (H, W) of the written images


def _recipe(tmp_path: Path, sam: dict, clip: dict) -> Path:
    """The tiny recipe with its SAM task on SA-1B files and its CLIP task on shards."""
    data = yaml.safe_load(TINY_RECIPE.read_text())
    data["tasks"]["sam"]["data"] = {"type": "sa1b", "params": sam}
    data["tasks"]["clip"]["data"] = {"type": "webdataset", "params": clip}
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def test_workers_needed_by_hand():
    assert workers_needed(10.0, batch_size=8, steps_per_s=2.5) == 2  # 20 img/s at 10 per worker
    assert workers_needed(9.9, batch_size=8, steps_per_s=2.5) == 3  # 20.2 workers' worth
    assert workers_needed(0.1 + 0.2, batch_size=3, steps_per_s=0.1) == 1  # 0.3 / 0.3, not 2
    assert workers_needed(500.0, batch_size=1, steps_per_s=1.0) == 1  # never below one


def test_sample_files_stand_in_for_the_recipes_data(tmp_path):
    recipe = _recipe(tmp_path, {"root": "/no/such/sa1b"}, {"urls": "/no/such/{0..1}.tar"})
    result = bench_data(
        recipe,
        samples=3,
        gpu_steps_per_s=2.0,
        synthetic=True,
        synthetic_files=2,
        synthetic_sizes=SMALL,
        synthetic_masks=5,
        decoder_images=2,
    )
    assert set(result["tasks"]) == {"sam", "clip"} and not result["skipped"]
    for row in result["tasks"].values():
        assert row["images_per_s"] > 0 and row["timed_samples"] == 3
        assert row["resolution"] == 64  # the tiny recipe's load resolution
        expected = math.ceil(2.0 * row["batch_size"] / row["images_per_s"] - 1e-9)
        assert row["workers_needed"] == max(1, expected)
        decoders = row["decoders"]
        assert decoders["images"] == 2 and decoders["same_pixels"]
        assert all(s > 0 for s in decoders["seconds_per_image"].values())
        per = decoders["seconds_per_image"]
        assert decoders["ratio_pil_over_torchvision"] == pytest.approx(
            per["pil"] / per["torchvision"]
        )
    assert 0 < result["tasks"]["sam"]["masks_per_image"] <= 5
    assert result["tasks"]["clip"]["masks_per_image"] == 0
    total = sum(row["workers_needed"] for row in result["tasks"].values())
    assert result["workers_needed_total"] == total


def test_cli_times_the_recipes_own_files(tmp_path):
    root = write_sa1b_folder(tmp_path / "sa1b", count=2, size=SMALL["sa1b"], masks=3)
    urls = write_webdataset_shards(tmp_path / "shards", count=3, size=SMALL["webdataset"])
    recipe = _recipe(tmp_path, {"root": str(root)}, {"urls": urls})
    out = tmp_path / "data.json"
    args = ["bench", "--data", str(recipe), "--samples", "2", "--json", str(out)]
    assert main(args) == 0
    result = json.loads(out.read_text())
    assert not result["synthetic"] and result["gpu_steps_per_s"] is None
    assert {row["dataset"] for row in result["tasks"].values()} == {"sa1b", "webdataset"}
    assert all(row["workers_needed"] is None for row in result["tasks"].values())
    assert all(row["images_per_s"] > 0 for row in result["tasks"].values())


def test_sample_files_skip_other_dataset_types(tmp_path):
    result = bench_data(TINY_RECIPE, samples=1, synthetic=True, synthetic_files=1)
    assert result["tasks"] == {} and set(result["skipped"]) == {"sam", "clip"}
    assert "'synthetic'" in result["skipped"]["sam"]


def test_missing_data_names_the_task_and_the_way_out(tmp_path):
    recipe = _recipe(tmp_path, {"root": str(tmp_path / "absent")}, {"urls": "/x/{0..1}.tar"})
    with pytest.raises(RecipeError) as caught:
        bench_data(recipe, samples=1)
    where = [issue.path for issue in caught.value.issues]
    assert where == ["tasks.clip.data", "tasks.sam.data", "--data"]
    assert "absent" in caught.value.issues[1].message
    assert "--synthetic" in caught.value.issues[2].message
