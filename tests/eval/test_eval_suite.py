"""`vmerge eval` on a tiny merge: every model gets the keys of the abilities it has, the
picture grid is written, and the refinement and click helpers behave on constructed cases."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from mergekit_vision.cli.main import main
from mergekit_vision.contracts import Prompts
from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.eval.tasks import (
    THRESHOLDS,
    interior_points,
    refined_labels,
    refined_segmenter,
    semantic_segmentation,
)


@pytest.fixture(scope="module")
def toy_eval_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("toy_eval")
    export_all(out, config=ToyWorldConfig(image_size=64), num_samples=12, seed=7, num_per_class=1)
    return out


def test_eval_writes_every_models_abilities(toy_eval_data, tiny_recipe_args, tmp_path, capsys):
    run = tmp_path / "run"
    data = toy_eval_data
    evaluation = [
        "--set", "eval.teachers=[clip, sam]", "--set", "eval.heads=[clip_head, sam_head]",
        "--set", "eval.resolution=64", "--set", "eval.extra_resolutions=[48]",
        "--set", "eval.calibration_samples=4", "--set", "eval.pictures=2",
        "--set", "eval.pipeline_grid=4",
        "--set", f"eval.classification={{type: image_classes, "
                 f"params: {{root: {data}/image_classes}}}}",
        "--set", f"eval.semantic={{type: voc, params: {{root: {data}/voc}}}}",
        "--set", (f"eval.instances={{type: coco, params: {{images: {data}/coco/images, "
                  f"annotations: {data}/coco/annotations/instances.json}}}}"),
        "--set", "stages.0.steps=2", "--set", "stages.1.steps=2",
    ]  # fmt: skip
    assert main(["run", *tiny_recipe_args, *evaluation, "--output", str(run)]) == 0
    results = json.loads((run / "eval.json").read_text())
    models = results["models"]
    assert list(models) == ["clip", "sam", "pipeline", "merged"]
    assert set(models["clip"]) >= {"zeroshot_cls_top1", "semseg_miou"}
    assert "prompt_seg_miou" not in models["clip"]
    assert set(models["sam"]) >= {"prompt_seg_miou", "mask_ap"}
    assert "zeroshot_cls_top1" not in models["sam"]
    assert list(results["metrics"]) == [
        "zeroshot_cls_top1",
        "prompt_seg_miou",
        "prompt_seg_miou_box",
        "mask_ap",
        "mask_ap50",
        "semseg_miou",
        "semseg_miou_refined",
        "seconds_per_image",
        "gflops_per_image",
    ]
    assert results["metrics"]["semseg_miou_refined"] == {
        "metric": "refined_semseg",
        "ability": "semantic segmentation",
        "higher_is_better": True,
    }
    assert results["metrics"]["seconds_per_image"]["higher_is_better"] is False
    assert set(models["pipeline"]) >= {"semseg_miou", "seconds_per_image", "gflops_per_image"}
    merged_keys = {"zeroshot_cls_top1", "prompt_seg_miou", "semseg_miou", "semseg_miou_refined"}
    assert set(models["merged"]) >= merged_keys | {"mask_ap"}
    assert set(models["merged"]["by_resolution"]) == {"64", "48"}
    for model in models.values():
        for key, value in model.items():
            if key != "by_resolution":
                assert 0 <= value, key
    assert set(results["robustness"]) == set(models)  # every model across resolutions
    assert set(models["sam"]["by_resolution"]) == {"64", "48"}
    versus = results["versus_teachers"]
    assert set(versus["prompt_seg_miou"]) == {"sam"} and set(versus["zeroshot_cls_top1"]) == {
        "clip"
    }
    point = versus["prompt_seg_miou"]["sam"]
    assert point["ratio"] == pytest.approx(
        models["merged"]["prompt_seg_miou"] / models["sam"]["prompt_seg_miou"]
    )
    assert point["above"] == (point["ratio"] > 1) and point["model"] == "merged"
    ratios = results["robustness"]["merged"]
    assert set(ratios) == {k for k, a in results["metrics"].items() if a["higher_is_better"]}
    sides = models["merged"]["by_resolution"]
    small, main_side = (sides[r]["prompt_seg_miou"] for r in ("48", "64"))
    assert ratios["prompt_seg_miou"] == pytest.approx(small / main_side)
    worst = min(r for r in ratios.values() if r is not None)
    assert models["merged"]["worst_resolution_ratio"] == worst
    assert results["samples"]["semantic"] == 12 - 4
    assert (run / "eval.png").stat().st_size > 1000
    printed = capsys.readouterr().out
    assert "semseg_miou_refined" in printed and "across resolutions" in printed
    assert "worst ratio" in printed and "merged vs teachers" in printed and "x below" in printed

    # evaluating the finished run again from its folder gives the same numbers
    assert main(["eval", str(run), "--output", str(tmp_path / "again")]) == 0
    again = json.loads((tmp_path / "again" / "eval.json").read_text())
    assert again["models"]["merged"]["prompt_seg_miou"] == pytest.approx(
        models["merged"]["prompt_seg_miou"]
    )


def test_interior_point_is_deep_inside():
    masks = torch.zeros(1, 9, 9, dtype=torch.bool)
    masks[0, 1:8, 2:7] = True  # 7 rows x 5 columns: the centre (4, 4) is deepest
    (point,) = interior_points(masks)
    assert point.tolist() == [4.5, 4.5]


def test_interior_point_treats_the_image_border_as_background():
    # SAM's click protocol: a mask in the image corner is clicked one pixel in from the border,
    # not on it; masks of different depths are handled in one batch.
    masks = torch.zeros(2, 9, 9, dtype=torch.bool)
    masks[0, 0:3, 0:5] = True  # deepest pixels: row 1, columns 1-3
    masks[1, 1:8, 2:7] = True
    assert interior_points(masks).tolist() == [[2.5, 1.5], [4.5, 4.5]]


class _Oracle:
    """Patch embeddings say class 1 on the left half; masks are positive where x < 6."""

    def encode(self, images):
        return images

    def embed_patches_from(self, features):
        patches = torch.zeros(features.shape[0], 2, 2, 2)
        patches[:, :, 0, 0] = 1.0  # left column -> class 0 text
        patches[:, :, 1, 1] = 1.0  # right column -> class 1 text
        return patches

    def mask_logits(self, encoded, prompts: Prompts):
        size = prompts.image_size
        xs = torch.arange(size).float()
        mask = torch.where(xs < 6, 5.0, -5.0).expand(size, size)
        return mask.expand(1, prompts.count, size, size)

    def head_tokens(self, features):
        return self.embed_patches_from(features)  # tokens are the patch embeddings here

    def embed_tokens(self, tokens):
        return tokens

    def embed_regions(self, tokens, regions):
        """Each region's mean patch embedding (patches spread over the pixels they cover)."""
        patches = tokens.permute(2, 0, 1)  # [D, h, w]
        pixels = F.interpolate(patches[None], size=regions.shape[-2:], mode="nearest")[0]
        area = regions.flatten(1).sum(1, keepdim=True).clamp(min=1)
        return torch.einsum("nhw,dhw->nd", regions.float(), pixels) / area


@pytest.mark.parametrize("mask_class", ["pooled", "vote"])
def test_refinement_follows_the_promptable_masks(mask_class):
    texts = torch.eye(2)
    labels = refined_labels(
        _Oracle(), torch.zeros(1, 3, 8, 8), texts, 0.5, points_per_class=2, mask_class=mask_class
    )
    # coarse labels split at x=4; the refined masks (positive for x < 6) move the boundary
    assert (labels[0, :, :6] > 0).all()
    assert (labels[0, :, 6:] == 0).all()


class _ConfidentRightOracle(_Oracle):
    """Every prompt's mask is x < 6, more confident the further right its point."""

    def mask_logits(self, encoded, prompts: Prompts):
        size = prompts.image_size
        xs = torch.arange(size).float()
        point_x = prompts.points[0, :, 0, 0]  # [N]
        inside = torch.where(xs < 6, 1.0, -1.0)
        return ((5.0 + point_x)[:, None, None] * inside.expand(size, size))[None]


def test_refined_mask_takes_the_class_its_pixels_vote_for():
    # Coarse: class 0 for x < 4, class 1 for x >= 4. The points of both classes return the same
    # object (x < 6), 4 of whose 6 columns say class 0: the whole object is class 0, although
    # the masks prompted from class 1's points have the larger logits.
    texts = torch.eye(2)
    model = _ConfidentRightOracle()
    labels = refined_labels(
        model, torch.zeros(1, 3, 8, 8), texts, 0.5, points_per_class=2, mask_class="vote"
    )
    assert (labels[0, :, :6] == 1).all()
    assert (labels[0, :, 6:] == 0).all()


class _PooledSaysRightOracle(_ConfidentRightOracle):
    """The same masks and patch votes, but every region's pooled embedding is class 1's text."""

    def embed_regions(self, tokens, regions):
        return torch.tensor([[0.0, 1.0]]).expand(len(regions), -1)


def test_pooled_mask_class_is_the_regions_own_embedding():
    # The votes say class 0 for the object (previous test); its pooled embedding says class 1,
    # and with mask_class="pooled" that is what the object is painted with.
    texts = torch.eye(2)
    model = _PooledSaysRightOracle()
    labels = refined_labels(model, torch.zeros(1, 3, 8, 8), texts, 0.5, points_per_class=2)
    assert (labels[0, :, :6] == 2).all()
    assert (labels[0, :, 6:] == 0).all()
    voted = refined_labels(
        model, torch.zeros(1, 3, 8, 8), texts, 0.5, points_per_class=2, mask_class="vote"
    )
    assert (voted[0, :, :6] == 1).all()


def test_pooled_mask_class_needs_region_embeddings():
    with pytest.raises(ValueError, match="embed_regions"):
        refined_segmenter(object(), torch.eye(2), points_per_class=2)


class _SquareOracle:
    """Random patch embeddings; each point prompt's mask is the 5x5 square around it, more
    confident the further down its point, so every prompt's own mask matters."""

    def __init__(self, batch: int = 3, grid: int = 4, dim: int = 3):
        self.patches = torch.randn(
            batch, grid, grid, dim, generator=torch.Generator().manual_seed(0)
        )

    def encode(self, images):
        return images

    def embed_patches_from(self, features):
        return self.patches[: features.shape[0]]

    def mask_logits(self, encoded, prompts: Prompts):
        size = prompts.image_size
        points = prompts.points[0, :, 0]  # [N, 2] xy
        ys, xs = torch.meshgrid(torch.arange(size) + 0.5, torch.arange(size) + 0.5, indexing="ij")
        near = (xs - points[:, 0, None, None]).abs().le(2) & (
            ys - points[:, 1, None, None]
        ).abs().le(2)
        return (torch.where(near, 1.0, -1.0) * (1.0 + points[:, 1, None, None]))[None]

    def head_tokens(self, features):
        return self.embed_patches_from(features)

    def embed_tokens(self, tokens):
        return tokens

    def embed_regions(self, tokens, regions):
        """A region's embedding depends on where it is: its centroid, lifted to 3 dims."""
        ys, xs = torch.meshgrid(torch.arange(16.0), torch.arange(16.0), indexing="ij")
        area = regions.flatten(1).sum(1).clamp(min=1)
        cy = (regions * ys).flatten(1).sum(1) / area
        cx = (regions * xs).flatten(1).sum(1) / area
        return torch.stack([torch.sin(cx), torch.cos(cy), torch.sin(cx + cy)], dim=1)


@pytest.mark.parametrize("mask_class", ["pooled", "vote"])
def test_refined_labels_at_all_thresholds_at_once_equal_each_alone(mask_class):
    # Calibration labels every image at every threshold in one SAM-head call per image; the
    # prompts of one threshold must come back as that threshold's masks.
    texts = torch.randn(3, 3, generator=torch.Generator().manual_seed(1))
    segmenter = refined_segmenter(_SquareOracle(), texts, points_per_class=2, mask_class=mask_class)
    prepared = segmenter.prepare(torch.zeros(3, 3, 16, 16))
    together = segmenter.labels(prepared, THRESHOLDS)
    alone = [segmenter.labels(prepared, [t])[0] for t in THRESHOLDS]
    assert len({tuple(labels.flatten().tolist()) for labels in alone}) > 2  # thresholds differ
    for one, other in zip(together, alone, strict=True):
        assert torch.equal(one, other)


def test_semantic_segmentation_calibrates_each_labeler_on_the_first_images():
    # Labeler "half" is right at threshold 0.5 only; "all" ignores the threshold. Four images
    # of truth 1: the first calibrates, the other three are scored.
    dataset = [
        {"image": torch.zeros(3, 4, 4, dtype=torch.uint8), "semantic": torch.ones(4, 4).long()}
        for _ in range(4)
    ]

    def half(prepared, thresholds):
        return [torch.full((len(prepared), 4, 4), int(t == 0.5)) for t in thresholds]

    def everything(prepared, thresholds):
        return [torch.ones(len(prepared), 4, 4, dtype=torch.long) for _ in thresholds]

    results = semantic_segmentation(
        lambda images: images,
        {"half": half, "all": everything},
        dataset,
        num_classes=1,
        calibration=1,
        batch_size=2,
    )
    assert results["half"] == {"miou": 1.0, "threshold": 0.5}
    assert results["all"] == {"miou": 1.0, "threshold": THRESHOLDS[0]}
