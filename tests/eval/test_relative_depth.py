"""Relative depth: AbsRel and delta1 after least-squares scale-and-shift alignment in disparity
space, by hand on tiny maps, and through ``vmerge run`` for a depth teacher and the merged model
standing in for it."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from mergekit_vision.cli.main import main
from mergekit_vision.eval.measures.relative_depth import RelativeDepth, depth_errors
from mergekit_vision.eval.metric import CAPABILITIES, LAYOUTS

from ..tiny_depth import write_tiny_depth

TRUTH = torch.tensor([[1.0, 2.0], [4.0, 0.0]])  # metres; 0: no measurement


def test_an_affine_disparity_is_perfect_in_either_space():
    disparity = 2.0 / TRUTH.clamp_min(1e-3) + 3.0  # any positive scale and shift of 1 / depth
    assert depth_errors(disparity, TRUTH) == pytest.approx((0.0, 1.0))
    metric_depth = 5.0 * TRUTH + 99 * (TRUTH == 0)  # a depth model off by a scale
    assert depth_errors(metric_depth, TRUTH, space="depth") == pytest.approx((0.0, 1.0))


def test_hand_computed_alignment_absrel_and_delta1():
    # the truth's disparities g = [1, 1/2, 1/4] and a prediction p = [1, 0, 0] (the fourth
    # pixel has no truth): least squares s = cov / var = (15/36) / (24/36) = 5/8 and
    # t = mean g - s mean p = 7/12 - 5/24 = 3/8, so the aligned disparities are [1, 3/8, 3/8],
    # the depths [1, 8/3, 8/3]: relative errors [0, 1/3, 1/3] and ratios [1, 4/3, 3/2]
    prediction = torch.tensor([[1.0, 0.0], [0.0, 50.0]])
    absrel, delta1 = depth_errors(prediction, TRUTH)
    assert absrel == pytest.approx(2 / 9) and delta1 == pytest.approx(1 / 3)
    # capped at 2 m: the 4 m pixel is not scored; p = [1, 0] fits g = [1, 1/2] exactly
    assert depth_errors(prediction, TRUTH, max_depth=2.0) == pytest.approx((0.0, 1.0))
    # p = [1, 1/2, -1]: s = (51/72) / (78/36) = 17/52, aligned disparities [267, 216, 63] / 312;
    # 63/312 is below 1 / 4 m and is raised to it (the 4 m pixel is then exact), so the depths
    # are [312/267, 13/9, 4]: relative errors [45/267, 5/18, 0], ratios [1.17, 1.38, 1]
    beyond = torch.tensor([[1.0, 0.5], [-1.0, 0.0]])
    absrel, delta1 = depth_errors(beyond, TRUTH)
    assert absrel == pytest.approx((45 / 267 + 5 / 18) / 3) and delta1 == pytest.approx(2 / 3)
    assert depth_errors(prediction, torch.zeros(2, 2)) is None  # nothing to score


class _ChannelDepth:
    """A model whose disparity map is its image's first channel."""

    capabilities = frozenset({"depth"})
    depth_space = "disparity"

    def depth_maps(self, images: torch.Tensor) -> torch.Tensor:
        return images[:, :1]


def test_the_metric_averages_images():
    exact = torch.tensor([[1.0, 2.0], [4.0, 1.0]])
    first = torch.zeros(3, 2, 2, dtype=torch.uint8)
    first[0, 0, 0] = 255  # p = [1, 0, 0] as in the hand-computed case
    second = torch.zeros(3, 2, 2, dtype=torch.uint8)
    second[0] = (200 / exact).round().to(torch.uint8)  # 200 * disparity: exact up to scale
    dataset = [{"image": first, "depth": TRUTH}, {"image": second, "depth": exact}]
    evaluation = SimpleNamespace(spec=SimpleNamespace(batch_size=2))
    metric = RelativeDepth()
    assert metric.applies_to(_ChannelDepth()) and metric.reads == "depth"
    assert "depth" in LAYOUTS
    assert "depth" in CAPABILITIES
    found = metric.compute(_ChannelDepth(), dataset, evaluation)
    assert found["depth_absrel"] == pytest.approx(1 / 9)  # (2/9 + 0) / 2
    assert found["depth_delta1"] == pytest.approx(2 / 3)  # (1/3 + 1) / 2
    assert [v.higher_is_better for v in metric.values] == [False, True]


def _write_depth_folder(root: Path, count: int = 3, side: int = 40) -> tuple[Path, Path]:
    images, depth = root / "rgb", root / "depth"
    images.mkdir(parents=True)
    depth.mkdir()
    rows = np.linspace(500, 5000, side, dtype=np.uint16)  # millimetres, far at the bottom
    for index in range(count):
        rgb = np.random.default_rng(index).integers(0, 255, (side, side, 3), dtype=np.uint8)
        Image.fromarray(rgb).save(images / f"{index:03d}.png")
        Image.fromarray(np.repeat(rows[:, None], side, axis=1)).save(depth / f"{index:03d}.png")
    return images, depth


RECIPE = """
name: tiny_depth
seed: 0
device: cpu
teachers:
  depth: {{type: depth, params: {{checkpoint: {teacher}}}}}
student:
  type: vitdet
  params: {{variant: custom, embed_dim: 32, depth: 2, num_heads: 2, global_attn_indexes: [1],
           patch_size: 8, window_size: 4, out_chans: 16, native_size: 32, init_from: null}}
heads:
  depth_head: {{type: depth_head, params: {{teacher: depth, features: 16, hidden: 8}}}}
tasks:
  depth:
    teacher: depth
    head: depth_head
    target: depth
    loss: {{type: ssi}}
    data: {{type: synthetic, params: {{num_samples: 4}}}}
    batch_size: 2
    resolution: 32
stages:
  - {{name: distil, steps: 2, tasks: [depth], train: [backbone, depth_head], lr: 1.0e-3}}
logging: {{every: 1, progress: false}}
eval:
  resolution: 32
  pictures: 0
  metrics: [{{type: relative_depth}}]
  depth: {{type: depth_folder, params: {{images: {images}, depth: {depth}}}}}
"""


def test_a_depth_teacher_and_its_merged_stand_in_are_measured(tmp_path):
    """A one-task recipe distilling a tiny Depth Anything into a ViT-Det through a depth_head
    with the ssi loss; the end-of-run evaluation measures both on a depth folder."""
    teacher = tmp_path / "depth_anything"
    write_tiny_depth(teacher)
    images, depth = _write_depth_folder(tmp_path / "nyu")
    path = tmp_path / "tiny_depth.yaml"
    path.write_text(RECIPE.format(teacher=teacher, images=images, depth=depth))
    run = tmp_path / "run"
    assert main(["run", str(path), "--output", str(run)]) == 0
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert all(np.isfinite(line["loss/depth"]) for line in lines)
    results = json.loads((run / "eval.json").read_text())
    models = results["models"]
    for name in ("depth", "merged:depth"):  # the teacher, and the head standing in for it
        assert 0 <= models[name]["depth_absrel"] and 0 <= models[name]["depth_delta1"] <= 1
    assert "depth_absrel" not in models["merged"]  # the backbone's tokens give no depth
    assert results["metrics"]["depth_absrel"]["higher_is_better"] is False
    assert results["versus_teachers"]["depth_delta1"]["depth"]["model"] == "merged:depth"
    assert results["samples"]["depth"] == 3
