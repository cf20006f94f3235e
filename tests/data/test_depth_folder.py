"""The depth_folder dataset plugin on RGB images and 16-bit PNG depth maps written here."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mergekit_vision.data.base import DATASETS, collate_samples
from mergekit_vision.data.depth_folder import DepthFolderDataset


@pytest.fixture
def folders(tmp_path: Path) -> tuple[Path, Path]:
    """Two 30x40 (HxW) images: ``a`` (JPEG) 1.5 m above, 3 m below, no depth in one corner;
    ``b`` (PNG) 65.535 m everywhere (the largest 16-bit value)."""
    images, depth = tmp_path / "rgb", tmp_path / "depth"
    images.mkdir()
    depth.mkdir()
    millimetres = np.full((30, 40), 1500, dtype=np.uint16)
    millimetres[15:] = 3000
    millimetres[:4, :4] = 0
    Image.fromarray(millimetres).save(depth / "a.png")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(images / "a.jpg")
    Image.fromarray(np.full((30, 40), 65535, dtype=np.uint16)).save(depth / "b.png")
    Image.new("RGB", (40, 30), (5, 6, 7)).save(images / "b.png")
    (images / "notes.txt").write_text("not an image")
    return images, depth


def _build(images: Path, depth: Path, *, resize: str = "pad", **fields) -> DepthFolderDataset:
    params = DepthFolderDataset.Params(images=images, depth=depth, **fields)
    return DATASETS.get("depth_folder").build(params, resolution=20, resize=resize, seed=0)


def test_depth_in_metres_on_the_images_grid(folders):
    dataset = _build(*folders)
    assert len(dataset) == 2
    first = dataset[0]
    assert first["key"] == "a" and first["image"].shape == (3, 20, 20)
    depth = first["depth"]
    assert depth.dtype == torch.float32 and depth.shape == (20, 20)
    # "pad": 30x40 -> 15x20, the 5 rows below are padding without depth
    assert torch.equal(depth[15:], torch.zeros(5, 20))
    assert depth[0, 0] == 0 and depth[3, 10] == pytest.approx(1.5)  # nearest: none blended
    assert depth[12, 10] == pytest.approx(3.0) and set(depth.unique().tolist()) == {0, 1.5, 3.0}
    assert dataset[1]["depth"][0, 0] == pytest.approx(65.535)
    batch = collate_samples([dataset[0], dataset[1]])
    assert batch["depth"].shape == (2, 20, 20)
    kitti = _build(*folders, depth_scale=256.0, limit=1, resize="crop")
    assert len(kitti) == 1 and kitti[0]["depth"].max() == pytest.approx(3000 / 256)
    params = DepthFolderDataset.Params(images=folders[0], depth=folders[1])
    assert DepthFolderDataset.path_fields(params) == {"images": folders[0], "depth": folders[1]}


def test_missing_folders_and_maps_are_named(folders, tmp_path):
    images, depth = folders
    with pytest.raises(FileNotFoundError, match=r"datasets.depth_folder: depth '.*nowhere'"):
        _build(images, tmp_path / "nowhere")
    (depth / "b.png").unlink()
    with pytest.raises(FileNotFoundError, match=r"b.png' does not exist \(1 of 2 images"):
        _build(images, depth)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no images"):
        _build(empty, depth)


def test_an_8_bit_map_is_skipped_with_the_reason(folders):
    images, depth = folders
    Image.fromarray(np.full((30, 40), 3, dtype=np.uint8)).save(depth / "b.png")
    sample = _build(images, depth)[1]
    assert sample["key"] == "a"  # served in b's place
    (record,) = sample["skipped"]
    assert record["path"].endswith("b.png") and "16-bit greyscale PNG" in record["reason"]
