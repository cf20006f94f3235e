"""SA-1B (Kirillov et al. 2023, "Segment Anything"): images with class-agnostic instance masks.

Layout, as in the released tar files: one folder holding ``sa_<id>.jpg`` and ``sa_<id>.json`` side
by side; each JSON has ``"image"`` (``width``, ``height``, ...) and ``"annotations"``, each with a
COCO compressed-RLE ``"segmentation"`` and an ``"area"``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools import mask as mask_utils
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.skips import decoding, readable_sample
from mergekit_vision.data.transforms import (
    choose_masks,
    drop_empty,
    load_image,
    missing_path_error,
    resize_image,
    resize_masks,
    sample_generator,
)
from mergekit_vision.registry import PluginParams

# SA-1B images are ~1500x2250, so decode a few masks at a time to bound memory (~3.4 MB each).
_DECODE_CHUNK = 8


@DATASETS.register("sa1b")
class SA1BDataset(ImageDataset, Dataset):
    """SA-1B images and masks; at most ``max_masks`` masks per image, a seeded random subset.

    The subset is drawn from ``(seed, index)`` (uniformly, not largest-first, so small objects and
    parts stay in the training signal) and is the same in every epoch and worker. Masks that
    vanish when downscaled to the task resolution are dropped, so ``M`` may be below the cap.
    A sample whose image, JSON or masks cannot be decoded is skipped
    (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = True

    class Params(PluginParams):
        root: Path
        limit: int | None = Field(default=None, ge=1)
        min_mask_area: int = Field(default=0, ge=0)

    def __init__(
        self,
        *,
        root: Path,
        images: list[str],
        resolution: int,
        resize: ResizeMode,
        seed: int,
        max_masks: int,
        min_mask_area: int = 0,
    ):
        """
        Args:
            root: the folder of ``sa_<id>.jpg`` / ``sa_<id>.json`` pairs.
            images: image file names in ``root``, in sample order.
            resolution: side ``R`` of the square output images and masks.
            resize: ``"pad"`` (SAM's own preprocessing) or ``"crop"``.
            seed: with the sample index, seeds the choice of masks.
            max_masks: the most masks kept per image.
            min_mask_area: annotations with a smaller ``area`` (original pixels) are skipped.
        """
        self.root, self.images = root, images
        self.resolution, self.resize = resolution, resize
        self.seed, self.max_masks, self.min_mask_area = seed, max_masks, min_mask_area

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> SA1BDataset:
        root = Path(params.root)
        if not root.is_dir():
            raise missing_path_error(
                dataset="sa1b",
                field="root",
                path=root,
                what="does not exist or is not a folder",
                hint="point it at an extracted SA-1B folder of sa_<id>.jpg and sa_<id>.json files",
            )
        names = {p.name for p in root.iterdir()}
        images = sorted(n for n in names if n.lower().endswith(".jpg"))
        if not images:
            raise ValueError(f"datasets.sa1b: no .jpg images in root '{root}'")
        missing = [n for n in images if f"{Path(n).stem}.json" not in names]
        if missing:
            shown = ", ".join(str(root / f"{Path(n).stem}.json") for n in missing[:5])
            more = f" (and {len(missing) - 5} more)" if len(missing) > 5 else ""
            raise FileNotFoundError(
                f"datasets.sa1b: annotation files missing for {len(missing)} image(s) in root "
                f"'{root}': {shown}{more}; every sa_<id>.jpg needs its sa_<id>.json beside it"
            )
        if params.limit is not None:
            images = images[: params.limit]
        return cls(
            root=root,
            images=images,
            resolution=resolution,
            resize=resize,
            seed=seed,
            max_masks=max_masks,
            min_mask_area=params.min_mask_area,
        )

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"root": Path(params.root)}

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="sa1b")

    def _read(self, index: int) -> dict[str, Any]:
        image_path = self.root / self.images[index]
        json_path = image_path.with_suffix(".json")
        with decoding(json_path):
            record = json.loads(json_path.read_text())
            height, width = int(record["image"]["height"]), int(record["image"]["width"])
            annotations = [
                a for a in record["annotations"] if a.get("area", np.inf) >= self.min_mask_area
            ]
            chosen = choose_masks(
                len(annotations),
                keep=self.max_masks,
                generator=sample_generator(self.seed, index),
            )
            rles = [annotations[i]["segmentation"] for i in chosen]
        with decoding(image_path):
            image = load_image(image_path, expected_size=(height, width))
        with decoding(json_path):
            masks = self._decode(rles, height=height, width=width, source=image_path)
        return {
            "image": resize_image(image, resolution=self.resolution, mode=self.resize),
            "masks": masks,
            "key": image_path.stem,
        }

    def _decode(
        self, rles: list[dict[str, Any]], *, height: int, width: int, source: Path
    ) -> Tensor:
        """Compressed RLEs -> ``bool [M, R, R]`` at the task resolution, empty masks dropped."""
        chunks = [torch.zeros(0, self.resolution, self.resolution, dtype=torch.bool)]
        for start in range(0, len(rles), _DECODE_CHUNK):
            decoded = mask_utils.decode(rles[start : start + _DECODE_CHUNK])  # [H, W, m] uint8
            # A view, not a copy: the decoder writes column-major, and resize_masks reads any
            # strides, so only the resized masks are laid out anew.
            masks = torch.from_numpy(decoded).permute(2, 0, 1).view(torch.bool)
            if tuple(masks.shape[-2:]) != (height, width):
                raise ValueError(
                    f"sa1b: a mask of '{source}' is "
                    f"{tuple(masks.shape[-2:])}, the image is {(height, width)}"
                )
            chunks.append(resize_masks(masks, resolution=self.resolution, mode=self.resize))
        return drop_empty(torch.cat(chunks))
