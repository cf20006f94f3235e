"""The voc dataset plugin, on a VOC layout written here."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mergekit_vision.data.base import DATASETS, collate_samples
from mergekit_vision.data.skips import NoReadableSampleError
from mergekit_vision.data.voc import VOC_CLASSES, VocSegmentationDataset


def _label_png(labels: np.ndarray, path: Path) -> None:
    image = Image.fromarray(labels.astype(np.uint8))
    image.putpalette([v for i in range(256) for v in (i, 255 - i, i // 2)])
    image.save(path)


@pytest.fixture
def voc(tmp_path: Path) -> Path:
    """Two 40x20 (HxW) images: ``a`` (JPEG) with class 1 on top, 2 below and a 255 border;
    ``b`` (PNG) all class 3."""
    for folder in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (tmp_path / folder).mkdir(parents=True)
    labels = np.ones((40, 20), dtype=np.uint8)
    labels[20:] = 2
    labels[19:21] = 255
    _label_png(labels, tmp_path / "SegmentationClass" / "a.png")
    Image.new("RGB", (20, 40), (200, 10, 10)).save(tmp_path / "JPEGImages" / "a.jpg")
    _label_png(np.full((40, 20), 3), tmp_path / "SegmentationClass" / "b.png")
    Image.new("RGB", (20, 40), (5, 6, 7)).save(tmp_path / "JPEGImages" / "b.png")
    (tmp_path / "ImageSets" / "Segmentation" / "val.txt").write_text("a\nb\n")
    (tmp_path / "ImageSets" / "Segmentation" / "train.txt").write_text("b\n")
    return tmp_path


def _build(root: Path, *, resize: str = "pad", **fields) -> VocSegmentationDataset:
    params = VocSegmentationDataset.Params(root=root, **fields)
    return VocSegmentationDataset.build(params, resolution=20, resize=resize, seed=0)


def test_pad_resizes_labels_nearest_and_fills_padding_with_ignore(voc: Path) -> None:
    assert DATASETS.get("voc") is VocSegmentationDataset and not VocSegmentationDataset.has_masks
    dataset = _build(voc)
    assert len(dataset) == 2 and dataset.class_names == list(VOC_CLASSES)
    sample = dataset[0]
    assert sample["key"] == "a" and sample["image"].shape == (3, 20, 20)
    semantic = sample["semantic"]
    assert semantic.dtype == torch.int64 and semantic.shape == (20, 20)
    # 40x20 -> 20x10, padded on the right with the ignore index.
    assert (semantic[:, 10:] == 255).all() and (sample["image"][:, :, 10:] == 0).all()
    assert (semantic[:9, :10] == 1).all() and (semantic[11:, :10] == 2).all()
    assert set(semantic.unique().tolist()) == {1, 2, 255}  # nearest: no blended labels
    batch = collate_samples([dataset[0], dataset[1]])
    assert batch["image"].shape == (2, 3, 20, 20)


def test_crop_keeps_the_centre_rows(voc: Path) -> None:
    semantic = _build(voc, resize="crop")[0]["semantic"]
    # 40x20 keeps its size (shortest side is 20) and the centre 20 rows are kept.
    assert (semantic[:9] == 1).all() and (semantic[9:11] == 255).all()
    assert (semantic[11:] == 2).all()


def test_split_limit_and_class_names_file(voc: Path) -> None:
    (voc / "classes.txt").write_text("background\nred thing\nblue thing\ngrey thing\n")
    dataset = _build(voc, split="train")
    assert len(dataset) == 1 and dataset[0]["key"] == "b"
    assert (dataset[0]["semantic"][:, :10] == 3).all()
    assert dataset.class_names == ["background", "red thing", "blue thing", "grey thing"]
    assert len(_build(voc, limit=1)) == 1


def test_missing_paths_name_the_path_and_the_layout(voc: Path, tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"test\.txt.*ImageSets/Segmentation"):
        _build(voc, split="test")
    with pytest.raises(FileNotFoundError, match="nowhere"):
        _build(tmp_path / "nowhere")
    (voc / "JPEGImages" / "a.jpg").unlink()  # a missing image is skipped, its sample replaced
    sample = _build(voc)[0]
    assert sample["key"] == "b"
    [skipped] = sample["skipped"]
    assert skipped["path"] == str(voc / "JPEGImages" / "a.*")
    assert re.search(r"JPEGImages/a\.jpg.*expected", skipped["reason"])


def test_colour_label_maps_and_mismatched_sizes_are_skipped(voc: Path) -> None:
    Image.new("RGB", (20, 40)).save(voc / "SegmentationClass" / "a.png")
    sample = _build(voc)[0]
    assert sample["key"] == "b"
    [skipped] = sample["skipped"]
    assert skipped["path"] == str(voc / "SegmentationClass" / "a.png")
    assert "mode RGB" in skipped["reason"]
    Image.new("RGB", (30, 30)).save(voc / "JPEGImages" / "b.png")
    with pytest.raises(NoReadableSampleError, match=r"voc: none of its 2 samples.*annotations"):
        _build(voc)[1]
