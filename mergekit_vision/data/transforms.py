"""Image I/O, geometric transforms and per-sample seeding shared by the dataset plugins.

Images and their instance masks go through the same geometry (scale, then pad or crop) so a mask
keeps covering its object at the task resolution. The two modes follow the teacher a task serves:

- ``"pad"`` (SAM, Kirillov et al. 2023): longest side to ``R``, zero-pad bottom and right;
- ``"crop"`` (CLIP, Radford et al. 2021): shortest side to ``R``, centre crop.
"""

from __future__ import annotations

import inspect
import io
import re
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import BinaryIO, Literal

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

JpegDecoder = Literal["torchvision", "pil"]


def _torchvision_decode_jpeg() -> Callable[..., Tensor] | None:
    """torchvision's JPEG decoder to RGB, where this torchvision has one that applies EXIF
    orientation; None where it has not: older versions lack the option, and torchvision's image
    decoding is deprecated since 0.29 (TorchCodec takes it over), so a later one may lack it."""
    try:
        from torchvision.io import ImageReadMode, decode_jpeg
    except ImportError:
        return None
    if "apply_exif_orientation" not in inspect.signature(decode_jpeg).parameters:
        return None
    return partial(decode_jpeg, mode=ImageReadMode.RGB)


_DECODE_JPEG = _torchvision_decode_jpeg()
JPEG_DECODERS: tuple[JpegDecoder, ...] = ("torchvision", "pil") if _DECODE_JPEG else ("pil",)
# The JPEG decoder every loader uses: torchvision's where it has one, else PIL. Both decode with
# libjpeg-turbo and gave the same pixels; `vmerge bench --data` times them on the same bytes and
# checks the pixels (docs/performance.md). torchvision's was the faster: it decodes straight into
# a tensor, where PIL goes through an Image, an RGB conversion and an array copy. Other formats
# (PNG, TIFF, ...) always go to PIL.
JPEG_DECODER: JpegDecoder = JPEG_DECODERS[0]
JPEG_MAGIC = b"\xff\xd8\xff"
_CPP_LOCATION = re.compile(r"^\w+, \S+:\d+, ")  # torchvision's "decode_jpeg, <file>:<line>, "


class UnreadableImageError(OSError):
    """An image file is missing, truncated or not an image; the message names the file."""


def load_image(
    path: Path | str | BinaryIO,
    *,
    expected_size: tuple[int, int] | None = None,
    name: str | None = None,
    jpeg_decoder: JpegDecoder | None = None,
) -> Tensor:
    """Read an image file as ``uint8 [3, H, W]`` RGB, EXIF orientation applied.

    The tensor is a view of ``[H, W, 3]`` pixels (channels last in memory, as decoders write
    them), the layout torch's antialiased uint8 resize works in, so :func:`resize_image` reads
    it without first converting a planar copy back.

    Args:
        path: the image file, or a binary stream of its bytes.
        expected_size: ``(H, W)`` of the annotations that come with the image. Annotation sets
            disagree on whether their masks follow the EXIF orientation or the stored pixels, so
            when given, the orientation that matches it is used, and neither matching is an error.
        name: how error messages name the image (default: ``path``).
        jpeg_decoder: who decodes a JPEG (default :data:`JPEG_DECODER`); other formats use PIL.
    """
    name = str(path) if name is None else name
    decoder = jpeg_decoder or JPEG_DECODER
    if decoder not in JPEG_DECODERS:
        raise ValueError(
            f"jpeg_decoder {decoder!r}: this torchvision has no JPEG decoder that applies EXIF "
            "orientation; use 'pil'"
        )
    if expected_size is not None:
        expected_size = (int(expected_size[0]), int(expected_size[1]))
    try:
        if isinstance(path, str | Path):
            with open(path, "rb") as file:
                is_jpeg = file.read(len(JPEG_MAGIC)) == JPEG_MAGIC
            source: Path | str | BinaryIO = path
        else:
            source = io.BytesIO(path.read())
            is_jpeg = source.getvalue().startswith(JPEG_MAGIC)
        if is_jpeg and decoder == "torchvision":
            image = _decode_jpeg(source, expected_size)
        else:
            image = _decode_pil(source, expected_size)
    except (OSError, RuntimeError) as exc:  # RuntimeError: torchvision's decoder
        reason = _CPP_LOCATION.sub("", str(exc))
        raise UnreadableImageError(f"cannot read image '{name}': {reason}") from exc
    height, width = image.shape[-2:]
    if expected_size is not None and (height, width) != expected_size:
        raise ValueError(
            f"image '{name}' is {height}x{width} (HxW) but its annotations are "
            f"{expected_size[0]}x{expected_size[1]}"
        )
    return image


def _decode_jpeg(source: Path | str | BinaryIO, expected_size: tuple[int, int] | None) -> Tensor:
    """A JPEG -> ``uint8 [3, H, W]`` by torchvision, oriented as :func:`load_image` says."""
    data = Path(source).read_bytes() if isinstance(source, str | Path) else source.read()
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    assert _DECODE_JPEG is not None  # load_image checked
    image = _DECODE_JPEG(encoded, apply_exif_orientation=True)
    if expected_size is not None and tuple(image.shape[-2:]) != expected_size:
        image = _DECODE_JPEG(encoded)  # the stored orientation
    return image


def _decode_pil(source: Path | str | BinaryIO, expected_size: tuple[int, int] | None) -> Tensor:
    """An image of any format PIL reads -> ``uint8 [3, H, W]``, oriented likewise."""
    with Image.open(source) as raw:
        raw.load()
        image = ImageOps.exif_transpose(raw)
        if expected_size is not None and (image.height, image.width) != expected_size:
            image = raw
        rgb = _to_rgb(image)
    return torch.from_numpy(np.asarray(rgb).copy()).permute(2, 0, 1)


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
    stay aligned to within half a pixel. ``masks`` may be a strided view (e.g. of a decoder's
    ``[H, W, M]`` output); the result is contiguous.
    """
    _check_mode(mode)
    size = _scaled_size(*masks.shape[-2:], resolution=resolution, mode=mode)
    if tuple(masks.shape[-2:]) != size:
        # Resized as the same bytes read as uint8: torch interpolates uint8 natively, while a
        # bool tensor takes a detour through float. Nearest sampling copies values, so 0/1 stay.
        resized = TF.resize(
            masks.view(torch.uint8), list(size), interpolation=InterpolationMode.NEAREST_EXACT
        )
        masks = resized.view(torch.bool)
    return _fit(masks, resolution=resolution, mode=mode).contiguous()


def drop_empty(masks: Tensor) -> Tensor:
    """Remove masks ``bool [M, R, R]`` that have no pixel left (tiny objects after downscaling)."""
    if masks.shape[0] == 0:
        return masks
    keep = masks.flatten(1).view(torch.uint8).amax(dim=1) > 0  # bytes: faster than any()
    return masks if bool(keep.all()) else masks[keep]  # usually none is dropped: no copy


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
