"""recipes/sam_clip_dinov2_tiny.yaml end to end, shrunk: toy data exported, toy SAM and CLIP
trained for a few steps, the DINOv2-style timm teacher written, both stages run, and the eval
reports every teacher's ability (SAM's masks, CLIP's zero-shot labels, DINO's features)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from safetensors.torch import load_file

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
RECIPE = ROOT / "recipes" / "sam_clip_dinov2_tiny.yaml"
FEATURE_TASKS = ("clip", "dino_summary", "dino_spatial")


def shrunk(tmp_path: Path) -> list[str]:
    """``--set`` overrides that keep the recipe's plugins and stages but shrink every size."""
    data, teachers = tmp_path / "data", tmp_path / "teachers"
    train, evaluation = data / "train", data / "eval"
    coco = f"{{images: {train}/coco/images, annotations: {train}/coco/annotations/instances.json}}"
    shards = f"{train}/webdataset/shard-000000.tar"
    values = {
        "toy.data_dir": data,
        "toy.train_samples": 16,
        "toy.eval_samples": 10,
        "toy.eval_per_class": 1,
        "toy.sam_training.steps": 2,
        "toy.sam_training.batch_size": 2,
        "toy.clip_training.steps": 2,
        "toy.clip_training.batch_size": 4,
        "teachers.sam.params.checkpoint": teachers / "sam.pth",
        "teachers.clip.params.checkpoint": teachers / "clip.bin",
        "teachers.dino.params.checkpoint": teachers / "dino.safetensors",
        "tasks.sam.data.params": coco,
        "tasks.sam.batch_size": 2,
        "stages.0.steps": 2,
        "stages.1.steps": 2,
        "schedule.warmup_steps": 0,
        "logging.progress": False,
        "logging.every": 1,
        "eval.resolution": 64,
        "eval.extra_resolutions": "[]",
        "eval.calibration_samples": 2,
        "eval.pipeline_grid": 2,
        "eval.pictures": 0,
        "eval.teacher_results": tmp_path / "teacher_eval.json",  # not the repository's runs/
        "eval.classification.params.root": evaluation / "image_classes",
        "eval.semantic.params.root": evaluation / "voc",
        "eval.instances.params.images": evaluation / "coco" / "images",
        "eval.instances.params.annotations": evaluation / "coco/annotations/instances.json",
        "toy.caption_samples": 4,
        "toy.probe_train_samples": 8,
        "toy.probe_heldout_samples": 4,
        "eval.captions.params.annotations": evaluation / "captions/dataset_toy_world.json",
        "eval.captions.params.images": evaluation / "captions/images",
    }
    # the probes (eval.metrics 6, 7: k-NN and linear; 8: linear seg) read the toy probe splits
    for index in (6, 7):
        for split in ("train", "heldout"):
            root = data / f"probe_{split}" / "image_classes"
            values[f"eval.metrics.{index}.params.{split}.params.root"] = root
    for split in ("train", "heldout"):
        values[f"eval.metrics.8.params.{split}.params.root"] = data / f"probe_{split}" / "voc"
    for task in ("clip", "dino_summary", "dino_spatial"):
        values[f"tasks.{task}.data.params"] = f"{{urls: {shards}, num_samples: 16}}"
        values[f"tasks.{task}.batch_size"] = 2
    for task in ("clip", "sam", "dino_summary", "dino_spatial"):
        values[f"tasks.{task}.resolution"] = 64
    return [arg for key, value in values.items() for arg in ("--set", f"{key}={value}")]


@pytest.fixture(scope="module")
def three_teacher_run(tmp_path_factory) -> Path:
    tmp_path = tmp_path_factory.mktemp("three_teachers")
    run = tmp_path / "run"
    assert main(["run", str(RECIPE), *shrunk(tmp_path), "--output", str(run)]) == 0
    return run


def test_eval_reports_each_teachers_ability(three_teacher_run):
    results = json.loads((three_teacher_run / "eval.json").read_text())
    merged = results["models"]["merged"]
    assert {"prompt_seg_miou", "mask_ap"} <= set(merged)  # SAM's
    assert {"zeroshot_cls_top1", "semseg_miou"} <= set(merged)  # CLIP's
    retention = results["feature_retention"]  # DINO's (and CLIP's embedding)
    assert set(retention) == set(FEATURE_TASKS)
    assert retention["dino_spatial"]["teacher"] == "dino"
    assert retention["dino_summary"]["target"] == "summary"
    for row in retention.values():
        for metric in ("cosine", "centered_cosine", "mean_baseline_cosine"):
            assert -1 <= row[metric] <= 1, metric
        assert row["images"] == 10


def test_the_dino_teacher_was_written_and_distilled(three_teacher_run):
    metrics = [json.loads(line) for line in (three_teacher_run / "metrics.jsonl").open()]
    assert {"loss/dino_summary", "loss/dino_spatial", "loss/clip"} <= set(metrics[0])
    assert "loss/sam" in metrics[-1]
    dino = Path(
        next(
            line.split(":", 1)[1].strip()
            for line in (three_teacher_run / "recipe.resolved.yaml").read_text().splitlines()
            if "dino.safetensors" in line
        )
    )
    weights = load_file(str(dino))
    assert weights["pos_embed"].shape == (1, 1 + 8 * 8, 96)  # 112 px / patch 14, plus the class
    assert json.loads(dino.with_name(dino.name + ".json").read_text())["seed"] == 2000
