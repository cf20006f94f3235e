"""The sa1b dataset plugin, on SA-1B-style files written here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.sa1b import SA1BDataset

HEIGHT, WIDTH = 30, 60
# (top, left, side) of white squares, one annotation each; the last is tiny.
SQUARES = [(4, 6, 12), (10, 30, 16), (20, 50, 6), (0, 0, 2)]


def _write_pair(root: Path, stem: str) -> None:
    image = np.zeros((HEIGHT, WIDTH, 3), dtype=np.uint8)
    annotations = []
    for top, left, side in SQUARES:
        mask = np.zeros((HEIGHT, WIDTH), dtype=np.uint8)
        mask[top : top + side, left : left + side] = 1
        image[mask.astype(bool)] = 255
        rle = mask_utils.encode(np.asfortranarray(mask))
        annotations.append(
            {
                "segmentation": {"size": rle["size"], "counts": rle["counts"].decode("ascii")},
                "bbox": [left, top, side, side],
                "area": side * side,
                "point_coords": [[left + side / 2, top + side / 2]],
            }
        )
    Image.fromarray(image).save(root / f"{stem}.jpg", quality=95)
    info = {"image_id": 1, "width": WIDTH, "height": HEIGHT, "file_name": f"{stem}.jpg"}
    (root / f"{stem}.json").write_text(json.dumps({"image": info, "annotations": annotations}))


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for stem in ("sa_2", "sa_1"):
        _write_pair(tmp_path, stem)
    return tmp_path


def _build(root: Path, *, seed: int = 0, max_masks: int = 64, **fields) -> SA1BDataset:
    params = SA1BDataset.Params(root=root, **fields)
    return SA1BDataset.build(params, resolution=32, resize="pad", seed=seed, max_masks=max_masks)


def test_masks_align_with_the_image(root: Path) -> None:
    dataset = _build(root)
    assert SA1BDataset.registry_name == "sa1b" and SA1BDataset.has_masks
    assert [dataset[i]["key"] for i in range(len(dataset))] == ["sa_1", "sa_2"]
    sample = dataset[0]
    assert sample["image"].shape == (3, 32, 32) and sample["image"].dtype == torch.uint8
    masks = sample["masks"]
    assert masks.dtype == torch.bool and masks.shape[1:] == (32, 32)
    assert 3 <= masks.shape[0] <= 4  # the 2x2 square may vanish at 32/60 scale
    bright = sample["image"][0] > 127
    for mask in masks:
        assert bright[mask].float().mean() > 0.9
    union = masks.any(dim=0)
    assert (bright & union).sum() / (bright | union).sum() > 0.8
    assert not sample["image"][:, 17:].any()  # 30x60 -> 16x32: padding below
    assert collate_samples([dataset[0], dataset[1]])["masks"][1].shape[1:] == (32, 32)


def test_mask_cap_is_a_seeded_random_subset(root: Path) -> None:
    first = _build(root, max_masks=2, min_mask_area=10)[0]["masks"]
    assert first.shape[0] == 2
    assert torch.equal(first, _build(root, max_masks=2, min_mask_area=10)[0]["masks"])
    subsets = {
        tuple(
            _build(root, seed=s, max_masks=2, min_mask_area=10)[0]["masks"].sum(dim=(1, 2)).tolist()
        )
        for s in range(8)
    }
    assert len(subsets) > 1


def test_min_mask_area_skips_small_annotations(root: Path) -> None:
    masks = _build(root, min_mask_area=50)[0]["masks"]
    assert masks.shape[0] == 2  # the 12x12 and 16x16 squares


def test_missing_annotation_file_is_named(root: Path) -> None:
    (root / "sa_2.json").unlink()
    with pytest.raises(FileNotFoundError, match=r"sa_2\.json"):
        _build(root)


def test_missing_root_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"datasets\.sa1b: root '.*absent'"):
        _build(tmp_path / "absent")


def test_limit(root: Path) -> None:
    assert len(_build(root, limit=1)) == 1
