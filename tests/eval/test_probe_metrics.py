"""The frozen-feature probes and retrieval as metrics: each runs on every model that has the
features it needs (teachers and merged alike), on its own train split, and its number is the pure
probe function of those features."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.engine.build import build_components
from mergekit_vision.eval.probe_features import frozen_features
from mergekit_vision.eval.probes import knn_top1
from mergekit_vision.eval.report import Evaluation
from mergekit_vision.recipe.io import load_recipe


@pytest.fixture(scope="module")
def splits(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("probe_splits")
    config = ToyWorldConfig(image_size=64)
    export_all(root / "train", config=config, num_samples=6, seed=11, num_per_class=1)
    export_all(root / "test", config=config, num_samples=6, seed=12, num_per_class=1)
    return root / "train", root / "test"


def test_probes_run_on_every_model_with_the_features(splits, tiny_recipe_args):
    train, test = splits
    recipe_path, *sets = tiny_recipe_args
    classes = "{type: image_classes, params: {root: %s/image_classes}}"
    semantic = "{type: voc, params: {root: %s/voc}}"
    overrides = [s for s in sets if s != "--set"] + [
        "eval={teachers: [clip, sam], heads: [clip_head, sam_head], resolution: 64, pictures: 0, "
        "calibration_samples: 0, metrics: ["
        f"{{type: knn_top1, params: {{train: {classes % train}, k: 3}}}}, "
        f"{{type: linear_probe, params: {{train: {classes % train}, epochs: 5}}}}, "
        f"{{type: linear_seg_probe, params: {{train: {semantic % train}, epochs: 2}}}}]}}",
        f"eval.classification={classes % test}",
        f"eval.semantic={semantic % test}",
    ]
    recipe = load_recipe(recipe_path, overrides)
    components = build_components(recipe)
    evaluation = Evaluation(components)
    models = evaluation.run()["models"]
    probes = {"knn_top1", "linear_probe_top1", "linear_seg_probe_miou"}
    assert probes <= set(models["clip"]) and probes <= set(models["merged"])
    assert set(models["sam"]) == {"linear_seg_probe_miou"}  # SAM has dense features only
    for name in ("clip", "sam", "merged"):
        for key in probes & set(models[name]):
            assert 0.0 <= models[name][key] <= 1.0
    # the metric is the pure probe function of the model's frozen features
    merged = evaluation.merged
    built = [evaluation.dataset(recipe.eval.classification, 64)]
    built.insert(0, evaluation.dataset(recipe.eval.metrics[0].params.train, 64))
    (x_train, y_train), (x_test, y_test) = (
        frozen_features(merged, "summary", d, "label", 4) for d in built
    )
    classes_count = len(built[1].class_names)
    expected = knn_top1(x_train, y_train, x_test, y_test, k=3, num_classes=classes_count)
    assert models["merged"]["knn_top1"] == pytest.approx(expected)


def test_retrieval_runs_on_text_aligned_models_of_a_captioned_set(tiny_recipe_args, tmp_path):
    from mergekit_vision.data.toy_world.export import export_captions

    data = export_captions(
        tmp_path / "captions", config=ToyWorldConfig(image_size=64), num_samples=5, seed=4
    )
    recipe_path, *sets = tiny_recipe_args
    captions = (
        f"{{type: captions, params: {{annotations: {data}/dataset_toy_world.json, "
        f"images: {data}/images}}}}"
    )
    overrides = [s for s in sets if s != "--set"] + [
        "eval={resolution: 64, pictures: 0, metrics: [{type: retrieval}]}",
        f"eval.captions={captions}",
    ]
    evaluation = Evaluation(build_components(load_recipe(recipe_path, overrides)))
    results = evaluation.run()
    models = results["models"]
    keys = {"image_to_text_R@1", "image_to_text_R@5", "text_to_image_R@1", "text_to_image_R@5"}
    assert set(models["clip"]) == keys and set(models["merged"]) >= keys
    assert models["sam"] == {}
    assert all(0.0 <= models["clip"][k] <= 1.0 for k in keys)
    assert results["samples"]["captions"] == 5
    assert results["metrics"]["text_to_image_R@1"]["ability"] == "image-text retrieval"
