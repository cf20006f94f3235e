"""Image I/O, geometric transforms and per-sample seeding shared by the dataset plugins.

Images and their instance masks go through the same geometry (scale, then pad or crop) so a mask
keeps covering its object at the task resolution. The two modes follow the teacher a task serves:

- ``"pad"`` (SAM, Kirillov et al. 2023): longest side to ``R``, zero-pad bottom and right;
- ``"crop"`` (CLIP, Radford et al. 2021): shortest side to ``R``, centre crop.
"""

from __future__ import annotations

from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
import torch.nn.functional as F
import torchvision.transforms.v2.functional as TF
from PIL import Image, ImageOps
from torch import Tensor
from torchvision.transforms import InterpolationMode

from mergekit_vision.data.base import ResizeMode

# Integer greyscale modes PIL opens 16-bit PNGs and TIFFs as ("I": 32-bit, holding 16-bit values).
SIXTEEN_BIT_MODES = ("I", "I;16", "I;16B", "I;16L", "I;16N")


class UnreadableImageError(OSError):
    """An image file is missing, truncated or not an image; the message names the file."""


def load_image(
    path: Path | str | BinaryIO,
    *,
    expected_size: tuple[int, int] | None = None,
    name: str | None = None,
) -> Tensor:
    """Read an image file as ``uint8 [3, H, W]`` RGB, EXIF orientation applied.

    Args:
        path: the image file, or a binary stream of its bytes.
        expected_size: ``(H, W)`` of the annotations that come with the image. Annotation sets
            disagree on whether their masks follow the EXIF orientation or the stored pixels, so
            when given, the orientation that matches it is used, and neither matching is an error.
        name: how error messages name the image (default: ``path``).
    """
    name = str(path) if name is None else name
    if expected_size is not None:
        expected_size = (int(expected_size[0]), int(expected_size[1]))
    try:
        with Image.open(path) as raw:
            raw.load()
            image = ImageOps.exif_transpose(raw)
            if expected_size is not None and (image.height, image.width) != expected_size:
                image = raw
            rgb = _to_rgb(image)
    except OSError as exc:
        raise UnreadableImageError(f"cannot read image '{name}': {exc}") from exc
    if expected_size is not None and (rgb.height, rgb.width) != expected_size:
        raise ValueError(
            f"image '{name}' is {rgb.height}x{rgb.width} (HxW) but its annotations are "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1).contiguous()


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any PIL mode as 8-bit RGB (alpha dropped, palettes and 1-bit expanded)."""
    if image.mode in SIXTEEN_BIT_MODES:
        # PIL's convert clips 16-bit greyscale at 255, which turns most of a photo white.
        grey = np.asarray(image).astype(np.float64) / 257.0
        image = Image.fromarray(np.clip(grey.round(), 0, 255).astype(np.uint8))
    return image.convert("RGB")


def _scaled_size(height: int, width: int, *, resolution: int, mode: ResizeMode) -> tuple[int, int]:
    side = max(height, width) if mode == "pad" else min(height, width)
    scale = resolution / side
    # Round half up as SAM's ResizeLongestSide does; never drop below the target on the fitted side.
    new_h, new_w = int(height * scale + 0.5), int(width * scale + 0.5)
    # A strip such as 3000x10 would otherwise get a 0-pixel side, which nothing can resize to.
    new_h, new_w = max(new_h, 1), max(new_w, 1)
    if mode == "crop":
        new_h, new_w = max(new_h, resolution), max(new_w, resolution)
    return new_h, new_w


def _fit(x: Tensor, *, resolution: int, mode: ResizeMode) -> Tensor:
    """Pad bottom/right or centre-crop the last two dims of ``x`` to ``resolution``."""
    height, width = x.shape[-2:]
    if mode == "pad":
        return F.pad(x, (0, resolution - width, 0, resolution - height))
    top, left = (height - resolution) // 2, (width - resolution) // 2
    return x[..., top : top + resolution, left : left + resolution]


def _check_mode(mode: str) -> None:
    if mode not in ("pad", "crop"):
        raise ValueError(f"resize mode must be 'pad' or 'crop', got {mode!r}")


def resize_image(image: Tensor, *, resolution: int, mode: ResizeMode) -> Tensor:
    """Resize ``uint8 [3, H, W]`` to ``uint8 [3, R, R]`` (bilinear, antialiased) with ``mode``."""
    _check_mode(mode)
    size = _scaled_size(*image.shape[-2:], resolution=resolution, mode=mode)
    if tuple(image.shape[-2:]) != size:
        image = TF.resize(
            image, list(size), interpolation=InterpolationMode.BILINEAR, antialias=True
        )
    return _fit(image, resolution=resolution, mode=mode).contiguous()


def resize_masks(masks: Tensor, *, resolution: int, mode: ResizeMode) -> Tensor:
    """Apply :func:`resize_image`'s geometry to ``bool [M, H, W]`` masks -> ``bool [M, R, R]``.

    Nearest-exact sampling samples pixel centres as bilinear resizing does, so masks and image
    stay aligned to within half a pixel.
    """
    _check_mode(mode)
    size = _scaled_size(*masks.shape[-2:], resolution=resolution, mode=mode)
    if tuple(masks.shape[-2:]) != size:
        masks = TF.resize(masks, list(size), interpolation=InterpolationMode.NEAREST_EXACT)
    return _fit(masks, resolution=resolution, mode=mode).contiguous()


def drop_empty(masks: Tensor) -> Tensor:
    """Remove masks ``bool [M, R, R]`` that have no pixel left (tiny objects after downscaling)."""
    if masks.shape[0] == 0:
        return masks
    return masks[masks.flatten(1).view(torch.uint8).amax(dim=1) > 0]  # bytes: faster than any()


def sample_generator(seed: int, index: int) -> torch.Generator:
    """A generator seeded from ``(seed, index)`` alone, so sample ``index`` is the same in any
    worker, epoch or resumed run."""
    # Multiply by a large odd constant so neighbouring (seed, index) pairs do not collide.
    mixed = (seed * 0x9E3779B97F4A7C15 + index * 0xBF58476D1CE4E5B9) % (2**63 - 1)
    return torch.Generator().manual_seed(mixed)


def choose_masks(count: int, *, keep: int, generator: torch.Generator) -> list[int]:
    """Sorted indices of at most ``keep`` of ``count`` masks, a seeded uniform random subset.

    Random rather than largest-first: small objects and parts are where SAM's decoder is weakest,
    and a fixed size bias would hide them from the student.
    """
    if count <= keep:
        return list(range(count))
    return sorted(torch.randperm(count, generator=generator)[:keep].tolist())


def missing_path_error(
    *, dataset: str, field: str, path: Path | str, what: str, hint: str
) -> FileNotFoundError:
    """The error every dataset plugin raises for a recipe path that does not exist."""
    return FileNotFoundError(f"datasets.{dataset}: {field} '{path}' {what}; {hint}")


def resize_label_map(
    labels: Tensor, *, resolution: int, mode: ResizeMode, fill: int = 255
) -> Tensor:
    """Apply :func:`resize_image`'s geometry to an integer label map ``[H, W]`` -> ``[R, R]``.

    Nearest-exact sampling, as :func:`resize_masks`, so label ``k`` covers the same pixels as a
    mask of class ``k`` would; the area added by ``"pad"`` gets ``fill`` (255, the usual ignore
    index of semantic segmentation benchmarks such as Pascal VOC).
    """
    _check_mode(mode)
    height, width = labels.shape[-2:]
    size = _scaled_size(height, width, resolution=resolution, mode=mode)
    if (height, width) != size:
        labels = TF.resize(
            labels.unsqueeze(0), list(size), interpolation=InterpolationMode.NEAREST_EXACT
        ).squeeze(0)
    if mode == "pad":
        out = labels.new_full((resolution, resolution), fill)
        out[: size[0], : size[1]] = labels
        return out
    return _fit(labels, resolution=resolution, mode=mode).contiguous()
