"""Teacher upsamplers: tile-and-stitch equals the teacher run on each tile, and the learned
upsampler has the right shapes, starts as a smooth interpolation and fits its teacher."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError
from torch import nn

from mergekit_vision.contracts import TEACHERS
from mergekit_vision.data.synthetic import SyntheticShapesDataset
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.strategies.upsampling.base import UPSAMPLING
from mergekit_vision.strategies.upsampling.learned import LearnedUpsampler, shift_map
from mergekit_vision.strategies.upsampling.tile_stitch import split_tiles, stitch_tiles

from ..conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def clip_spatial():
    """The tiny open_clip teacher's feature map (input side 32 px, 4 x 4 grid) as a function."""
    spec = load_recipe(TINY_RECIPE).teachers["clip"]
    torch.manual_seed(0)
    teacher = TEACHERS.get(spec.type).build(spec.params, allow_random_init=True).freeze()
    return lambda images: teacher(images, targets=["spatial"])["spatial"]


def images(count: int, side: int = 64) -> torch.Tensor:
    data = SyntheticShapesDataset(
        num_samples=count, max_objects=3, resolution=side, seed=1, max_masks=4
    )
    return torch.stack([data[i]["image"] for i in range(count)]).float() / 255


def build(name: str, **params):
    cls = UPSAMPLING.get(name)
    return cls.build(cls.Params(**params), dim=64, grid=(4, 4), seed=0)


def test_split_and_stitch_lay_tiles_out_row_by_row():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float32).reshape(2, 1, 4, 4)
    tiles = split_tiles(x, 2)
    assert tiles.shape == (8, 1, 2, 2)
    assert torch.equal(tiles[1], x[0, :, :2, 2:])  # image 0, row 0, column 1
    assert torch.equal(tiles[6], x[1, :, 2:, :2])  # image 1, row 1, column 0
    assert torch.equal(stitch_tiles(tiles, 2), x)
    with pytest.raises(ValueError, match="multiple of 3"):
        split_tiles(x, 3)


def test_tile_stitch_is_the_teacher_on_each_tile(clip_spatial):
    batch = images(2)
    stitched = build("tile_stitch", tiles=2, max_batch=3)(batch, teacher=clip_spatial)
    assert stitched.shape == (2, 64, 8, 8)
    for i in range(2):
        for j in range(2):
            tile = batch[:, :, 32 * i : 32 * (i + 1), 32 * j : 32 * (j + 1)]
            alone = clip_spatial(tile)  # [2, 64, 4, 4]
            torch.testing.assert_close(
                stitched[:, :, 4 * i : 4 * (i + 1), 4 * j : 4 * (j + 1)], alone
            )


def test_tile_stitch_of_a_2x2_mosaic_repeats_the_teacher_map(clip_spatial):
    one = images(1, side=32)
    mosaic = one.repeat(1, 1, 2, 2)  # [1, 3, 64, 64]: four copies of a 32 px image
    stitched = build("tile_stitch", tiles=2)(mosaic, teacher=clip_spatial)
    torch.testing.assert_close(stitched, clip_spatial(one).repeat(1, 1, 2, 2))


def test_tile_stitch_of_a_local_teacher_is_its_full_resolution_map():
    """A patch embedding (no context across patches) sees a tile as it sees that part of the
    whole image: the stitched map is its map of the full-resolution image."""
    torch.manual_seed(0)
    patchify = nn.Conv2d(3, 8, kernel_size=8, stride=8)
    batch = images(2)
    with torch.no_grad():
        stitched = build("tile_stitch", tiles=4)(batch, teacher=patchify)
        torch.testing.assert_close(stitched, patchify(batch))
    with pytest.raises(ValueError, match="resolution 66 does not split into 4 x 4"):
        build("tile_stitch", tiles=4).check_side(66)


def test_learned_upsampler_shapes_and_its_untrained_interpolation():
    upsampler = build("learned", factor=2, radius=1, guidance_dim=4)
    coarse = torch.randn(2, 64, 4, 4)
    fine = upsampler.net(coarse, images(2))
    assert fine.shape == (2, 64, 8, 8)
    # a convex combination of neighbours: a constant map stays that constant
    flat = upsampler.net(torch.full((1, 64, 4, 4), 3.0), images(1))
    torch.testing.assert_close(flat, torch.full((1, 64, 8, 8), 3.0))
    # and no output leaves the range of its coarse neighbours
    assert fine.max() <= coarse.max() + 1e-5 and fine.min() >= coarse.min() - 1e-5
    assert sum(p.numel() for p in upsampler.parameters()) < 1_000  # no weight per channel


def test_shift_map_moves_whole_cells():
    x = torch.arange(9, dtype=torch.float32).reshape(1, 1, 3, 3)
    assert shift_map(x, [0, 1]).flatten().tolist() == [1, 2, 2, 4, 5, 5, 7, 8, 8]
    assert torch.equal(shift_map(x, [0, 0]), x)


def test_fitting_the_learned_upsampler_lowers_its_loss_then_freezes(clip_spatial):
    upsampler = build("learned", factor=2, fit_steps=40, lr=0.02, guidance_dim=8)
    assert isinstance(upsampler, LearnedUpsampler) and not upsampler.fitted
    batch = images(4)

    def objective() -> float:  # every shift a fit step may draw, averaged: no draw's noise
        with torch.no_grad():
            shifts = [[dy, dx] for dy in range(2) for dx in range(2)]
            return (
                sum(float(upsampler.fit_loss(batch, teacher=clip_spatial, shift=s)) for s in shifts)
                / 4
            )

    before = objective()
    generator = torch.Generator().manual_seed(0)
    for _ in range(40):
        upsampler.fit_step(batch, teacher=clip_spatial, generator=generator)
    assert upsampler.fitted
    after = objective()
    assert after < 0.9 * before, (before, after)
    weights = [p.clone() for p in upsampler.parameters()]
    upsampler.fit_step(batch, teacher=clip_spatial, generator=generator)  # frozen: no update
    target = upsampler(batch, teacher=clip_spatial)
    assert target.shape == (4, 64, 8, 8) and not target.requires_grad
    assert all(torch.equal(a, b) for a, b in zip(weights, upsampler.parameters(), strict=True))
    # the tile term adds the distance to the stitched map, relative to the teacher's variance
    plain = build("learned", factor=2, guidance_dim=8)
    tiled = build("learned", factor=2, tiles=2, tile_weight=0.5, guidance_dim=8)  # same init
    with torch.no_grad():
        coarse, stitched = clip_spatial(batch), build("tile_stitch")(batch, teacher=clip_spatial)
        term = ((plain.net(coarse, batch) - stitched) ** 2).mean() / coarse.var()
        extra = tiled.fit_loss(batch, teacher=clip_spatial, shift=[1, 0]) - plain.fit_loss(
            batch, teacher=clip_spatial, shift=[1, 0]
        )
    torch.testing.assert_close(extra, 0.5 * term)


def test_learned_upsampler_tiles_must_match_its_factor():
    with pytest.raises(ValidationError, match=r"tiles \(3\) must equal factor \(2\)"):
        LearnedUpsampler.Params(factor=2, tiles=3)
