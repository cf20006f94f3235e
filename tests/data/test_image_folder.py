"""The image_folder dataset plugin."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.image_folder import ImageFolderDataset
from mergekit_vision.data.skips import NoReadableSampleError


def _params(**fields) -> ImageFolderDataset.Params:
    return ImageFolderDataset.Params.model_validate(fields)


def _build(root: Path, **fields) -> ImageFolderDataset:
    params = _params(root=root, **fields)
    return ImageFolderDataset.build(params, resolution=16, resize="pad", seed=0)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "b" / "deep").mkdir(parents=True)
    Image.new("RGB", (20, 10), (255, 255, 255)).save(tmp_path / "b" / "deep" / "z.png")
    Image.new("L", (12, 12), 128).save(tmp_path / "a.JPG")
    Image.new("RGBA", (8, 16), (0, 0, 255, 255)).save(tmp_path / "b" / "c.webp")
    (tmp_path / "notes.txt").write_text("not an image")
    return tmp_path


def test_finds_images_recursively_in_sorted_order(folder: Path) -> None:
    dataset = _build(folder)
    assert ImageFolderDataset.registry_name == "image_folder"
    assert not ImageFolderDataset.has_masks
    assert [dataset[i]["key"] for i in range(len(dataset))] == ["a.JPG", "b/c.webp", "b/deep/z.png"]
    assert [s["key"] for s in _build(folder)] == [dataset[i]["key"] for i in range(3)]


def test_samples_are_rgb_uint8_at_the_resolution(folder: Path) -> None:
    dataset = _build(folder)
    batch = collate_samples([dataset[i] for i in range(len(dataset))])
    assert batch["image"].shape == (3, 3, 16, 16) and batch["image"].dtype == torch.uint8
    assert "masks" not in batch
    grey, blue, white = batch["image"]
    assert (grey == 128).all()
    assert (blue[2, :, :8] == 255).all() and (blue[:, :, 8:] == 0).all()  # padded on the right
    assert (white[:, :8] == 255).all() and (white[:, 8:] == 0).all()  # padded at the bottom


def test_extensions_and_limit(folder: Path) -> None:
    assert len(_build(folder, extensions=("PNG",))) == 1
    assert len(_build(folder, limit=2)) == 2


def test_missing_root_names_the_field(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"datasets\.image_folder: root '.*nowhere'"):
        _build(tmp_path / "nowhere")
    assert ImageFolderDataset.path_fields(_params(root=tmp_path)) == {"root": tmp_path}


def test_empty_folder_names_root_and_extensions(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("")
    with pytest.raises(ValueError, match=r"no images under root .*\.jpg, \.jpeg"):
        _build(tmp_path)


def test_unreadable_image_is_skipped_and_named(tmp_path: Path) -> None:
    (tmp_path / "broken.png").write_bytes(b"\x89PNG truncated")
    Image.new("RGB", (4, 4)).save(tmp_path / "good.png")
    dataset = _build(tmp_path)
    sample = dataset[0]  # broken.png sorts first; good.png stands in for it
    assert sample["key"] == "good.png"
    [skipped] = sample["skipped"]
    assert skipped["path"] == str(tmp_path / "broken.png")
    assert "cannot identify" in skipped["reason"]
    assert "skipped" not in dataset[1]
    (tmp_path / "good.png").write_text("now broken too")
    with pytest.raises(NoReadableSampleError, match=r"image_folder: none of its 2 samples"):
        dataset[1]


def test_unknown_param_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="recursive"):
        _params(root=tmp_path, recursive=True)
