"""An outside package's metric, installed with pip, is found by entry point, runs on every model
that offers what it needs, and appears in eval.json and in compare's columns."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.engine.build import build_components
from mergekit_vision.eval.evaluate import evaluate_components
from mergekit_vision.eval.metric import METRICS
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.registry import UnknownPluginError
from mergekit_vision.tools.compare import metric_columns

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "vmerge-embedding-spread-metric"


@pytest.fixture
def installed_metric(tmp_path, monkeypatch):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
            "--target", str(site), str(EXAMPLE),
        ],
        check=True,
    )  # fmt: skip
    monkeypatch.syspath_prepend(str(site))
    METRICS.reset_entry_points()
    yield site
    monkeypatch.undo()
    sys.modules.pop("vmerge_embedding_spread", None)
    METRICS.reset_entry_points()


def test_unknown_before_install():
    METRICS.reset_entry_points()
    with pytest.raises(UnknownPluginError, match="embedding_spread"):
        METRICS.get("embedding_spread")


def test_outside_metric_reaches_eval_json_and_compare(installed_metric, tiny_recipe_args, tmp_path):
    assert METRICS.entry("embedding_spread").source == "vmerge-embedding-spread-metric"
    data = tmp_path / "data"
    export_all(data, config=ToyWorldConfig(image_size=64), num_samples=4, seed=1, num_per_class=1)
    recipe_path, *sets = tiny_recipe_args
    overrides = [s for s in sets if s != "--set"] + [
        "eval={teachers: [clip, sam], heads: [clip_head, sam_head], resolution: 64, pictures: 0, "
        "metrics: [{type: zeroshot_top1}, {type: embedding_spread, params: {max_images: 8}}]}",
        f"eval.classification={{type: image_classes, params: {{root: {data}/image_classes}}}}",
    ]
    components = build_components(load_recipe(recipe_path, overrides))
    components.model.eval()
    results = evaluate_components(components, output_dir=tmp_path / "out")
    stored = json.loads((tmp_path / "out" / "eval.json").read_text())
    models = stored["models"]
    # CLIP and the merged model's CLIP head have an image embedding; SAM has none
    for name in ("clip", "merged"):
        assert 0.0 <= models[name]["embedding_spread"] <= 2.0
    assert "embedding_spread" not in models["sam"]
    assert stored["metrics"]["embedding_spread"] == {
        "metric": "embedding_spread",
        "ability": "embedding health",
        "higher_is_better": True,
    }
    columns = metric_columns(results["models"], results["metrics"])
    assert columns["embedding_spread"] == models["merged"]["embedding_spread"]
    assert (
        columns["clip_retention"]
        == pytest.approx(
            models["merged"]["zeroshot_cls_top1"] / models["clip"]["zeroshot_cls_top1"]
        )
        or models["clip"]["zeroshot_cls_top1"] == 0
    )
