"""The captions dataset plugin, on a Karpathy-split JSON and images written here."""

import json
from pathlib import Path

import pytest
import torch
from PIL import Image

from mergekit_vision.data.base import DATASETS, SKIPPED, collate_samples
from mergekit_vision.data.captions import CaptionsDataset

# (filepath, filename, split, captions, grey level); a COCO-style filepath on two of them
RECORDS = [
    ("", "a.png", "test", [" A dog runs. ", "A brown dog.", "", "c3", "c4", "c5", "c6"], 10),
    ("val2014", "b.png", "test", ["Two birds."], 20),
    ("", "c.png", "train", ["A cat."], 30),
    ("val2014", "d.png", "restval", ["A car.", "A red car."], 40),
    ("", "e.png", "test", ["A tree."], 50),
]


@pytest.fixture
def files(tmp_path: Path) -> tuple[Path, Path]:
    """The annotation JSON and the image root; every image 12x6 of one grey level."""
    images = tmp_path / "images"
    records = []
    for imgid, (filepath, filename, split, captions, grey) in enumerate(RECORDS):
        path = images / filepath / filename
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (12, 6), (grey, grey, grey)).save(path)
        sentences = [{"raw": raw, "tokens": raw.split()} for raw in captions]
        record = {"filename": filename, "imgid": imgid, "split": split, "sentences": sentences}
        if filepath:
            record["filepath"] = filepath
        records.append(record)
    annotations = tmp_path / "dataset_flickr30k.json"
    annotations.write_text(json.dumps({"images": records, "dataset": "flickr30k"}))
    return annotations, images


def _build(files: tuple[Path, Path], **fields) -> CaptionsDataset:
    annotations, images = files
    params = CaptionsDataset.Params(annotations=annotations, images=images, **fields)
    return CaptionsDataset.build(params, resolution=8, resize="crop", seed=0)


def test_a_split_reads_its_images_with_their_captions(files) -> None:
    assert DATASETS.get("captions") is CaptionsDataset
    dataset = _build(files)
    assert len(dataset) == 3
    samples = [dataset[i] for i in range(3)]
    assert [s["key"] for s in samples] == ["a.png", "val2014/b.png", "e.png"]
    assert samples[0]["captions"] == ["A dog runs.", "A brown dog.", "c3", "c4", "c5"]
    assert samples[1]["captions"] == ["Two birds."]
    assert samples[1]["image"].shape == (3, 8, 8) and samples[1]["image"].dtype == torch.uint8
    assert samples[1]["image"].unique().tolist() == [20]
    batch = collate_samples(samples)
    assert batch["image"].shape == (3, 3, 8, 8) and batch["captions"][2] == ["A tree."]


def test_splits_caption_cap_and_limit(files) -> None:
    assert [e[0].as_posix() for e in _build(files, split="train").entries] == ["c.png"]
    restval = _build(files, split="restval")[0]
    assert restval["key"] == "val2014/d.png" and restval["captions"] == ["A car.", "A red car."]
    assert _build(files, max_captions_per_image=1)[0]["captions"] == ["A dog runs."]
    assert len(_build(files, limit=2)) == 2
    with pytest.raises(ValueError, match=r"no image of split 'tset'.*restval, test, train"):
        _build(files, split="tset")


def test_a_broken_image_is_skipped(files) -> None:
    _, images = files
    (images / "val2014" / "b.png").write_bytes(b"<html>not found</html>")
    sample = _build(files)[1]
    assert sample["key"] != "val2014/b.png"
    [record] = sample[SKIPPED]
    assert record["path"] == str(images / "val2014" / "b.png")


def test_bad_paths_and_records_are_named(files, tmp_path: Path) -> None:
    annotations, images = files
    with pytest.raises(FileNotFoundError, match=r"annotations '.*nowhere.json' does not exist"):
        _build((tmp_path / "nowhere.json", images))
    with pytest.raises(FileNotFoundError, match=r"images '.*nowhere' does not exist"):
        _build((annotations, tmp_path / "nowhere"))
    assert CaptionsDataset.path_fields(
        CaptionsDataset.Params(annotations=annotations, images=images)
    ) == {"annotations": annotations, "images": images}
    annotations.write_text('{"images": [{"filename": "a.png", "split": "test", "sentences": []}]}')
    with pytest.raises(ValueError, match="image 'a.png' has no caption"):
        _build(files)
    annotations.write_text('{"annotations": []}')
    with pytest.raises(ValueError, match='has no "images" list'):
        _build(files)
    annotations.write_text("{not json")
    with pytest.raises(ValueError, match="is not JSON"):
        _build(files)
