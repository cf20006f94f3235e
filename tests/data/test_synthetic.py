"""The synthetic dataset plugin."""

import pytest
import torch
from torch.utils.data import DataLoader

from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.synthetic import SyntheticShapesDataset


def _build(*, seed: int = 0, max_masks: int = 64, **fields) -> SyntheticShapesDataset:
    params = SyntheticShapesDataset.Params(**fields)
    return SyntheticShapesDataset.build(
        params, resolution=32, resize="pad", seed=seed, max_masks=max_masks
    )


def test_samples_follow_the_contract() -> None:
    dataset = _build(num_samples=5, max_objects=3)
    assert SyntheticShapesDataset.registry_name == "synthetic" and SyntheticShapesDataset.has_masks
    assert len(dataset) == 5
    batch = next(iter(DataLoader(dataset, batch_size=5, collate_fn=collate_samples)))
    assert batch["image"].shape == (5, 3, 32, 32) and batch["image"].dtype == torch.uint8
    assert len(set(batch["key"])) == 5
    for masks in batch["masks"]:
        assert masks.dtype == torch.bool and masks.shape[1:] == (32, 32)
        assert 1 <= masks.shape[0] <= 3
        assert masks.flatten(1).any(dim=1).all()  # no empty masks
        assert masks.sum(dim=0).max() <= 1  # visible parts do not overlap
    with pytest.raises(IndexError):
        dataset[5]


def test_each_mask_covers_one_flat_colour() -> None:
    dataset = _build(num_samples=8, max_objects=4)
    for i in range(len(dataset)):
        sample = dataset[i]
        for mask in sample["masks"]:
            pixels = sample["image"][:, mask]  # [3, n]
            assert (pixels == pixels[:, :1]).all()


def test_samples_depend_only_on_seed_and_index() -> None:
    a, b = _build(seed=3)[7], _build(seed=3)[7]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["masks"], b["masks"])
    assert not torch.equal(a["image"], _build(seed=3)[8]["image"])
    assert not torch.equal(a["image"], _build(seed=4)[7]["image"])


def test_mask_cap() -> None:
    dataset = _build(num_samples=16, max_objects=6, max_masks=1)
    assert all(dataset[i]["masks"].shape[0] == 1 for i in range(16))
