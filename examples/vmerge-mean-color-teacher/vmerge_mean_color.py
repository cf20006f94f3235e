"""An outside teacher plugin: a fixed random projection of an image's colour layout.

It stands in for any foundation model you bring (DINOv2, SigLIP, a depth model...): the plugin
declares its parameters, its input normalization and the targets it produces, and mergekit-vision
finds it through the ``mergekit_vision.teachers`` entry point in ``pyproject.toml``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mergekit_vision.contracts import Prompts, TargetSpec, Teacher
from mergekit_vision.registry import PluginParams


class MeanColorTeacher(Teacher):
    """Colour-layout embedding: mean colour of a grid of cells, randomly projected."""

    class Params(PluginParams):
        embed_dim: int = Field(16, ge=1)
        grid: int = Field(4, ge=1)
        seed: int = 0

    pixel_mean = (0.5, 0.5, 0.5)
    pixel_std = (0.25, 0.25, 0.25)
    input_size = 32

    def __init__(self, *, embed_dim: int, grid: int, seed: int):
        super().__init__()
        self.grid = grid
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer(
            "projection", torch.randn(3 * grid * grid, embed_dim, generator=generator)
        )

    @classmethod
    def build(cls, params: Params, *, allow_random_init: bool = False) -> MeanColorTeacher:
        return cls(**params.model_dump()).freeze()

    def target_specs(self) -> dict[str, TargetSpec]:
        return {"image_embedding": TargetSpec(("B", self.projection.shape[1]), "colour layout")}

    @torch.no_grad()
    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        cells = F.adaptive_avg_pool2d(self.prepare(images), self.grid).flatten(1)  # [B, 3*g*g]
        return {"image_embedding": F.normalize(cells @ self.projection, dim=-1)}
