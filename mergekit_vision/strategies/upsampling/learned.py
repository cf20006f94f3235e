"""A small image-guided upsampler of teacher feature maps, fitted to the teacher."""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.upsampling.base import UPSAMPLING, TeacherMap, TeacherUpsampler
from mergekit_vision.strategies.upsampling.tile_stitch import tiled_teacher


class GuidedUpsampler(nn.Module):
    """Each fine cell a convex combination of the ``(2r+1)^2`` coarse cells around it, with
    weights from the image: a learned joint bilateral upsampler.

    The weight logits are a learned spatial prior (per sub-cell position and neighbour, started
    as a Gaussian of the distance between their centres, so an untrained module interpolates
    smoothly) plus a small conv net's reading of the image at the fine grid (started at zero).
    A convex combination keeps every output inside the teacher's features (no new values), and
    the weights need no parameter per channel, so the module is as small for a 1024-channel
    teacher as for a 32-channel one.

    Args:
        factor: ``f``: ``[B, D, h, w]`` -> ``[B, D, f h, f w]``.
        radius: ``r``: the neighbourhood of coarse cells each fine cell combines.
        guidance_dim: channels of the image net.
    """

    def __init__(self, *, factor: int, radius: int = 1, guidance_dim: int = 16):
        super().__init__()
        self.factor, self.radius = factor, radius
        side = 2 * radius + 1
        self.guidance = nn.Sequential(
            nn.Conv2d(3, guidance_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(guidance_dim, guidance_dim, 3, padding=1),
            nn.GELU(),
            nn.Conv2d(guidance_dim, side * side, 1),
        )
        nn.init.zeros_(self.guidance[-1].weight)
        nn.init.zeros_(self.guidance[-1].bias)
        # Centre of fine cell (a, b) of a coarse cell, minus the centres of its neighbours,
        # in coarse cells: a Gaussian of sigma 0.5 on that distance.
        offsets = [
            (dy, dx) for dy in range(-radius, radius + 1) for dx in range(-radius, radius + 1)
        ]
        sub = (torch.arange(factor, dtype=torch.float32) + 0.5) / factor - 0.5
        dy = sub.view(1, -1, 1) - torch.tensor([o[0] for o in offsets], dtype=torch.float32).view(
            -1, 1, 1
        )
        dx = sub.view(1, 1, -1) - torch.tensor([o[1] for o in offsets], dtype=torch.float32).view(
            -1, 1, 1
        )
        self.prior = nn.Parameter(-(dy**2 + dx**2) / (2 * 0.5**2))  # [K, f, f]
        self.offsets = offsets

    def forward(self, coarse: Tensor, images: Tensor) -> Tensor:
        """``coarse`` ``[B, D, h, w]`` guided by ``images`` ``[B, 3, R, R]`` ->
        ``[B, D, f h, f w]``."""
        b, _, h, w = coarse.shape
        size = (h * self.factor, w * self.factor)
        guide = F.interpolate(
            images, size=size, mode="bilinear", antialias=True, align_corners=False
        )
        prior = self.prior.repeat(1, h, w)  # [K, f h, f w]
        weights = torch.softmax(self.guidance(guide) + prior, dim=1)  # [B, K, f h, f w]
        r = self.radius
        padded = F.pad(coarse, (r, r, r, r), mode="replicate")
        out = coarse.new_zeros(b, coarse.shape[1], *size)
        for k, (dy, dx) in enumerate(self.offsets):
            neighbour = padded[:, :, r + dy : r + dy + h, r + dx : r + dx + w]
            out = out + weights[:, k : k + 1] * F.interpolate(neighbour, scale_factor=self.factor)
        return out


@UPSAMPLING.register("learned")
class LearnedUpsampler(TeacherUpsampler):
    """The teacher's map upsampled ``factor`` times by a small image-guided module fitted to the
    teacher before training.

    FeatUp (Fu et al., ICLR 2024, arXiv 2403.10516) learns a joint bilateral upsampler from the
    teacher alone: the upsampled map of an image, moved as the image is jittered and pooled back
    to the teacher's grid, must give the teacher's map of the jittered image. FeatSharp
    (Ranzinger et al., ICML 2025, arXiv 2502.16025) adds the teacher's maps of image tiles, whose
    detail the upsampled global view lacks, and serves the result as an agglomerative student's
    high-resolution target. This plugin is a small form of both: :class:`GuidedUpsampler`, fitted
    over ``fit_steps`` calibration batches with Adam on

    - multi-view reconstruction: for a shift ``t`` of whole fine cells drawn per batch, the
      upsampled map shifted by ``t`` and average-pooled ``factor x factor`` against the teacher's
      map of the image shifted alike (border pixels repeated);
    - with ``tiles`` (``= factor``), ``tile_weight`` x the distance of the upsampled map to the
      tile-stitched one (:mod:`.tile_stitch`).

    Each term is a mean squared error divided by the teacher's feature variance, so ``lr`` does
    not depend on a teacher's scale. After the fit the weights are frozen; they are not part of
    the merged model's checkpoint, and a resumed run fits them again, from the same seed and
    calibration batches.

    Args:
        dim, grid: see :class:`TeacherUpsampler`.
        factor: fine cells per coarse cell and side.
        radius, guidance_dim: see :class:`GuidedUpsampler`.
        fit_steps: calibration batches.
        lr: Adam's step size.
        tiles: also fit to the teacher's tile-stitched map (must equal ``factor``).
        tile_weight: that term's weight.
    """

    class Params(PluginParams):
        factor: int = Field(2, ge=2, le=8)
        radius: int = Field(1, ge=1, le=3)
        guidance_dim: int = Field(16, ge=1, le=256)
        fit_steps: int = Field(100, ge=1)
        lr: float = Field(1e-3, gt=0)
        tiles: int | None = Field(None, ge=2, le=8, description="fit to tile-stitched maps too")
        tile_weight: float = Field(1.0, ge=0)

        @model_validator(mode="after")
        def _tiles_match(self) -> LearnedUpsampler.Params:
            if self.tiles is not None and self.tiles != self.factor:
                raise ValueError(
                    f"tiles ({self.tiles}) must equal factor ({self.factor}): the stitched map is "
                    "the target on the upsampled grid"
                )
            return self

    def __init__(
        self,
        *,
        dim: int,
        grid: tuple[int, int] | None,
        factor: int = 2,
        radius: int = 1,
        guidance_dim: int = 16,
        fit_steps: int = 100,
        lr: float = 1e-3,
        tiles: int | None = None,
        tile_weight: float = 1.0,
    ):
        super().__init__(dim=dim, grid=grid)
        self.net = GuidedUpsampler(factor=factor, radius=radius, guidance_dim=guidance_dim)
        self.net.requires_grad_(False)  # trained only inside fit_step, by its own optimiser
        self.factor, self.fit_steps, self.lr = factor, fit_steps, lr
        self.tiles, self.tile_weight = tiles, tile_weight
        self._optimizer: torch.optim.Optimizer | None = None

    @classmethod
    def build(
        cls, params: Any, *, dim: int, grid: tuple[int, int] | None, seed: int
    ) -> LearnedUpsampler:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            return cls(dim=dim, grid=grid, **params.model_dump())

    def check_side(self, side: int) -> None:
        if self.tiles is not None and side % self.tiles:
            raise ValueError(
                f"resolution {side} does not split into {self.tiles} x {self.tiles} equal tiles; "
                f"use multiples of {self.tiles}"
            )

    @torch.no_grad()
    def forward(self, images: Tensor, *, teacher: TeacherMap) -> Tensor:
        return self.net(teacher(images), images)

    def fit_step(self, images: Tensor, *, teacher: TeacherMap, generator: torch.Generator) -> float:
        if self.fitted:
            return math.nan
        if self._optimizer is None:
            self._optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        shift = torch.randint(0, self.factor, (2,), generator=generator).tolist()
        self.net.requires_grad_(True)
        try:
            with torch.enable_grad():
                loss = self.fit_loss(images, teacher=teacher, shift=shift)
                self._optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._optimizer.step()
        finally:
            self.net.requires_grad_(False)
        self.fitted_steps += 1
        if self.fitted:
            self._optimizer = None  # its moments are of no further use
        return float(loss.detach())

    def fit_loss(self, images: Tensor, *, teacher: TeacherMap, shift: list[int]) -> Tensor:
        """The fit's objective on ``images`` for a view shifted by ``shift`` (rows, columns) fine
        cells, each ``< factor``: differentiable in the weights while they require grad."""
        with torch.no_grad():
            coarse = teacher(images)
            cells = (coarse.shape[-2] * self.factor, coarse.shape[-1] * self.factor)
            shifted = teacher(shift_image(images, shift, cells=cells)).float()
            tiled = None
            if self.tiles is not None:
                tiled = tiled_teacher(images, teacher=teacher, tiles=self.tiles, max_batch=None)
        scale = coarse.float().var().clamp_min(1e-12)
        fine = self.net(coarse, images).float()
        pooled = F.avg_pool2d(shift_map(fine, shift), self.factor)
        loss = F.mse_loss(pooled, shifted) / scale
        if tiled is not None:
            loss = loss + self.tile_weight * F.mse_loss(fine, tiled.float()) / scale
        return loss


def shift_image(images: Tensor, shift: list[int], *, cells: tuple[int, int]) -> Tensor:
    """``images`` ``[B, 3, R, R]`` moved up and left by ``shift`` (rows, columns) cells of a
    ``cells`` (rows, columns) grid over the image (sampled bilinearly; borders repeated)."""
    dy, dx = (2.0 * s / n for s, n in zip(shift, cells, strict=True))  # grid_sample's [-1, 1]
    theta = images.new_tensor([[1.0, 0.0, dx], [0.0, 1.0, dy]]).expand(images.shape[0], 2, 3)
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def shift_map(maps: Tensor, shift: list[int]) -> Tensor:
    """``maps`` ``[B, D, H, W]`` moved up and left by ``shift`` whole cells, borders repeated."""
    dy, dx = shift
    padded = F.pad(maps, (0, dx, 0, dy), mode="replicate") if dy or dx else maps
    return padded[:, :, dy : dy + maps.shape[-2], dx : dx + maps.shape[-1]]
