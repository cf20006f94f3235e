"""The webdataset dataset plugin, on tar shards written here."""

import io
import re
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader

from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.webdataset_shards import WebDatasetShards


def _encode(value: int, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (24, 12), (value, value, value)).save(buffer, format=fmt)
    return buffer.getvalue()


@pytest.fixture
def shards(tmp_path: Path) -> str:
    """Three shards of four samples; sample ``i`` is a grey image of value ``10 * i``."""
    for shard in range(3):
        with wds.TarWriter(str(tmp_path / f"shard-{shard:06d}.tar")) as sink:
            for j in range(4):
                i = shard * 4 + j
                field = "jpg" if i % 2 else "png"
                sink.write(
                    {"__key__": f"s{i:03d}", field: _encode(10 * i, field.replace("jpg", "jpeg"))}
                )
    return str(tmp_path / "shard-{000000..000002}.tar")


def _build(urls: str, *, seed: int = 0, **fields) -> WebDatasetShards:
    params = WebDatasetShards.Params(urls=urls, **fields)
    return WebDatasetShards.build(params, resolution=8, resize="pad", seed=seed)


def test_streams_every_sample_in_shard_order(shards: str) -> None:
    samples = list(_build(shards))
    assert WebDatasetShards.registry_name == "webdataset"
    assert [s["key"] for s in samples] == [f"s{i:03d}" for i in range(12)]
    batch = collate_samples(samples)
    assert batch["image"].shape == (12, 3, 8, 8) and batch["image"].dtype == torch.uint8
    # 24x12 padded to 8x8: the top half carries the grey value, the bottom half is padding.
    values = batch["image"][:, 0, 1, 2].int()
    assert (values - torch.arange(12) * 10).abs().max() <= 2  # JPEG is lossy
    assert (batch["image"][:, :, 4:] == 0).all()


def test_shuffle_is_deterministic_for_a_seed(shards: str) -> None:
    keys = [s["key"] for s in _build(shards, shuffle_buffer=5, seed=1)]
    assert keys == [s["key"] for s in _build(shards, shuffle_buffer=5, seed=1)]
    assert sorted(keys) == [f"s{i:03d}" for i in range(12)]
    assert keys != [s["key"] for s in _build(shards, shuffle_buffer=5, seed=2)]
    dataset = _build(shards, shuffle_buffer=5, seed=1)
    dataset.set_epoch(1)
    assert [s["key"] for s in dataset] != keys


def test_workers_split_the_shards(shards: str) -> None:
    loader = DataLoader(_build(shards), batch_size=4, num_workers=2, collate_fn=collate_samples)
    keys = [k for batch in loader for k in batch["key"]]
    assert sorted(keys) == [f"s{i:03d}" for i in range(12)]


def test_missing_shards_are_named(shards: str, tmp_path: Path) -> None:
    pattern = str(tmp_path / "shard-{000000..000004}.tar")
    params = WebDatasetShards.Params(urls=pattern)
    assert WebDatasetShards.check_paths(params) == [
        str(tmp_path / "shard-000003.tar"),
        str(tmp_path / "shard-000004.tar"),
    ]
    with pytest.raises(FileNotFoundError, match=r"datasets\.webdataset: urls .*shard-000003\.tar"):
        _build(pattern)
    assert WebDatasetShards.path_fields(params) == {"urls": tmp_path / "shard-000000.tar"}


def test_len_comes_from_num_samples(shards: str) -> None:
    assert len(_build(shards, num_samples=1000)) == 1000
    with pytest.raises(TypeError, match="num_samples"):
        len(_build(shards))


def test_sample_without_image_is_skipped_and_named(tmp_path: Path) -> None:
    with wds.TarWriter(str(tmp_path / "t.tar")) as sink:
        sink.write({"__key__": "odd", "txt": b"caption only"})
        sink.write({"__key__": "good", "png": _encode(7, "png")})
    [sample] = list(_build(str(tmp_path / "t.tar")))
    assert sample["key"] == "good"
    [skipped] = sample["skipped"]
    assert skipped["path"].endswith("t.tar:odd")
    assert re.search(r"no image field.*\['txt'\]", skipped["reason"])
