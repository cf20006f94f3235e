"""``load_image``'s two JPEG decoders (torchvision, PIL): same pixels, orientation and errors."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mergekit_vision.data.transforms import (
    JPEG_DECODER,
    JPEG_DECODERS,
    UnreadableImageError,
    load_image,
)
from mergekit_vision.tools.data_samples import encode_jpeg, photo_like

DECODERS = JPEG_DECODERS  # torchvision's where this torchvision has one, and PIL


@pytest.mark.skipif(len(JPEG_DECODERS) < 2, reason="this torchvision decodes no JPEG")
def test_both_decoders_give_the_same_pixels() -> None:
    colour = encode_jpeg(photo_like(48, 80, np.random.default_rng(0)))
    buffer = io.BytesIO()
    Image.fromarray(photo_like(32, 40, np.random.default_rng(1))[..., 0]).save(buffer, "JPEG")
    for data in (colour, buffer.getvalue()):  # YCbCr 4:2:0 and greyscale
        images = [load_image(io.BytesIO(data), jpeg_decoder=d) for d in DECODERS]
        assert images[0].dtype == torch.uint8 and images[0].shape[0] == 3
        assert torch.equal(images[0], images[1])
    assert JPEG_DECODER == "torchvision"  # the faster one (vmerge bench --data)


@pytest.mark.parametrize("decoder", DECODERS)
def test_each_decoder_follows_the_orientation_the_annotations_have(
    tmp_path: Path, decoder: str
) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # stored 20x30 (HxW), displayed rotated by 90 degrees
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "r.jpg", exif=exif)
    shown = load_image(tmp_path / "r.jpg", jpeg_decoder=decoder)
    assert shown.shape == (3, 30, 20) and shown[0].float().mean() > 200
    stored = load_image(tmp_path / "r.jpg", expected_size=(20, 30), jpeg_decoder=decoder)
    assert stored.shape == (3, 20, 30)


@pytest.mark.parametrize("decoder", DECODERS)
def test_a_truncated_jpeg_is_unreadable_and_named(tmp_path: Path, decoder: str) -> None:
    data = encode_jpeg(photo_like(64, 64, np.random.default_rng(0)))
    (tmp_path / "cut.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(UnreadableImageError, match=r"cut\.jpg.*truncated") as caught:
        load_image(tmp_path / "cut.jpg", jpeg_decoder=decoder)
    assert ".cpp" not in str(caught.value)  # torchvision's source location is cut off


def test_other_formats_go_to_pil(tmp_path: Path) -> None:
    Image.new("RGBA", (6, 4), (0, 255, 0, 10)).save(tmp_path / "a.png")
    image = load_image(tmp_path / "a.png", jpeg_decoder="torchvision")
    assert image.shape == (3, 4, 6) and image[1].min() == 255
