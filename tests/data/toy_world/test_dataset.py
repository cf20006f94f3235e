"""The toy_world dataset plugin."""

import pytest
import torch
from pydantic import ValidationError

from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.toy_world.dataset import ToyWorldDataset
from mergekit_vision.data.toy_world.world import ToyWorldConfig, class_names, generate_scene

WORLD = {"image_size": 64, "max_objects": 3}


def _build(*, resolution: int = 64, run_seed: int = 0, max_masks: int = 64, **fields):
    params = ToyWorldDataset.Params(**{"world": WORLD, "num_samples": 6, **fields})
    return ToyWorldDataset.build(
        params, resolution=resolution, resize="crop", seed=run_seed, max_masks=max_masks
    )


def test_samples_follow_the_contract_with_extra_keys() -> None:
    assert DATASETS.get("toy_world") is ToyWorldDataset and ToyWorldDataset.has_masks
    dataset = _build(run_seed=4)
    assert len(dataset) == 6 and dataset.class_names == class_names(ToyWorldConfig())
    sample = dataset[2]
    scene = generate_scene(ToyWorldConfig(**WORLD), seed=4, index=2)
    assert torch.equal(sample["image"], scene.image)
    assert torch.equal(sample["masks"], scene.masks)
    assert torch.equal(sample["classes"], scene.classes)
    assert torch.equal(sample["semantic"], scene.semantic)
    assert sample["label"] == scene.label and sample["caption"] == scene.caption
    assert sample["key"] == "toy_world/4/2"
    with pytest.raises(IndexError):
        dataset[6]


def test_downscaled_label_map_matches_downscaled_masks() -> None:
    dataset = _build(resolution=24)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["image"].shape == (3, 24, 24) and sample["semantic"].shape == (24, 24)
        assert sample["masks"].flatten(1).any(dim=1).all()
        for mask, class_id in zip(sample["masks"], sample["classes"], strict=True):
            assert (sample["semantic"][mask] == class_id + 1).all()
        assert torch.equal(sample["masks"].any(dim=0), sample["semantic"] > 0)


def test_params_seed_pins_the_scenes_and_none_follows_the_run() -> None:
    image = lambda dataset: dataset[0]["image"]  # noqa: E731
    assert torch.equal(image(_build(run_seed=1)), image(_build(run_seed=1)))
    assert not torch.equal(image(_build(run_seed=1)), image(_build(run_seed=2)))
    assert torch.equal(image(_build(run_seed=1, seed=9)), image(_build(run_seed=2, seed=9)))


def test_max_masks_keeps_classes_aligned_and_num_objects_fixes_the_count() -> None:
    config = {**WORLD, "min_objects": 3, "max_objects": 3, "max_size": 0.25}
    dataset = _build(world=config, max_masks=2)
    for i in range(len(dataset)):
        sample = dataset[i]
        assert sample["masks"].shape[0] == 2 and sample["classes"].shape == (2,)
        for mask, class_id in zip(sample["masks"], sample["classes"], strict=True):
            assert (sample["semantic"][mask] == class_id + 1).all()
    single = _build(num_objects=1)
    assert all(single[i]["masks"].shape[0] == 1 for i in range(len(single)))
    assert all(single[i]["caption"].count(" a ") == 0 for i in range(len(single)))


def test_params_reject_typos_in_the_nested_world() -> None:
    with pytest.raises(ValidationError, match="colour_jiter"):
        ToyWorldDataset.Params(world={"colour_jiter": 0.1})
    with pytest.raises(ValidationError, match="num_samples"):
        ToyWorldDataset.Params(num_samples=0)
