"""The toy world (:mod:`.world`) as a dataset: scenes generated on the fly."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.toy_world.world import ToyWorldConfig, class_names, generate_scene
from mergekit_vision.data.transforms import (
    choose_masks,
    resize_image,
    resize_label_map,
    resize_masks,
    sample_generator,
)
from mergekit_vision.registry import PluginParams


@DATASETS.register("toy_world")
class ToyWorldDataset(ImageDataset, Dataset):
    """Scenes of coloured shapes with instance masks, a semantic label map and a caption.

    Sample ``index`` is :func:`~.world.generate_scene` of ``(seed, index)``,
    drawn at ``world.image_size`` and resized to the task resolution like a file would be. Beyond
    the dataset contract each sample has ``"classes"`` (``int64 [M]``, the class of each mask),
    ``"semantic"`` (``int64 [R, R]``, 0 background, ``k + 1`` for class ``k``), ``"depth"``
    (``float32 [R, R]`` metres, resized nearest-neighbour as ``depth_folder``'s), ``"label"`` (the
    class of the largest object) and ``"caption"``. Class names are :attr:`class_names`.
    """

    has_masks = True

    class Params(PluginParams):
        world: ToyWorldConfig = ToyWorldConfig()
        num_samples: int = Field(default=1000, ge=1)
        seed: int | None = Field(default=None, ge=0)
        num_objects: int | None = Field(default=None, ge=1)

    def __init__(
        self,
        *,
        world: ToyWorldConfig,
        num_samples: int,
        seed: int,
        resolution: int,
        resize: ResizeMode,
        max_masks: int,
        num_objects: int | None = None,
    ):
        """
        Args:
            world: what the scenes contain and how hard they are.
            num_samples: length of the dataset.
            seed: the world's seed; with the index, determines every sample.
            resolution: side ``R`` of the square output images, masks and label maps.
            resize: ``"pad"`` or ``"crop"`` (moot for square scenes but for rounding).
            max_masks: the most masks returned per image (a seeded random subset).
            num_objects: a fixed number of objects per scene (e.g. 1 for classification).
        """
        self.world, self.num_samples, self.seed = world, num_samples, seed
        self.resolution, self.resize, self.max_masks = resolution, resize, max_masks
        self.num_objects = num_objects

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> ToyWorldDataset:
        # Nothing to check on disk; an explicit params.seed pins the scenes whatever the run seed.
        return cls(
            world=params.world,
            num_samples=params.num_samples,
            seed=seed if params.seed is None else params.seed,
            resolution=resolution,
            resize=resize,
            max_masks=max_masks,
            num_objects=params.num_objects,
        )

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {}

    @property
    def class_names(self) -> list[str]:
        return class_names(self.world)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"toy_world: index {index} out of range [0, {self.num_samples})")
        scene = generate_scene(
            self.world, seed=self.seed, index=index, num_objects=self.num_objects
        )
        geometry = {"resolution": self.resolution, "mode": self.resize}
        masks = resize_masks(scene.masks, **geometry)
        # Downscaling can erase a small object; numpy because torch's bool any() is slow on CPU.
        keep = np.flatnonzero(masks.numpy().reshape(len(masks), -1).any(axis=1)).tolist()
        chosen = choose_masks(
            len(keep), keep=self.max_masks, generator=sample_generator(self.seed, index)
        )
        keep = torch.tensor([keep[i] for i in chosen], dtype=torch.int64)
        return {
            "image": resize_image(scene.image, **geometry),
            "masks": masks[keep],
            "classes": scene.classes[keep],
            "semantic": resize_label_map(scene.semantic, **geometry),
            "depth": resize_label_map(scene.depth, fill=0, **geometry),
            "label": scene.label,
            "caption": scene.caption,
            "key": f"toy_world/{self.seed}/{index}",
        }
