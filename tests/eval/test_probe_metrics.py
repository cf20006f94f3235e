"""The frozen-feature probes and retrieval as metrics: each runs on every model that has the
features it needs (teachers and merged alike), on its own train split, and its number is the pure
probe function of those features."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.engine.build import build_components
from mergekit_vision.eval.probe_features import frozen_features
from mergekit_vision.eval.probes import knn_top1
from mergekit_vision.eval.report import Evaluation
from mergekit_vision.eval.tasks import batches
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
        f"{{type: knn_top1, params: {{train: {classes % train}, k: 3, "
        f"heldout: {classes % test}}}}}, "
        f"{{type: linear_probe, params: {{train: {classes % train}, epochs: 5, "
        f"heldout: {classes % test}}}}}, "
        f"{{type: linear_seg_probe, params: {{train: {semantic % train}, epochs: 2}}}}]}}",
        f"eval.semantic={semantic % test}",  # the seg probe scores the section's own data
    ]
    recipe = load_recipe(recipe_path, overrides)
    components = build_components(recipe)
    evaluation = Evaluation(components)
    models = evaluation.run()["models"]
    probes = {"knn_top1", "linear_probe_top1", "linear_seg_probe_miou"}
    assert probes <= set(models["clip"]) and probes <= set(models["merged"])
    assert set(models["sam"]) - {"by_resolution"} == probes  # summary: embeddings' mean
    for name in ("clip", "sam", "merged"):
        for key in probes & set(models[name]):
            assert 0.0 <= models[name][key] <= 1.0
    # the metric is the pure probe function of the model's frozen features
    knn = recipe.eval.metrics[0].params
    built = [evaluation.dataset(knn.train, 64), evaluation.dataset(knn.heldout, 64)]
    classes_count = len(built[1].class_names)
    # the backbone's tokens ("merged") and the CLIP head's embedding ("merged:clip", the merged
    # model standing in for CLIP) are each probed on their own features
    assert set(models["merged:clip"]) - {"by_resolution"} == {"knn_top1", "linear_probe_top1"}
    for name, model in (("merged", evaluation.merged), ("merged:clip", evaluation.views["clip"])):
        (x_train, y_train), (x_test, y_test) = (
            frozen_features(model, "summary", d, "label", 4) for d in built
        )
        expected = knn_top1(x_train, y_train, x_test, y_test, k=3, num_classes=classes_count)
        assert models[name]["knn_top1"] == pytest.approx(expected)
    head = components.model.heads["clip_head"]
    image = next(batches(built[1], batch_size=2))["image"]
    direct = head(components.model.student(image))["image_embedding"]
    if "clip" in components.model.normalizers:
        direct = components.model.normalizers["clip"].denormalize(direct)
    view = evaluation.views["clip"].summary_features(image)
    assert torch.allclose(view, direct.float(), atol=1e-6)


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
    assert set(models["clip"]) - {"by_resolution"} == keys and set(models["merged"]) >= keys
    assert models["sam"] == {"by_resolution": {"64": {}}}
    assert all(0.0 <= models["clip"][k] <= 1.0 for k in keys)
    assert results["samples"]["captions"] == 5
    assert results["metrics"]["text_to_image_R@1"]["ability"] == "image-text retrieval"
