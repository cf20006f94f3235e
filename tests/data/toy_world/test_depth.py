"""The toy world's depth maps: a ground plane, every object nearer than what it hides, and their
16-bit PNG export read back by the ``depth_folder`` plugin."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.toy_world.dataset import ToyWorldDataset
from mergekit_vision.data.toy_world.depth_maps import DEPTH_SCALE, encode_depth_png, export_depth
from mergekit_vision.data.toy_world.export import export_coco
from mergekit_vision.data.toy_world.render import (
    GROUND_FAR,
    GROUND_NEAR,
    ground_depth,
    rasterise_shape,
    window_grid,
)
from mergekit_vision.data.toy_world.world import ToyWorldConfig, generate_scene

# Crowded: large objects allowed to hide most of each other, so occlusions are common.
CROWDED = ToyWorldConfig(
    image_size=64, min_objects=4, max_objects=5, min_size=0.3, max_size=0.5, max_overlap=0.6
)


def _full_shape(obj, size: int) -> np.ndarray:
    """``bool [S, S]`` the object's whole shape, before later objects hide parts of it."""
    radius = obj.size * size / 2
    centre = (obj.centre[0] * size, obj.centre[1] * size)
    window, xs, ys = window_grid(size=size, centre=centre, radius=radius)
    shape = np.zeros((size, size), dtype=bool)
    shape[window] = rasterise_shape(obj.shape, xs=xs, ys=ys, radius=radius, rotation=obj.rotation)
    return shape


def test_ground_depth_grows_towards_the_top_and_is_constant_along_rows() -> None:
    ground = ground_depth(64)
    assert ground.dtype == np.float32 and ground.shape == (64, 64)
    assert (ground == ground[:, :1]).all()
    assert (np.diff(ground[:, 0]) < 0).all()  # row 0 is the top of the image: the farthest
    assert GROUND_NEAR < ground[-1, 0] < ground[0, 0] < GROUND_FAR
    with pytest.raises(ValueError):
        ground[0, 0] = 1.0  # the cached map is read-only: scenes draw on copies


@pytest.mark.parametrize("index", range(8))
def test_every_object_is_nearer_than_what_it_hides(index: int) -> None:
    scene = generate_scene(CROWDED, seed=2, index=index)
    depth, masks = scene.depth.numpy(), scene.masks.numpy()
    ground = ground_depth(64)
    assert depth.dtype == np.float32 and (depth > 0).all()
    # the ground (distractors included) shows wherever no object does
    background = ~masks.any(axis=0)
    assert np.array_equal(depth[background], ground[background])
    assert (depth[~background] < ground[~background]).all()
    shapes = [_full_shape(obj, 64) for obj in scene.objects]
    for later in range(len(masks)):
        for earlier in range(later):
            if (shapes[earlier] & masks[later]).any():  # `later` hides part of `earlier`
                assert depth[masks[later]].max() < depth[masks[earlier]].min()


def test_crowded_scenes_do_occlude() -> None:
    """The test above compares something: every crowded scene holds occluding pairs."""
    occluding = 0
    for index in range(8):
        scene = generate_scene(CROWDED, seed=2, index=index)
        shapes = [_full_shape(obj, 64) for obj in scene.objects]
        masks = scene.masks.numpy()
        occluding += any((shapes[k] & masks[j]).any() for j in range(len(masks)) for k in range(j))
    assert occluding == 8


def test_objects_gently_bulge_towards_the_camera() -> None:
    scene = generate_scene(ToyWorldConfig(image_size=64), seed=0, index=0, num_objects=1)
    values = scene.depth[scene.masks[0]]
    assert 0 < float(values.max() - values.min()) <= 0.06 * float(values.max())


def test_depth_pngs_read_back_through_depth_folder(tmp_path: Path) -> None:
    config, seed = ToyWorldConfig(image_size=48), 4
    export_coco(tmp_path / "coco", config=config, num_samples=3, seed=seed)
    reader = export_depth(
        tmp_path / "depth", config=config, num_samples=3, seed=seed, images=tmp_path / "coco/images"
    )
    assert reader["type"] == "depth_folder"
    with Image.open(tmp_path / "depth" / "000002.png") as picture:
        assert picture.mode.startswith("I")  # 16-bit greyscale
    plugin = DATASETS.get(reader["type"])
    dataset = plugin.build(plugin.Params(**reader["params"]), resolution=48, resize="pad", seed=0)
    assert len(dataset) == 3
    for index in range(3):
        scene, sample = generate_scene(config, seed=seed, index=index), dataset[index]
        assert sample["key"] == f"{index:06d}"
        assert torch.equal(sample["image"], scene.image)
        # millimetres: within half of one of the PNG's steps
        assert (sample["depth"] - scene.depth).abs().max() <= 0.5 / DEPTH_SCALE + 1e-6


def test_depth_outside_sixteen_bits_is_refused() -> None:
    with pytest.raises(ValueError, match="does not fit"):
        encode_depth_png(torch.full((4, 4), 70.0))
    with pytest.raises(ValueError, match="does not fit"):
        encode_depth_png(torch.zeros(4, 4))


def test_toy_world_samples_carry_the_depth_map() -> None:
    params = ToyWorldDataset.Params(world={"image_size": 64}, num_samples=2)
    dataset = ToyWorldDataset.build(params, resolution=32, resize="crop", seed=3)
    sample, scene = dataset[1], generate_scene(ToyWorldConfig(image_size=64), seed=3, index=1)
    assert sample["depth"].shape == (32, 32) and sample["depth"].dtype == torch.float32
    assert torch.equal(sample["depth"], scene.depth[1::2, 1::2])  # nearest-exact
