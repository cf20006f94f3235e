"""Images with ground-truth depth: a folder of RGB images and a folder of 16-bit PNG depth maps.

The layout of the depth benchmarks' common exports (NYU Depth v2, Silberman et al. ECCV 2012,
whose labelled set is usually written as ``rgb/*.png`` + ``depth/*.png`` in millimetres; KITTI's
depth maps, Geiger et al. 2012 / Uhrig et al. 2017, in 1/256 m; DIODE, Vasiljevic et al. 2019,
converted the same way): image ``<images>/<stem>.jpg|.jpeg|.png`` goes with depth map
``<depth>/<stem>.png``. A depth map holds one unsigned 16-bit value per pixel, ``depth in metres
= value / depth_scale`` (1000 for millimetres, 256 for KITTI), and 0 where there is no
measurement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from pydantic import Field
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.skips import decoding, readable_sample
from mergekit_vision.data.transforms import (
    load_image,
    missing_path_error,
    resize_image,
    resize_label_map,
)
from mergekit_vision.registry import PluginParams

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png")
_LAYOUT = (
    "expected <images>/<stem>.jpg|.jpeg|.png and <depth>/<stem>.png, a 16-bit greyscale PNG of "
    "depth * depth_scale (0: no measurement)"
)
_SIXTEEN_BIT = ("I;16", "I;16B", "I;16L", "I")  # how PIL opens a 16-bit greyscale PNG


@DATASETS.register("depth_folder")
class DepthFolderDataset(ImageDataset, Dataset):
    """RGB images with ground-truth depth maps of the same stem (16-bit PNG, 0 = no depth).

    Each sample has ``"depth"``, ``float32 [R, R]`` in metres (``value / depth_scale``), 0 where
    there is no measurement and in the area ``"pad"`` resizing adds; it is resized
    nearest-neighbour with the image's geometry, so no depth is blended with a missing one.
    Samples are the images that have a depth map, in sorted order; an image without one is an
    error. A sample whose image or depth map cannot be decoded is skipped
    (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = False

    class Params(PluginParams):
        images: Path
        depth: Path
        depth_scale: float = Field(
            1000.0, gt=0, description="PNG value per metre (1000: millimetres; KITTI: 256)"
        )
        limit: int | None = Field(default=None, ge=1)

    def __init__(
        self,
        *,
        pairs: list[tuple[Path, Path]],
        depth_scale: float,
        resolution: int,
        resize: ResizeMode,
    ):
        """
        Args:
            pairs: ``(image, depth map)`` paths in sample order.
            depth_scale: PNG value per metre.
            resolution: side ``R`` of the square output images and depth maps.
            resize: ``"pad"`` or ``"crop"``.
        """
        self.pairs, self.depth_scale = pairs, depth_scale
        self.resolution, self.resize = resolution, resize

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> DepthFolderDataset:
        # seed and max_masks are unused: the order is sorted, and there are no masks.
        images, depth = Path(params.images), Path(params.depth)
        for field, folder in (("images", images), ("depth", depth)):
            if not folder.is_dir():
                raise missing_path_error(
                    dataset="depth_folder",
                    field=field,
                    path=folder,
                    what="is not a folder",
                    hint=_LAYOUT,
                )
        files = sorted(p for p in images.iterdir() if p.suffix.lower() in _IMAGE_SUFFIXES)
        if not files:
            raise ValueError(f"datasets.depth_folder: images '{images}' holds no images; {_LAYOUT}")
        pairs = [(image, depth / f"{image.stem}.png") for image in files]
        missing = [str(map_) for _, map_ in pairs if not map_.is_file()]
        if missing:
            raise missing_path_error(
                dataset="depth_folder",
                field="depth",
                path=missing[0],
                what=f"does not exist ({len(missing)} of {len(pairs)} images have no depth map)",
                hint=_LAYOUT,
            )
        if params.limit is not None:
            pairs = pairs[: params.limit]
        return cls(
            pairs=pairs, depth_scale=params.depth_scale, resolution=resolution, resize=resize
        )

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"images": Path(params.images), "depth": Path(params.depth)}

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="depth_folder")

    def _read(self, index: int) -> dict[str, Any]:
        image_path, depth_path = self.pairs[index]
        with decoding(depth_path):
            depth = read_depth_png(depth_path) / self.depth_scale
        with decoding(image_path):
            image = load_image(image_path, expected_size=tuple(depth.shape))
        geometry = {"resolution": self.resolution, "mode": self.resize}
        return {
            "image": resize_image(image, **geometry),
            "depth": resize_label_map(depth, fill=0, **geometry),
            "key": image_path.stem,
        }


def read_depth_png(path: Path) -> torch.Tensor:
    """A 16-bit greyscale PNG as its raw values, ``float32 [H, W]``."""
    with Image.open(path) as picture:
        if picture.mode not in _SIXTEEN_BIT:
            raise ValueError(
                f"datasets.depth_folder: depth map '{path}' is mode {picture.mode}; expected a "
                "16-bit greyscale PNG (8 bits cannot hold depth at useful precision)"
            )
        values = np.asarray(picture).astype(np.float32)
    return torch.from_numpy(values)
