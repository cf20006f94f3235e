"""Generated scenes of coloured shapes with their instance masks, for dry runs and tests."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from torch import Tensor
from torch.utils.data import Dataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.transforms import choose_masks, drop_empty, sample_generator
from mergekit_vision.registry import PluginParams


@DATASETS.register("synthetic")
class SyntheticShapesDataset(ImageDataset, Dataset):
    """A smooth two-colour gradient with 1..``max_objects`` filled rectangles and ellipses on top.

    Sample ``index`` is a pure function of ``(seed, index)``. Shapes are painted in order, so a
    later shape hides the part of an earlier one it covers, and each instance mask is the visible
    part. Images are generated at the task resolution directly, so ``resize`` has nothing to do.
    """

    has_masks = True

    class Params(PluginParams):
        num_samples: int = Field(default=64, ge=1)
        max_objects: int = Field(default=4, ge=1)

    def __init__(
        self, *, num_samples: int, max_objects: int, resolution: int, seed: int, max_masks: int
    ):
        """
        Args:
            num_samples: length of the dataset.
            max_objects: the most shapes per image (at least one).
            resolution: side ``R`` of the square images and masks.
            seed: with the index, determines every sample.
            max_masks: the most masks returned per image.
        """
        self.num_samples, self.max_objects = num_samples, max_objects
        self.resolution, self.seed, self.max_masks = resolution, seed, max_masks

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> SyntheticShapesDataset:
        # No files to check; resize is moot for images generated square at the target size.
        return cls(
            num_samples=params.num_samples,
            max_objects=params.max_objects,
            resolution=resolution,
            seed=seed,
            max_masks=max_masks,
        )

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        return {}

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"synthetic: index {index} out of range [0, {self.num_samples})")
        generator = sample_generator(self.seed, index)
        image = _gradient(self.resolution, generator)  # [3, R, R] float in [0, 1]
        count = int(torch.randint(1, self.max_objects + 1, (1,), generator=generator))
        masks = torch.zeros(count, self.resolution, self.resolution, dtype=torch.bool)
        for i in range(count):
            shape = _random_shape(self.resolution, generator)
            colour = torch.rand(3, 1, 1, generator=generator)
            image = torch.where(shape, colour, image)
            masks[:i] &= ~shape  # the new shape occludes the ones painted before it
            masks[i] = shape
        masks = drop_empty(masks)
        keep = choose_masks(masks.shape[0], keep=self.max_masks, generator=generator)
        return {
            "image": (image * 255).round().to(torch.uint8),
            "masks": masks[keep],
            "key": f"synthetic/{self.seed}/{index}",
        }


def _gradient(size: int, generator: torch.Generator) -> Tensor:
    """A linear blend between two random colours along a random direction, ``[3, R, R]``."""
    start, end = torch.rand(2, 3, 1, 1, generator=generator)
    angle = float(torch.rand((), generator=generator)) * 2 * math.pi
    coords = _coords(size)
    t = coords.view(1, -1) * math.cos(angle) + coords.view(-1, 1) * math.sin(angle)
    t = (t - t.min()) / (t.max() - t.min()).clamp_min(1e-6)
    return start + (end - start) * t


def _random_shape(size: int, generator: torch.Generator) -> Tensor:
    """A filled axis-aligned rectangle or ellipse, ``bool [R, R]``, 8-30% of the side in radius."""
    centre = torch.rand(2, generator=generator)
    half = 0.08 + 0.22 * torch.rand(2, generator=generator)
    coords = _coords(size)
    # Rows and columns broadcast to [R, R] only in the final comparison: cheap at 1024 px.
    dx = ((coords - centre[0]) / half[0]).view(1, -1)
    dy = ((coords - centre[1]) / half[1]).view(-1, 1)
    if float(torch.rand((), generator=generator)) < 0.5:
        return (dx.abs() <= 1) & (dy.abs() <= 1)
    return dx**2 + dy**2 <= 1


def _coords(size: int) -> Tensor:
    """Pixel-centre coordinates in [0, 1], ``[R]``."""
    return (torch.arange(size, dtype=torch.float32) + 0.5) / size
