"""COCO instance segmentation (Lin et al. 2014): images with polygon or RLE instance masks."""

from __future__ import annotations

import contextlib
import io
from pathlib import Path
from typing import Any

import torch
from pycocotools.coco import COCO
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


@DATASETS.register("coco")
class CocoInstancesDataset(ImageDataset, Dataset):
    """COCO-format instances (``instances_*.json``): every image, in image-id order, with its masks.

    Images without annotations are kept with ``M = 0`` masks: the SAM target is the teacher's
    output for whatever prompt is given, so they still teach (the prompt sampler falls back to
    random prompts for them), and a CLIP task reading the same dataset wants every image. Crowd
    regions are skipped unless ``include_crowd``. At most ``max_masks`` masks are kept per image,
    a uniform random subset seeded from ``(seed, index)``. An image that cannot be decoded, or
    whose annotations cannot, is skipped (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = True

    class Params(PluginParams):
        images: Path
        annotations: Path
        limit: int | None = Field(default=None, ge=1)
        include_crowd: bool = False

    def __init__(
        self,
        *,
        coco: COCO,
        images: Path,
        resolution: int,
        resize: ResizeMode,
        seed: int,
        max_masks: int,
        include_crowd: bool = False,
        limit: int | None = None,
    ):
        """
        Args:
            coco: the loaded annotation index.
            images: the folder the annotations' ``file_name`` entries are relative to.
            resolution: side ``R`` of the square output images and masks.
            resize: ``"pad"`` or ``"crop"``.
            seed: with the sample index, seeds the choice of masks.
            max_masks: the most masks kept per image.
            include_crowd: keep ``iscrowd`` annotations as masks.
            limit: use only the first ``limit`` images (by id).
        """
        self.coco, self.images_dir = coco, images
        self.image_ids = sorted(coco.getImgIds())[:limit]
        self.resolution, self.resize = resolution, resize
        self.seed, self.max_masks, self.include_crowd = seed, max_masks, include_crowd

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> CocoInstancesDataset:
        images, annotations = Path(params.images), Path(params.annotations)
        if not images.is_dir():
            raise missing_path_error(
                dataset="coco",
                field="images",
                path=images,
                what="does not exist or is not a folder",
                hint="point it at the image folder, e.g. coco/val2017",
            )
        if not annotations.is_file():
            raise missing_path_error(
                dataset="coco",
                field="annotations",
                path=annotations,
                what="does not exist",
                hint="point it at an instances JSON, e.g. annotations/instances_val2017.json",
            )
        with contextlib.redirect_stdout(io.StringIO()):  # COCO() prints progress
            coco = COCO(str(annotations))
        if not coco.getImgIds():
            raise ValueError(f"datasets.coco: annotations '{annotations}' list no images")
        return cls(
            coco=coco,
            images=images,
            resolution=resolution,
            resize=resize,
            seed=seed,
            max_masks=max_masks,
            include_crowd=params.include_crowd,
            limit=params.limit,
        )

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {"images": Path(params.images), "annotations": Path(params.annotations)}

    def __len__(self) -> int:
        return len(self.image_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return readable_sample(self._read, index, length=len(self), name="coco")

    def _read(self, index: int) -> dict[str, Any]:
        info = self.coco.loadImgs(self.image_ids[index])[0]
        path = self.images_dir / str(info.get("file_name"))
        with decoding(path):
            image = load_image(path, expected_size=(info["height"], info["width"]))
        with decoding(path, part="annotations"):
            masks = self._masks(info, index=index)
        return {
            "image": resize_image(image, resolution=self.resolution, mode=self.resize),
            "masks": masks,
            "key": info["file_name"],
        }

    def _masks(self, info: dict[str, Any], *, index: int) -> Tensor:
        """The image's instance masks as ``bool [M, R, R]``, empty ones dropped."""
        crowd = None if self.include_crowd else False
        ann_ids = sorted(self.coco.getAnnIds(imgIds=[info["id"]], iscrowd=crowd))
        chosen = choose_masks(
            len(ann_ids), keep=self.max_masks, generator=sample_generator(self.seed, index)
        )
        if not chosen:
            return torch.zeros(0, self.resolution, self.resolution, dtype=torch.bool)
        annotations = self.coco.loadAnns([ann_ids[i] for i in chosen])
        full = torch.stack([torch.from_numpy(self.coco.annToMask(a)).bool() for a in annotations])
        return drop_empty(resize_masks(full, resolution=self.resolution, mode=self.resize))
