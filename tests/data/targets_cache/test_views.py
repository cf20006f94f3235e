"""Keyed views: deterministic per (seed, task, key, view), cycled by epoch through the stream."""

from __future__ import annotations

import pickle

import pytest
import torch

from mergekit_vision.data.synthetic import SyntheticShapesDataset
from mergekit_vision.data.views import AugmentSpec, augment_sample, with_views
from mergekit_vision.engine.streams import BatchStream


def viewed(views: int = 3, augment: AugmentSpec | None = AugmentSpec(scale=(0.3, 1.0), hflip=True)):
    base = SyntheticShapesDataset(num_samples=6, max_objects=2, resolution=32, seed=1, max_masks=4)
    return with_views(base, views=views, augment=augment, seed=7, task="sam")


def test_stream_cycles_views_by_epoch_and_resumes():
    dataset = viewed()
    stream = BatchStream(dataset, batch_size=3, seed=0)
    seen = [stream.next() for _ in range(8)]  # 6 samples: two batches per epoch
    assert [b["view"].tolist() for b in seen[::2]] == [[0] * 3, [1] * 3, [2] * 3, [0] * 3]
    again = [s for s in seen if s["view"][0] == 0]
    first, fourth = (
        sorted(again[0]["key"] + again[1]["key"]),
        sorted(again[2]["key"] + again[3]["key"]),
    )
    assert first == fourth  # epoch 3 is view 0 again, over the same samples
    resumed = BatchStream(dataset, batch_size=3, seed=0, start={"epoch": 1, "offset": 3})
    expected = seen[3]
    got = resumed.next()
    assert got["key"] == expected["key"] and torch.equal(got["image"], expected["image"])


def test_a_view_is_the_same_in_workers_and_after_pickling():
    dataset = viewed()
    copy = pickle.loads(pickle.dumps(dataset))
    for item in [(0, 4), (1, 4), (5, 2)]:
        a, b = dataset[item], copy[item]
        assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
        assert a["view_seed"] == b["view_seed"]
    assert dataset[(1, 4)]["view_seed"] != dataset[(2, 4)]["view_seed"]


def test_masks_follow_the_image():
    sample = viewed(augment=None)[(0, 0)]
    image = sample["image"].clone()
    image[:, sample["masks"].any(0)] = 255  # paint the objects white
    painted = dict(sample, image=image)
    for seed in range(5):
        spec = AugmentSpec(scale=(0.4, 0.6), hflip=True)
        out = augment_sample(painted, spec, torch.Generator().manual_seed(seed))
        inside = out["image"][:, out["masks"].any(0)].float().mean()
        assert inside > 200  # the augmented masks still cover the white objects


def test_augment_scale_validated():
    with pytest.raises(ValueError, match="scale must satisfy"):
        AugmentSpec(scale=(0.8, 0.5))
