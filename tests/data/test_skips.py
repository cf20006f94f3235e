"""Undecodable samples are skipped by every file-reading dataset, and the skip travels with the
sample: through collate, DataLoader worker processes and keyed views."""

import io
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from torch.utils.data import DataLoader

from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.coco import CocoInstancesDataset
from mergekit_vision.data.image_classes import ImageClassesDataset
from mergekit_vision.data.image_folder import ImageFolderDataset
from mergekit_vision.data.sa1b import SA1BDataset
from mergekit_vision.data.skips import (
    NoReadableSampleError,
    UndecodableSampleError,
    decoding,
    readable_sample,
    readable_stream,
    substitutes,
)
from mergekit_vision.data.views import with_views


def _png(side: int = 8, value: int = 100) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (side, side), (value, value, value)).save(buffer, format="PNG")
    return buffer.getvalue()


def _truncated_jpeg() -> bytes:
    noise = np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noise).save(buffer, format="JPEG")
    return buffer.getvalue()[: len(buffer.getvalue()) // 2]


CORRUPT = {  # the three broken files of a web crawl
    "empty.jpg": b"",
    "cut.jpg": _truncated_jpeg(),
    "page.png": b"<html>404 not found</html>",
}


@pytest.mark.parametrize("length", [1, 2, 3, 5, 8, 12, 13, 100])
def test_substitutes_visit_every_index_once_starting_at_the_index(length: int) -> None:
    for index in (0, length - 1):
        order = list(substitutes(index, length))
        assert order[0] == index and sorted(order) == list(range(length))
    if length >= 8:  # a broken file's substitute is not its neighbour
        assert abs(list(substitutes(0, length))[1] - 0) > 1


def test_readable_sample_serves_a_substitute_carrying_the_skips() -> None:
    bad = {0, 3}

    def read(index: int) -> dict:
        if index in bad:
            raise UndecodableSampleError(f"f{index}", "broken")
        return {"key": f"f{index}"}

    assert readable_sample(read, 1, length=5, name="d") == {"key": "f1"}
    sample = readable_sample(read, 0, length=5, name="d")
    assert sample["key"] not in ("f0", "f3")
    assert sample["skipped"][0] == {"path": "f0", "reason": "broken"}
    assert readable_sample(read, -1, length=5, name="d")["key"] == "f4"
    with pytest.raises(IndexError, match="d: index 5 out of range"):
        readable_sample(read, 5, length=5, name="d")
    bad.update(range(5))
    with pytest.raises(NoReadableSampleError, match="d: none of its 5 samples.*'f0': broken"):
        readable_sample(read, 0, length=5, name="d")


def test_readable_stream_carries_skips_to_a_neighbour_and_never_drops_them() -> None:
    def decode(item: str) -> dict:
        if item.startswith("bad"):
            raise UndecodableSampleError(item, "broken")
        return {"key": item}

    items = ["bad0", "a", "bad1", "bad2", "b", "bad3"]
    out = list(readable_stream(items, decode))
    assert [s["key"] for s in out] == ["a", "b"]
    assert [r["path"] for r in out[0]["skipped"]] == ["bad0"]
    # the skips before b ride with b, and so do the ones after the last sample
    assert [r["path"] for r in out[1]["skipped"]] == ["bad1", "bad2", "bad3"]
    assert list(readable_stream(["bad"], decode)) == []


def test_decoding_names_the_file_and_the_part() -> None:
    with pytest.raises(UndecodableSampleError) as caught, decoding("x.json", part="annotations"):
        json.loads("{not json")
    assert caught.value.path == "x.json"
    assert caught.value.reason.startswith("annotations: Expecting property name")
    with pytest.raises(RuntimeError), decoding("x.png"):  # not a data error: not a skip
        raise RuntimeError("out of memory")


def test_collate_joins_the_skips_of_its_samples() -> None:
    plain = {"image": np.zeros(1), "key": "a"}
    carrying = {"image": np.zeros(1), "key": "b", "skipped": [{"path": "x", "reason": "r"}]}
    assert "skipped" not in collate_samples([plain, plain])
    batch = collate_samples([plain, carrying, carrying])
    assert batch["key"] == ["a", "b", "b"] and len(batch["skipped"]) == 2


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """Nine good images and the three corrupt files."""
    for i in range(9):
        (tmp_path / f"good{i}.png").write_bytes(_png(value=20 * i))
    for name, data in CORRUPT.items():
        (tmp_path / name).write_bytes(data)
    return tmp_path


def test_skips_travel_from_dataloader_workers_through_views(folder: Path) -> None:
    params = ImageFolderDataset.Params(root=folder)
    dataset = ImageFolderDataset.build(params, resolution=8, resize="crop", seed=0)
    viewed = with_views(dataset, views=2, augment=None, seed=0, task="t")
    loader = DataLoader(viewed, batch_size=4, num_workers=2, collate_fn=collate_samples)
    batches = list(loader)
    assert sum(len(b["image"]) for b in batches) == 12  # every index served, the bad ones too
    skipped = [r for b in batches for r in b.get("skipped", ())]
    assert {Path(r["path"]).name for r in skipped} == set(CORRUPT)
    assert not any(k.startswith(("empty", "cut", "page")) for b in batches for k in b["key"])
    reasons = {Path(r["path"]).name: r["reason"] for r in skipped}
    assert "truncated" in reasons["cut.jpg"] and "cannot identify" in reasons["page.png"]


def test_image_classes_skip_a_broken_image(tmp_path: Path) -> None:
    (tmp_path / "cat").mkdir()
    (tmp_path / "cat" / "a.png").write_bytes(b"")
    (tmp_path / "cat" / "b.png").write_bytes(_png())
    dataset = ImageClassesDataset.build(
        ImageClassesDataset.Params(root=tmp_path), resolution=8, resize="crop", seed=0
    )
    sample = dataset[0]
    assert sample["key"] == "cat/b.png" and sample["label"] == 0
    assert sample["skipped"][0]["path"] == str(tmp_path / "cat" / "a.png")


def _sa1b_pair(root: Path, stem: str) -> None:
    """A 10x10 (HxW) image with one square mask."""
    (root / f"{stem}.jpg").write_bytes(_png(side=10))  # PIL reads by content, not by suffix
    mask = np.zeros((10, 10), dtype=np.uint8)
    mask[2:6, 2:6] = 1
    rle = mask_utils.encode(np.asfortranarray(mask))
    segmentation = {"size": rle["size"], "counts": rle["counts"].decode("ascii")}
    record = {
        "image": {"width": 10, "height": 10},
        "annotations": [{"segmentation": segmentation, "area": 16}],
    }
    (root / f"{stem}.json").write_text(json.dumps(record))


def test_sa1b_skips_broken_json_and_masks(tmp_path: Path) -> None:
    for stem in ("sa_1", "sa_2", "sa_3"):
        _sa1b_pair(tmp_path, stem)
    (tmp_path / "sa_1.json").write_text('{"image": {"width": 10, "height"')  # cut short
    record = json.loads((tmp_path / "sa_2.json").read_text())
    record["annotations"][0]["segmentation"]["counts"] = "not an rle !!"
    (tmp_path / "sa_2.json").write_text(json.dumps(record))
    dataset = SA1BDataset.build(
        SA1BDataset.Params(root=tmp_path), resolution=16, resize="pad", seed=0
    )
    first, second = dataset[0], dataset[1]
    assert first["key"] == second["key"] == "sa_3"
    assert first["skipped"][0]["path"] == str(tmp_path / "sa_1.json")
    assert "Expecting" in first["skipped"][0]["reason"]
    assert second["skipped"][0]["path"] == str(tmp_path / "sa_2.json")
    assert "Invalid RLE" in second["skipped"][0]["reason"]


def test_coco_skips_an_image_whose_annotation_cannot_be_decoded(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    for name in ("a.png", "b.png"):
        (images / name).write_bytes(_png(side=10))
    entries = [
        {"id": 1, "file_name": "a.png", "height": 10, "width": 10},
        {"id": 2, "file_name": "b.png", "height": 10, "width": 10},
    ]
    broken = {"size": [10, 10], "counts": "garbage!!"}  # not a compressed RLE
    annotation = {"id": 1, "image_id": 1, "category_id": 1, "segmentation": broken}
    annotation.update(area=4, bbox=[0, 0, 2, 2], iscrowd=0)
    categories = [{"id": 1, "name": "x"}]
    path = tmp_path / "instances.json"
    path.write_text(
        json.dumps({"images": entries, "annotations": [annotation], "categories": categories})
    )
    dataset = CocoInstancesDataset.build(
        CocoInstancesDataset.Params(images=images, annotations=path),
        resolution=8,
        resize="pad",
        seed=0,
    )
    sample = dataset[0]
    assert sample["key"] == "b.png"
    assert sample["skipped"] == [
        {"path": str(images / "a.png"), "reason": "annotations: Invalid RLE mask representation"}
    ]


def test_a_folder_of_only_broken_files_is_one_clear_error(folder: Path) -> None:
    for good in folder.glob("good*.png"):
        good.unlink()
    shutil.copy(folder / "empty.jpg", folder / "also.png")
    params = ImageFolderDataset.Params(root=folder)
    dataset = ImageFolderDataset.build(params, resolution=8, resize="crop", seed=0)
    with pytest.raises(NoReadableSampleError, match="image_folder: none of its 4 samples"):
        dataset[0]
