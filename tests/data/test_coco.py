"""The coco dataset plugin, on a COCO-format JSON written here."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from mergekit_vision.data.coco import CocoInstancesDataset


def _rle(height: int, width: int, top: int, left: int, side: int, compressed: bool) -> dict:
    mask = np.zeros((height, width), dtype=np.uint8)
    mask[top : top + side, left : left + side] = 1
    if compressed:
        rle = mask_utils.encode(np.asfortranarray(mask))
        return {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    # Uncompressed RLE (as COCO stores crowd regions): run lengths in column-major order.
    flat = mask.flatten(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [2]])))
    counts = np.diff(np.concatenate([[0], changes])).tolist()
    return {"size": [height, width], "counts": counts}


@pytest.fixture
def coco(tmp_path: Path) -> tuple[Path, Path]:
    """Image 1 (40x20, HxW): a polygon square, an RLE square, a crowd RLE; image 2: nothing."""
    images = tmp_path / "images"
    images.mkdir()
    pixels = np.zeros((40, 20, 3), dtype=np.uint8)
    pixels[4:12, 2:10] = 255  # the polygon's square
    pixels[20:30, 8:18] = 255  # the RLE's square
    Image.fromarray(pixels).save(images / "one.png")
    Image.new("RGB", (30, 30), (9, 9, 9)).save(images / "two.png")
    polygon = [2, 4, 10, 4, 10, 12, 2, 12]
    annotations = [
        {"id": 7, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 64.0,
         "bbox": [2, 4, 8, 8], "segmentation": [polygon]},
        {"id": 3, "image_id": 1, "category_id": 1, "iscrowd": 0, "area": 100.0,
         "bbox": [8, 20, 10, 10], "segmentation": _rle(40, 20, 20, 8, 10, compressed=True)},
        {"id": 9, "image_id": 1, "category_id": 1, "iscrowd": 1, "area": 16.0,
         "bbox": [0, 34, 4, 4], "segmentation": _rle(40, 20, 34, 0, 4, compressed=False)},
    ]  # fmt: skip
    record = {
        "images": [
            {"id": 2, "file_name": "two.png", "height": 30, "width": 30},
            {"id": 1, "file_name": "one.png", "height": 40, "width": 20},
        ],
        "annotations": annotations,
        "categories": [{"id": 1, "name": "thing"}],
    }
    path = tmp_path / "instances_toy.json"
    path.write_text(json.dumps(record))
    return images, path


def _build(images: Path, annotations: Path, **fields) -> CocoInstancesDataset:
    params = CocoInstancesDataset.Params(images=images, annotations=annotations, **fields)
    return CocoInstancesDataset.build(params, resolution=20, resize="pad", seed=0)


def test_polygon_and_rle_masks_align_with_the_image(coco, capsys) -> None:
    dataset = _build(*coco)
    assert capsys.readouterr().out == ""  # pycocotools' progress prints are silenced
    assert CocoInstancesDataset.registry_name == "coco" and len(dataset) == 2
    sample = dataset[0]
    assert sample["key"] == "one.png"
    assert sample["image"].shape == (3, 20, 20)
    masks = sample["masks"]
    assert masks.shape == (2, 20, 20) and masks.dtype == torch.bool
    bright = sample["image"][0] > 127
    for mask in masks:
        assert bright[mask].float().mean() > 0.9
    # Annotation ids sort RLE (3) before polygon (7): the RLE square is lower in the image.
    rows = [torch.nonzero(m)[:, 0].float().mean() for m in masks]
    assert rows[0] > rows[1]
    assert not sample["image"][:, :, 10:].any()  # 40x20 -> 20x10: padding on the right


def test_crowd_regions_are_opt_in(coco) -> None:
    masks = _build(*coco, include_crowd=True)[0]["masks"]
    assert masks.shape[0] == 3
    assert masks[:, 17:, :2].any()  # the crowd square at rows 34-38, columns 0-3, halved


def test_image_without_annotations_has_no_masks(coco) -> None:
    sample = _build(*coco)[1]
    assert sample["key"] == "two.png" and sample["masks"].shape == (0, 20, 20)
    assert len(_build(*coco, limit=1)) == 1


def test_missing_paths_name_the_field(coco, tmp_path: Path) -> None:
    images, annotations = coco
    with pytest.raises(FileNotFoundError, match=r"datasets\.coco: annotations '.*nope\.json'"):
        _build(images, tmp_path / "nope.json")
    with pytest.raises(FileNotFoundError, match=r"datasets\.coco: images '.*nodir'"):
        _build(tmp_path / "nodir", annotations)
    (images / "two.png").unlink()  # a missing image is skipped: another sample in its place
    sample = _build(images, annotations)[1]
    assert sample["key"] == "one.png"
    [skipped] = sample["skipped"]
    assert skipped["path"] == str(images / "two.png") and "No such file" in skipped["reason"]
