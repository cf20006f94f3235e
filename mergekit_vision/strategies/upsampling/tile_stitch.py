"""Tile-and-stitch teacher inference: a dense target on a grid ``tiles`` times the teacher's."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.upsampling.base import UPSAMPLING, TeacherMap, TeacherUpsampler


def split_tiles(images: Tensor, tiles: int) -> Tensor:
    """``[B, C, R, R]`` -> ``[B k^2, C, R/k, R/k]``: image ``b``'s tile at row ``i``, column
    ``j`` is item ``b k^2 + i k + j``. ``R`` must be a multiple of ``k``."""
    b, c, height, width = images.shape
    if height % tiles or width % tiles:
        raise ValueError(
            f"a {height} x {width} image does not split into {tiles} x {tiles} equal tiles; use a "
            f"resolution that is a multiple of {tiles}"
        )
    h, w = height // tiles, width // tiles
    grid = images.reshape(b, c, tiles, h, tiles, w).permute(0, 2, 4, 1, 3, 5)
    return grid.reshape(b * tiles * tiles, c, h, w)


def stitch_tiles(maps: Tensor, tiles: int) -> Tensor:
    """The inverse layout of :func:`split_tiles` for feature maps: ``[B k^2, D, h, w]`` ->
    ``[B, D, k h, k w]``, tile ``(i, j)``'s map at rows ``i h ..`` and columns ``j w ..``."""
    n, d, h, w = maps.shape
    b = n // (tiles * tiles)
    grid = maps.reshape(b, tiles, tiles, d, h, w).permute(0, 3, 1, 4, 2, 5)
    return grid.reshape(b, d, tiles * h, tiles * w)


def tiled_teacher(
    images: Tensor, *, teacher: TeacherMap, tiles: int, max_batch: int | None
) -> Tensor:
    """The teacher run on each of the ``tiles x tiles`` tiles of ``images`` and its maps stitched:
    ``[B, 3, R, R]`` -> ``[B, D, k h, k w]``, in chunks of at most ``max_batch`` tiles."""
    parts = split_tiles(images, tiles)
    step = max_batch or parts.shape[0]
    maps = torch.cat([teacher(parts[i : i + step]) for i in range(0, parts.shape[0], step)])
    return stitch_tiles(maps, tiles)


@UPSAMPLING.register("tile_stitch")
class TileStitch(TeacherUpsampler):
    """The teacher on ``tiles x tiles`` tiles of the image, each at its native side, their dense
    maps stitched into one map of ``tiles`` x the teacher's grid.

    FeatSharp (Ranzinger et al., "FeatSharp: Your Vision Model Features, Sharper", ICML 2025,
    arXiv 2502.16025) gives a low-resolution teacher dense targets at an agglomerative
    student's (RADIO's) higher resolution; tiling is its baseline and one of its inputs: every
    tile is seen at the teacher's full detail, at the price of context (a tile sees only its
    part of the scene, so the stitched map can change abruptly at tile borders) and of
    ``tiles^2`` teacher calls per image. The teacher resizes each ``R/k`` tile to its input
    side, so a task at ``R = k x`` that side feeds it every tile unresized. No weights: nothing
    to fit.

    Args:
        dim, grid: see :class:`TeacherUpsampler`.
        tiles: tiles per side ``k``; the task's resolutions must be multiples of it.
        max_batch: at most this many tiles per teacher call (None: all of a batch's at once).
    """

    class Params(PluginParams):
        tiles: int = Field(2, ge=2, le=8)
        max_batch: int | None = Field(None, ge=1, description="tiles per teacher call")

    def __init__(
        self,
        *,
        dim: int,
        grid: tuple[int, int] | None,
        tiles: int = 2,
        max_batch: int | None = None,
    ):
        super().__init__(dim=dim, grid=grid)
        self.tiles, self.max_batch = tiles, max_batch

    @classmethod
    def build(cls, params: Any, *, dim: int, grid: tuple[int, int] | None, seed: int) -> TileStitch:
        return cls(dim=dim, grid=grid, tiles=params.tiles, max_batch=params.max_batch)

    def check_side(self, side: int) -> None:
        if side % self.tiles:
            raise ValueError(
                f"resolution {side} does not split into {self.tiles} x {self.tiles} equal tiles; "
                f"use multiples of {self.tiles}"
            )

    def forward(self, images: Tensor, *, teacher: TeacherMap) -> Tensor:
        return tiled_teacher(images, teacher=teacher, tiles=self.tiles, max_batch=self.max_batch)
