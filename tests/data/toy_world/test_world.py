"""The toy-world scene generator."""

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from mergekit_vision.data.toy_world.render import rasterise_shape, window_grid
from mergekit_vision.data.toy_world.world import (
    ToyObject,
    ToyWorldConfig,
    caption_templates,
    class_names,
    describe,
    generate_scene,
    spatial_relation,
)

SMALL = ToyWorldConfig(image_size=64)


def test_same_seed_and_index_give_the_same_scene() -> None:
    a = generate_scene(SMALL, seed=3, index=7)
    b = generate_scene(SMALL, seed=3, index=7)
    assert torch.equal(a.image, b.image) and torch.equal(a.masks, b.masks)
    assert torch.equal(a.semantic, b.semantic) and a.caption == b.caption
    assert a.objects == b.objects
    for other in (generate_scene(SMALL, seed=3, index=8), generate_scene(SMALL, seed=4, index=7)):
        assert not torch.equal(a.image, other.image)


def test_global_random_state_is_untouched() -> None:
    torch.manual_seed(0)
    np.random.seed(0)
    expected = (torch.rand(1), np.random.rand())
    torch.manual_seed(0)
    np.random.seed(0)
    generate_scene(SMALL, seed=0, index=0)
    assert (torch.rand(1), np.random.rand()) == expected


@pytest.mark.parametrize("index", range(12))
def test_masks_labels_and_boxes_agree(index: int) -> None:
    scene = generate_scene(SMALL, seed=1, index=index)
    m = len(scene.objects)
    assert SMALL.min_objects <= m <= SMALL.max_objects
    assert scene.image.shape == (3, 64, 64) and scene.image.dtype == torch.uint8
    assert scene.masks.shape == (m, 64, 64) and scene.masks.dtype == torch.bool
    assert scene.semantic.dtype == torch.int64 and scene.classes.dtype == torch.int64
    assert scene.masks.flatten(1).any(dim=1).all()  # every object stays visible
    assert scene.masks.sum(dim=0).max() <= 1  # disjoint
    # Distractor blobs are background: labelled pixels are exactly the objects' pixels.
    assert torch.equal(scene.masks.any(dim=0), scene.semantic > 0)
    for mask, class_id, box in zip(scene.masks, scene.classes, scene.boxes, strict=True):
        assert (scene.semantic[mask] == class_id + 1).all()
        ys, xs = torch.nonzero(mask, as_tuple=True)
        assert box.tolist() == [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
    areas = scene.masks.flatten(1).sum(dim=1)
    assert scene.label == int(scene.classes[areas.argmax()])
    assert [o.class_id for o in scene.objects] == scene.classes.tolist()


@pytest.mark.parametrize("index", range(8))
def test_occlusion_stays_within_max_overlap(index: int) -> None:
    config = ToyWorldConfig(image_size=64, min_objects=4, max_objects=4, max_overlap=0.25)
    scene = generate_scene(config, seed=2, index=index)
    for obj, visible in zip(scene.objects, scene.masks, strict=True):
        radius = obj.size * 64 / 2
        centre = (obj.centre[0] * 64, obj.centre[1] * 64)
        window, xs, ys = window_grid(size=64, centre=centre, radius=radius)
        full = np.zeros((64, 64), dtype=bool)
        full[window] = rasterise_shape(
            obj.shape, xs=xs, ys=ys, radius=radius, rotation=obj.rotation
        )
        assert not (visible.numpy() & ~full).any()  # attributes describe the drawn object
        assert visible.sum() >= 0.75 * full.sum()


def test_captions_name_every_object() -> None:
    for index in range(20):
        scene = generate_scene(SMALL, seed=5, index=index)
        names = [f"{o.colour} {o.shape}" for o in scene.objects]
        assert scene.caption.startswith(f"a {names[0]}")
        assert scene.caption.count(" a ") + 1 == len(names)  # each object is named once
        for name in names:
            assert f"a {name}" in scene.caption
        assert scene.caption.count(" and ") == (len(names) - 1) // 2


def _object(name: str, x: float, y: float) -> ToyObject:
    colour, shape = name.split(" ")
    return ToyObject(
        class_id=0,
        colour=colour,
        shape=shape,
        texture="solid",
        centre=(x, y),
        size=0.2,
        rotation=0.0,
    )


def test_caption_pairs_consecutive_objects_by_position() -> None:
    a = _object("red circle", 0.2, 0.5)
    b = _object("blue star", 0.3, 0.9)
    c = _object("green square", 0.9, 0.5)
    assert spatial_relation(a, b) == "above" and spatial_relation(b, a) == "below"
    assert spatial_relation(a, c) == "left of" and spatial_relation(c, a) == "right of"
    assert describe([a]) == "a red circle"
    assert describe([a, b, c]) == "a red circle above a blue star and a green square"
    assert describe([a, b, c, a]) == (
        "a red circle above a blue star and a green square right of a red circle"
    )


def test_class_vocabulary_and_forced_classes() -> None:
    names = class_names(SMALL)
    assert len(names) == SMALL.num_classes == 24
    assert names[0] == "red circle" and names[1] == "red square" and names[4] == "green circle"
    scene = generate_scene(SMALL, seed=0, index=0, classes=[5, 17])
    assert scene.classes.tolist() == [5, 17]
    assert [o.name for o in scene.objects] == [names[5], names[17]]
    assert len(generate_scene(SMALL, seed=0, index=1, num_objects=1).objects) == 1
    with pytest.raises(ValueError, match="outside"):
        generate_scene(SMALL, seed=0, index=0, classes=[24])


def test_templates_format_a_class_name() -> None:
    templates = caption_templates()
    assert 6 <= len(templates) <= 10
    assert all(t.format("red circle").count("red circle") == 1 for t in templates)


def test_textures_and_clutter_are_not_part_of_the_class() -> None:
    plain = ToyWorldConfig(image_size=64, clutter=0.0, noise=0.0, textures=("solid",))
    scene = generate_scene(plain, seed=0, index=3)
    background = scene.image[:, ~scene.masks.any(dim=0)]
    assert (background == background[:, :1]).all()  # flat background without clutter
    for mask in scene.masks:  # a solid object is one colour
        pixels = scene.image[:, mask]
        assert (pixels == pixels[:, :1]).all()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"min_objects": 3, "max_objects": 2}, "min_objects"),
        ({"min_size": 0.5, "max_size": 0.2}, "min_size"),
        ({"shapes": ("circle", "circle")}, "unique"),
        ({"shapes": ("blob",)}, "shapes"),
        ({"colours": (("red", (300, 0, 0)),)}, "0..255"),
        ({"textures": ()}, "at least one"),
        ({"clutter": 1.5}, "clutter"),
        ({"image_size": 32, "min_size": 0.1}, "under 5 px"),
    ],
)
def test_config_rejects_bad_values(fields: dict, message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        ToyWorldConfig(**fields)


@pytest.mark.parametrize("shape", ["circle", "square", "triangle", "star", "hexagon", "cross"])
def test_the_smallest_allowed_objects_always_cover_a_pixel(shape: str) -> None:
    rng = np.random.default_rng(0)
    for _ in range(300):  # a 5 px diameter anywhere, at any rotation
        centre = tuple(rng.uniform(10, 11, size=2))
        _, xs, ys = window_grid(size=20, centre=centre, radius=2.5)
        rotation = rng.uniform(0, 2 * math.pi)
        assert rasterise_shape(shape, xs=xs, ys=ys, radius=2.5, rotation=rotation).any()


def test_star_and_polygons_have_the_expected_area() -> None:
    radius = 40.0
    _, xs, ys = window_grid(size=100, centre=(50.0, 50.0), radius=radius)
    area = {
        shape: rasterise_shape(shape, xs=xs, ys=ys, radius=radius, rotation=0.3).sum()
        for shape in ("circle", "square", "triangle", "hexagon", "star")
    }
    expected = {
        "circle": math.pi * radius**2,
        "square": 2 * radius**2,
        "triangle": 3 * math.sqrt(3) / 4 * radius**2,
        "hexagon": 3 * math.sqrt(3) / 2 * radius**2,
        # 10 triangles (origin, outer vertex, inner vertex at 0.45 R, 36 degrees apart)
        "star": 10 * 0.5 * radius * 0.45 * radius * math.sin(math.pi / 5),
    }
    for shape, value in expected.items():
        assert area[shape] == pytest.approx(value, rel=0.03), shape


def test_object_centric_scenes_draw_sizes_from_centric_size():
    config = ToyWorldConfig(centric_size=(0.5, 0.55))
    for index in range(10):
        (obj,) = generate_scene(
            config, seed=3, index=index, classes=[0], object_centric=True
        ).objects
        assert 0.5 <= obj.size <= 0.55
        (small,) = generate_scene(config, seed=3, index=index, classes=[0]).objects
        assert config.min_size <= small.size <= config.max_size
