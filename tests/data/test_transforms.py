"""Image loading and the shared pad/crop geometry of images and masks."""

from pathlib import Path

import pytest
import torch
from PIL import Image

from mergekit_vision.data.transforms import (
    UnreadableImageError,
    choose_masks,
    load_image,
    resize_image,
    resize_masks,
    sample_generator,
)


def _scene(height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A black image with a white rectangle, and the rectangle's mask ``[1, H, W]``."""
    mask = torch.zeros(1, height, width, dtype=torch.bool)
    mask[0, height // 4 : height // 2 + 3, width // 3 : width // 3 + width // 4] = True
    image = (mask.expand(3, -1, -1) * 255).to(torch.uint8)
    return image, mask


@pytest.mark.parametrize("mode", ["pad", "crop"])
@pytest.mark.parametrize("size", [(40, 80), (80, 40), (33, 47), (32, 32), (10, 14)])
def test_image_and_masks_stay_aligned(mode: str, size: tuple[int, int]) -> None:
    image, mask = _scene(*size)
    out_image = resize_image(image, resolution=32, mode=mode)
    out_mask = resize_masks(mask, resolution=32, mode=mode)
    assert out_image.shape == (3, 32, 32) and out_image.dtype == torch.uint8
    assert out_mask.shape == (1, 32, 32) and out_mask.dtype == torch.bool
    bright = out_image[0] > 127
    iou = (bright & out_mask[0]).sum() / (bright | out_mask[0]).sum()
    assert iou > 0.8


def test_pad_scales_the_longest_side_and_pads_bottom_right() -> None:
    image = torch.full((3, 40, 80), 200, dtype=torch.uint8)
    out = resize_image(image, resolution=32, mode="pad")
    assert (out[:, :16] == 200).all()
    assert (out[:, 16:] == 0).all()
    tall = resize_image(image.transpose(1, 2), resolution=32, mode="pad")
    assert (tall[:, :, :16] == 200).all() and (tall[:, :, 16:] == 0).all()


def test_crop_keeps_the_centre() -> None:
    image = torch.zeros(3, 32, 96, dtype=torch.uint8)
    image[:, :, 24:72] = 255  # covers the middle third (the crop) with a margin for antialiasing
    out = resize_image(image, resolution=16, mode="crop")
    assert (out == 255).all()
    image[:, :, 24:72] = 0
    image[:, :, 40:56] = 255  # the middle sixth lands in the middle half of the crop
    out = resize_image(image, resolution=16, mode="crop")
    assert (out[:, :, 5:11] == 255).all() and (out[:, :, :3] == 0).all()


def test_no_masks_and_bad_mode() -> None:
    assert resize_masks(
        torch.zeros(0, 20, 30, dtype=torch.bool), resolution=8, mode="pad"
    ).shape == (
        0,
        8,
        8,
    )
    with pytest.raises(ValueError, match="'pad' or 'crop'"):
        resize_image(torch.zeros(3, 8, 8, dtype=torch.uint8), resolution=8, mode="squash")


def _rotated_jpeg(path: Path) -> None:
    """A 20x30 (HxW) image stored with EXIF orientation 6 (display rotated 90 degrees)."""
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (30, 20), (255, 0, 0)).save(path, exif=exif)


def test_load_image_applies_exif_orientation(tmp_path: Path) -> None:
    _rotated_jpeg(tmp_path / "r.jpg")
    image = load_image(tmp_path / "r.jpg")
    assert image.shape == (3, 30, 20) and image.dtype == torch.uint8
    assert image[0].float().mean() > 200 and image[2].float().mean() < 50


def test_load_image_follows_the_annotations_orientation(tmp_path: Path) -> None:
    _rotated_jpeg(tmp_path / "r.jpg")
    assert load_image(tmp_path / "r.jpg", expected_size=(20, 30)).shape == (3, 20, 30)
    assert load_image(tmp_path / "r.jpg", expected_size=(30, 20)).shape == (3, 30, 20)
    with pytest.raises(ValueError, match=r"r\.jpg.*annotations are 25x25"):
        load_image(tmp_path / "r.jpg", expected_size=(25, 25))


def test_load_image_names_an_unreadable_file(tmp_path: Path) -> None:
    (tmp_path / "bad.png").write_bytes(b"not an image")
    with pytest.raises(UnreadableImageError, match="bad.png"):
        load_image(tmp_path / "bad.png")


def test_sample_generator_and_mask_choice_are_deterministic() -> None:
    first = torch.rand(4, generator=sample_generator(3, 7))
    assert torch.equal(first, torch.rand(4, generator=sample_generator(3, 7)))
    assert not torch.equal(first, torch.rand(4, generator=sample_generator(3, 8)))
    assert not torch.equal(first, torch.rand(4, generator=sample_generator(4, 7)))
    chosen = choose_masks(10, keep=4, generator=sample_generator(0, 0))
    assert chosen == choose_masks(10, keep=4, generator=sample_generator(0, 0))
    assert len(set(chosen)) == 4 and chosen == sorted(chosen)
    assert choose_masks(3, keep=4, generator=sample_generator(0, 0)) == [0, 1, 2]
