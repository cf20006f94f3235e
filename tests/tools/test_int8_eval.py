"""The int8 model's eval metrics on a tiny trained run: fp32 is what ``vmerge eval`` wrote."""

from __future__ import annotations

import json

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.tools.int8_eval import int8_metric_change

from ..conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def evaluated_run(tmp_path_factory, tiny_checkpoints):
    data = tmp_path_factory.mktemp("toy_eval")
    export_all(data, config=ToyWorldConfig(image_size=64), num_samples=12, seed=7, num_per_class=1)
    run = tmp_path_factory.mktemp("int8") / "run"
    args = [
        "run", str(TINY_RECIPE),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
        "--set", "eval.teachers=[clip]", "--set", "eval.heads=[clip_head, sam_head]",
        "--set", "eval.resolution=64", "--set", "eval.calibration_samples=4",
        "--set", "eval.pictures=0",
        "--set", "eval.metrics=[{type: zeroshot_top1}, {type: promptable_segmentation}]",
        "--set", f"eval.classification={{type: image_classes, "
                 f"params: {{root: {data}/image_classes}}}}",
        "--set", (f"eval.instances={{type: coco, params: {{images: {data}/coco/images, "
                  f"annotations: {data}/coco/annotations/instances.json}}}}"),
        "--set", "stages.0.steps=2", "--set", "stages.1.steps=2",
        "--output", str(run),
    ]  # fmt: skip
    assert main(args) == 0
    return run


def test_fp32_is_the_evaluation_and_int8_its_change(evaluated_run):
    result = int8_metric_change(evaluated_run)
    merged = json.loads((evaluated_run / "eval.json").read_text())["models"]["merged"]
    keys = {"zeroshot_cls_top1", "prompt_seg_miou", "prompt_seg_miou_box", "mask_ap"}
    assert keys <= set(result["change"])
    for key in keys:
        assert result["fp32"][key] == pytest.approx(merged[key])
        assert 0 <= result["int8"][key] <= 1
        assert result["change"][key] == pytest.approx(result["int8"][key] - result["fp32"][key])
    # int8 changes the masks, but not by much
    assert result["int8"]["prompt_seg_miou"] != result["fp32"]["prompt_seg_miou"]
    assert abs(result["change"]["prompt_seg_miou"]) < 0.1
