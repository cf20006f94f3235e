"""Merged vs teachers, compare's retention columns and the teachers' on-disk probe features, on
hand-written rows."""

from __future__ import annotations

import pytest
import torch

from mergekit_vision.eval.probe_features import FeatureStore
from mergekit_vision.eval.report import versus_teachers
from mergekit_vision.tools.compare import metric_columns

METRICS = {
    "knn_top1": {"metric": "knn_top1", "ability": "probes", "higher_is_better": True},
    "prompt_seg_miou": {"metric": "p", "ability": "seg", "higher_is_better": True},
    "seconds_per_image": {"metric": "c", "ability": "seg", "higher_is_better": False},
}
MODELS = {
    "clip": {"knn_top1": 0.80, "seconds_per_image": 2.0},
    "sam": {"prompt_seg_miou": 0.50},
    "dino": {"knn_top1": 0.40},
    "merged": {"knn_top1": 0.20, "prompt_seg_miou": 0.55, "seconds_per_image": 4.0},
    "merged:clip": {"knn_top1": 0.60},
}


def test_each_teacher_is_compared_with_its_stand_in_or_the_backbone():
    versus = versus_teachers(MODELS, METRICS, ["clip", "sam", "dino"])
    assert versus["knn_top1"]["clip"] == {
        "model": "merged:clip",
        "ratio": pytest.approx(0.75),
        "above": False,
    }
    # no merged:dino row: DINO is compared with the backbone's own features
    assert versus["knn_top1"]["dino"] == {"model": "merged", "ratio": 0.5, "above": False}
    assert versus["prompt_seg_miou"]["sam"]["ratio"] == pytest.approx(1.1)
    assert versus["prompt_seg_miou"]["sam"]["above"] is True
    # lower is better: the teacher's 2 s over the merged model's 4 s, below
    assert versus["seconds_per_image"] == {
        "clip": {"model": "merged", "ratio": 0.5, "above": False}
    }
    assert "sam" not in versus["knn_top1"]  # a teacher without the metric is left out


def test_compare_reads_each_teachers_retention_from_its_stand_in():
    columns = metric_columns(MODELS, METRICS)
    assert columns["clip_retention"] == pytest.approx(0.60 / 0.80)
    assert columns["sam_retention"] == pytest.approx(0.55 / 0.50)
    assert columns["dino_retention"] == pytest.approx(0.20 / 0.40)
    assert "merged:clip_retention" not in columns


def test_teacher_features_are_computed_once_and_read_back(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(3, 2), torch.tensor([0, 1, 1])

    store = FeatureStore(tmp_path / "teachers.features")
    key = {"teacher": "clip", "side": 128}
    first = store.get(key, compute)
    again = FeatureStore(tmp_path / "teachers.features").get(key, compute)
    assert len(calls) == 1
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])
    store.get({"teacher": "clip", "side": 96}, compute)  # another side: computed
    assert len(calls) == 2
    # a torn file from an interrupted run is computed again, not read
    for stored in (tmp_path / "teachers.features").iterdir():
        stored.write_bytes(b"torn")
    store.get(key, compute)
    assert len(calls) == 3
    assert len(FeatureStore(None).get(key, compute)) == 2 and len(calls) == 4
