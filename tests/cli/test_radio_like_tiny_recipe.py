"""recipes/radio_like_tiny.yaml, the toy counterpart of radio_like.yaml: agglomerative_tiny's
teachers, data and eval with RADIO's techniques switched on, and a dry run that trains every
stage with them."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
RADIO_LIKE_TINY = ROOT / "recipes" / "radio_like_tiny.yaml"
MULTI_RESOLUTION = {"low": [64, 96], "high": [128], "p_high": 0.25}


def test_it_is_agglomerative_tiny_with_the_techniques(capsys):
    assert main(["validate", str(RADIO_LIKE_TINY)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    base = yaml.safe_load((ROOT / "recipes" / "agglomerative_tiny.yaml").read_text())
    mine = yaml.safe_load(RADIO_LIKE_TINY.read_text())
    for section in ("toy", "teachers", "student", "dry_run"):  # the comparison is like for like
        assert mine[section] == base[section], section
    assert [s["steps"] for s in mine["stages"]] == [s["steps"] for s in base["stages"]]
    tasks = printed["tasks"]
    for task in ("clip", "dino_summary", "dino_spatial", "depth"):
        assert tasks[task]["resolution"] == MULTI_RESOLUTION, task
    assert tasks["sam"]["resolution"] == 128
    assert tasks["dino_spatial"]["normalize"]["type"] == "teacher_norm"
    assert printed["heads"]["dino_ladder"]["type"] == "ladder"
    replay = [stage["replay"]["type"] for stage in printed["stages"]]
    assert replay[-1] == "teacher_drop" and replay[0] != "teacher_drop"


def test_radio_like_tiny_dry_run(tmp_path):
    out = tmp_path / "dry"
    assert main(["run", str(RADIO_LIKE_TINY), "--dry-run", "--output", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["stage"] for m in metrics] == ["head_probing", "multitask_distillation"]
    assert set(metrics[0]) >= {"loss/clip", "loss/dino_summary", "loss/dino_spatial", "loss/depth"}
