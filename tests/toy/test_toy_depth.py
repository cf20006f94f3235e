"""The toy depth teacher: a real transformers Depth Anything trains on the toy depth maps, lowers
its loss, saves a ``save_pretrained`` folder the ``depth`` teacher loads, is cached by config;
the toy app exports the depth maps a recipe's ``depth_folder`` data reads."""

from __future__ import annotations

import io
import json
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from rich.console import Console

from mergekit_vision.data.depth_folder import DepthFolderDataset
from mergekit_vision.data.toy_world.world import generate_scene
from mergekit_vision.errors import RecipeError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.teachers.depth import DepthParams, DepthTeacher
from mergekit_vision.toy.prepare import export_toy_data, prepare_toy
from mergekit_vision.toy.spec import ToySpec
from mergekit_vision.toy.teachers import (
    config_hash,
    ensure_toy_teacher,
    file_sha256,
    is_current,
    sidecar_path,
)
from mergekit_vision.toy.train_depth import (
    TOY_DEPTH_CONFIG,
    ToyDepthTraining,
    disparity_targets,
    evaluate_toy_depth,
    fit_toy_depth,
    scene_images,
    toy_architecture,
    train_toy_depth,
)

from ..tiny_depth import TINY_DEPTH_CONFIG
from .conftest import WORLD

ROOT = Path(__file__).resolve().parents[2]
TINY = DepthParams(config=TINY_DEPTH_CONFIG)
TRAINING = ToyDepthTraining(steps=30, batch_size=4, lr=3e-3, warmup=2)


def test_the_loss_falls_and_the_targets_are_disparity() -> None:
    model, losses = fit_toy_depth(depth_params=TINY, training=TRAINING, world=WORLD, progress=False)
    assert len(losses) == 30 and not model.training
    assert sum(losses[-5:]) / 5 < 0.9 * sum(losses[:5]) / 5
    scene = generate_scene(WORLD, seed=1, index=0)
    target = disparity_targets([scene], size=64)[0]
    assert torch.allclose(target, 1 / scene.depth)


def test_saved_folder_loads_as_the_depth_teacher_and_scores(tmp_path: Path) -> None:
    folder = train_toy_depth(
        depth_params=TINY, training=TRAINING.model_copy(update={"steps": 3}), world=WORLD,
        output=tmp_path / "depth_toy", progress=False,
    )  # fmt: skip
    assert {"config.json", "model.safetensors", "preprocessor_config.json"} <= {
        p.name for p in folder.iterdir()
    }
    assert not list(tmp_path.glob(".depth_toy.*"))  # no temporary folder left behind
    teacher = DepthTeacher.build(DepthParams(checkpoint=folder))
    assert teacher.input_size == 28 and teacher.depth_space == "disparity"
    images = scene_images([generate_scene(WORLD, seed=0, index=0)])
    assert teacher(images, targets=["depth"])["depth"].shape == (1, 1, 28, 28)
    scores = evaluate_toy_depth(teacher, WORLD, num_scenes=4, batch_size=2)
    assert scores["absrel"] >= 0 and 0 <= scores["delta1"] <= 1


def test_the_teacher_folder_is_cached_by_config_and_content(tmp_path: Path) -> None:
    path, calls = tmp_path / "depth_toy", []
    training = TRAINING.model_copy(update={"steps": 1})

    def train(output: Path) -> Path:
        calls.append(output)
        return train_toy_depth(
            depth_params=TINY, training=training, world=WORLD, output=output, progress=False
        )

    kwargs = {"architecture": TINY, "training": training, "world": WORLD, "path": path}
    assert ensure_toy_teacher(**kwargs, train=train) is True
    record = json.loads(sidecar_path(path).read_text())
    assert record["checkpoint_sha256"] == file_sha256(path)
    assert is_current(path, config_hash(architecture=TINY, training=training, world=WORLD))
    assert ensure_toy_teacher(**kwargs, train=train) is False and len(calls) == 1
    (path / "config.json").write_text((path / "config.json").read_text() + " ")
    assert ensure_toy_teacher(**kwargs, train=train) is True and len(calls) == 2  # tampered


def test_a_missing_config_means_the_toy_architecture() -> None:
    assert toy_architecture(DepthParams()).config == TOY_DEPTH_CONFIG
    assert toy_architecture(TINY).config == TINY_DEPTH_CONFIG


def _spec(tmp_path: Path, **fields) -> ToySpec:
    sizes = {"train_samples": 3, "eval_samples": 2, "eval_per_class": 1, "caption_samples": 2,
             "probe_train_samples": 12, "probe_heldout_samples": 12}  # fmt: skip
    return ToySpec(world=WORLD, data_dir=tmp_path, **{**sizes, **fields})


def test_depth_maps_are_exported_once_beside_the_coco_images(tmp_path: Path) -> None:
    export_toy_data(_spec(tmp_path), console=Console(file=io.StringIO()))
    assert not (tmp_path / "train" / "depth").exists()  # no depth teacher, no depth maps
    out = io.StringIO()
    export_toy_data(_spec(tmp_path, depth_teacher="depth"), console=Console(file=out))
    # only the depth maps are new: the other exports are reused as they are
    assert out.getvalue().count("exporting") == 2 and "depth maps" in out.getvalue()
    for split, count in (("train", 3), ("eval", 2)):
        params = DepthFolderDataset.Params(
            images=tmp_path / split / "coco" / "images", depth=tmp_path / split / "depth"
        )
        dataset = DepthFolderDataset.build(params, resolution=64, resize="pad", seed=0)
        assert len(dataset) == count and dataset[0]["depth"].min() > 0
    again = io.StringIO()
    export_toy_data(_spec(tmp_path, depth_teacher="depth"), console=Console(file=again))
    assert again.getvalue() == ""


def test_the_depth_teacher_must_be_a_depth_teacher(tmp_path: Path) -> None:
    teachers = {
        name: SimpleNamespace(type=kind, params=SimpleNamespace(checkpoint=tmp_path / name))
        for name, kind in (("sam", "sam"), ("clip", "open_clip"))
    }
    recipe = SimpleNamespace(
        name="toy", toy=_spec(tmp_path, depth_teacher="clip"), teachers=teachers
    )
    with pytest.raises(RecipeError, match="toy.depth_teacher.*'depth' teacher"):
        prepare_toy(recipe, console=Console(file=io.StringIO()), progress=False)


def test_the_agglomerative_recipe_trains_the_toy_depth_architecture() -> None:
    recipe = load_recipe(ROOT / "recipes" / "agglomerative_tiny.yaml")
    assert recipe.toy.depth_teacher == "depth"
    params = recipe.teachers["depth"].params
    assert params.config == TOY_DEPTH_CONFIG  # the recipe and the default share one cache
    assert str(params.checkpoint) == "runs/toy-teachers/depth_toy"
    assert recipe.tasks["depth"].data.params.depth == Path("runs/toy-data/train/depth")
