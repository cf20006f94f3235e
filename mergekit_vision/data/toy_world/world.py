"""The toy world: a deterministic generator of scenes of coloured shapes with instance masks.

It lets a SAM + CLIP merge run end to end on a laptop CPU without downloading anything: tiny real
SAM and CLIP teachers are trained on these scenes, then merged. A class is a (colour, shape) pair,
e.g. ``"red circle"``; texture, rotation, position, size, occlusion and background clutter are
nuisance factors that never change the class. Each scene comes with what both teachers need: a
caption ("a red circle above a blue star") for CLIP, the visible instance masks for SAM, and a
depth map (a ground plane, each object nearer than what it hides) for a depth model.

Scene ``index`` of ``seed`` is a pure function of ``(config, seed, index)``: every random draw comes
from a numpy ``Generator`` seeded from the pair, never from a global random state. Shapes are
rasterised with vectorised tests on pixel-centre grids inside each object's bounding window, so a
128 px scene takes about 2 ms. See ``docs/toy-world.md``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from pydantic import Field, field_validator, model_validator
from torch import Tensor

from mergekit_vision.data.toy_world.render import (
    ground_depth,
    object_depth,
    paint_background,
    rasterise_shape,
    texture_shade,
    window_grid,
)
from mergekit_vision.registry import PluginParams

ShapeName = Literal["circle", "square", "triangle", "star", "hexagon", "cross"]
TextureName = Literal["solid", "stripes", "dots"]
Colour = tuple[str, tuple[int, int, int]]

# Hues far apart in RGB, none told apart from all others by one channel alone (red, yellow and
# magenta share a high red channel; green and cyan a high green one).
DEFAULT_COLOURS: tuple[Colour, ...] = (
    ("red", (220, 50, 47)),
    ("green", (60, 180, 75)),
    ("blue", (50, 90, 220)),
    ("yellow", (235, 205, 40)),
    ("magenta", (205, 55, 190)),
    ("cyan", (40, 195, 205)),
)
_PLACEMENT_ATTEMPTS = 30
_MIN_DIAMETER_PX = 5  # the thinnest shapes (cross, star) then always cover a pixel centre


class ToyWorldConfig(PluginParams):
    """What the world contains and how hard it is; every field is a difficulty knob.

    Args:
        image_size: side ``S`` in pixels of the square scenes.
        colours: ``(name, (r, g, b))`` pairs, the colour half of the class vocabulary.
        colour_jitter: per-object uniform jitter of each RGB channel, as a fraction of 255; larger
            values blur the boundaries between colour classes.
        shapes: the shape half of the vocabulary (from circle, square, triangle, star, hexagon,
            cross); ``len(colours) * len(shapes)`` classes in all.
        textures: fills an object may have (solid, stripes, dots); a nuisance, never the class.
        min_objects: fewest objects per scene.
        max_objects: most objects per scene (a crowded scene may place fewer, see
            :func:`generate_scene`).
        min_size: smallest object diameter (of its circumscribed circle), fraction of ``S``.
        max_size: largest object diameter, fraction of ``S``.
        centric_size: ``(min, max)`` diameter of the one object of an object-centric scene
            (``generate_scene(..., object_centric=True)``: the classification images and the
            single-object photos CLIP learns from), as a photo of one thing fills the frame.
        max_overlap: the largest fraction of an object that later objects may hide.
        clutter: 0..1, how busy the background is: the strength of its colour gradient and
            low-frequency blotches, and the number of distractors (grey or brown blobs and thin
            lines that belong to no class and count as background).
        noise: standard deviation of per-pixel, per-channel noise (uniformly distributed), in
            [0, 1] intensity units.
    """

    image_size: int = Field(default=128, ge=16)
    colours: tuple[Colour, ...] = DEFAULT_COLOURS
    colour_jitter: float = Field(default=0.08, ge=0.0, le=0.5)
    shapes: tuple[ShapeName, ...] = ("circle", "square", "triangle", "star")
    textures: tuple[TextureName, ...] = ("solid", "stripes", "dots")
    min_objects: int = Field(default=1, ge=1)
    max_objects: int = Field(default=4, ge=1)
    min_size: float = Field(default=0.12, gt=0.0, le=1.0)
    max_size: float = Field(default=0.35, gt=0.0, le=1.0)
    centric_size: tuple[float, float] = (0.35, 0.6)
    max_overlap: float = Field(default=0.3, ge=0.0, le=0.9)
    clutter: float = Field(default=0.5, ge=0.0, le=1.0)
    noise: float = Field(default=0.03, ge=0.0, le=0.5)

    @field_validator("colours", "shapes", "textures")
    @classmethod
    def _unique_and_non_empty(cls, value: tuple) -> tuple:
        names = [v[0] if isinstance(v, tuple) else v for v in value]
        if not names:
            raise ValueError("needs at least one entry")
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {names}")
        return value

    @field_validator("colours")
    @classmethod
    def _rgb_in_range(cls, value: tuple[Colour, ...]) -> tuple[Colour, ...]:
        for name, rgb in value:
            if not all(0 <= c <= 255 for c in rgb):
                raise ValueError(f"colour {name!r} has channels outside 0..255: {rgb}")
        return value

    @model_validator(mode="after")
    def _ranges_ordered(self) -> ToyWorldConfig:
        if self.min_objects > self.max_objects:
            raise ValueError(f"min_objects {self.min_objects} > max_objects {self.max_objects}")
        if not 0 < self.centric_size[0] <= self.centric_size[1] <= 1:
            raise ValueError(f"centric_size must be 0 < min <= max <= 1, got {self.centric_size}")
        if self.min_size > self.max_size:
            raise ValueError(f"min_size {self.min_size} > max_size {self.max_size}")
        if self.min_size * self.image_size < _MIN_DIAMETER_PX:
            # Smaller shapes can miss every pixel centre; this keeps every scene non-empty.
            raise ValueError(
                f"min_size {self.min_size} x image_size {self.image_size} is under "
                f"{_MIN_DIAMETER_PX} px; raise min_size to at least "
                f"{_MIN_DIAMETER_PX / self.image_size:.3f}"
            )
        return self

    @property
    def num_classes(self) -> int:
        return len(self.colours) * len(self.shapes)


@dataclass(frozen=True)
class ToyObject:
    """One object of a scene. ``centre`` is ``(x, y)`` and ``size`` its diameter, as fractions of
    the image side; ``rotation`` is in radians."""

    class_id: int
    colour: str
    shape: str
    texture: str
    centre: tuple[float, float]
    size: float
    rotation: float

    @property
    def name(self) -> str:
        return f"{self.colour} {self.shape}"


@dataclass(frozen=True)
class Scene:
    """A generated scene; objects are listed back to front (the order they were drawn).

    Args:
        image: ``uint8 [3, S, S]`` RGB.
        masks: ``bool [M, S, S]`` visible part of each object, after occlusion by later objects.
        classes: ``int64 [M]`` class index of each object (see :func:`class_names`).
        boxes: ``float32 [M, 4]`` pixel ``(x0, y0, x1, y1)`` of each visible mask, ``x1``/``y1``
            exclusive.
        semantic: ``int64 [S, S]`` label map, 0 background and ``k + 1`` for class ``k``.
        caption: e.g. ``"a red circle above a blue star and a green square"``.
        label: the class of the object with the largest visible area.
        objects: the attributes of each object.
        depth: ``float32 [S, S]`` depth in metres: the ground plane (2 m at the bottom edge,
            8 m at the top); each object nearer the larger it looks, and always nearer than
            everything it covers (:func:`~.render.object_depth`): drawing order is depth order.
    """

    image: Tensor
    masks: Tensor
    classes: Tensor
    boxes: Tensor
    semantic: Tensor
    caption: str
    label: int
    objects: tuple[ToyObject, ...]
    depth: Tensor


def class_names(config: ToyWorldConfig) -> list[str]:
    """``"colour shape"`` names; class ``colour_idx * len(shapes) + shape_idx``."""
    return [f"{colour} {shape}" for colour, _ in config.colours for shape in config.shapes]


def caption_templates() -> list[str]:
    """Prompt templates for zero-shot classification, in the style of CLIP's (Radford et al.
    2021); ``template.format(class_name)`` gives one prompt, embeddings average over templates."""
    return [
        "a {}.",
        "a photo of a {}.",
        "a drawing of a {}.",
        "a picture of a {}.",
        "a {} on a cluttered background.",
        "a small {}.",
        "a large {}.",
        "a rendering of a {}.",
    ]


def generate_scene(
    config: ToyWorldConfig,
    *,
    seed: int,
    index: int,
    num_objects: int | None = None,
    classes: list[int] | None = None,
    object_centric: bool = False,
) -> Scene:
    """Scene ``index`` of the world ``seed``, identical on every call and machine.

    Objects are placed one at a time, back to front; a placement that would hide more than
    ``max_overlap`` of an earlier object is redrawn, and after 30 failed draws the object is left
    out, so a crowded scene (large objects, small ``max_overlap``) may hold fewer than asked. The
    first object always fits, so every scene holds at least one.

    Args:
        config: the world.
        seed: the world's seed (non-negative).
        index: the scene's index (non-negative).
        num_objects: a fixed object count instead of a random one in
            ``[min_objects, max_objects]``, e.g. 1 for classification.
        classes: the class of each object, back to front (fixes the count too); used to write
            a balanced classification set.
        object_centric: draw object sizes from ``centric_size`` instead of ``min_size..max_size``
            (meant for one-object scenes: classification images).
    """
    rng = np.random.default_rng([seed, index])
    class_ids = _choose_classes(config, rng=rng, num_objects=num_objects, classes=classes)
    size = config.image_size
    canvas = _Canvas(
        pixels=paint_background(size=size, clutter=config.clutter, rng=rng),
        semantic=np.zeros((size, size), dtype=np.int64),
        visible=np.zeros((len(class_ids), size, size), dtype=bool),
        areas=np.zeros(len(class_ids), dtype=np.int64),
        depth=ground_depth(size).copy(),
    )
    for class_id in class_ids:
        placed = _place(config, class_id=class_id, rng=rng, canvas=canvas, centric=object_centric)
        if placed is None:
            continue
        obj, window, mask = placed
        colour = _jittered_colour(config, obj.colour, rng)
        shade = texture_shade(obj.texture, shape=mask.shape, radius=obj.size * size / 2, rng=rng)
        canvas.paint(obj, window=window, mask=mask, fill=colour[:, None] * shade[mask])
    return canvas.to_scene(noise=config.noise, rng=rng)


def _choose_classes(
    config: ToyWorldConfig,
    *,
    rng: np.random.Generator,
    num_objects: int | None,
    classes: list[int] | None,
) -> list[int]:
    if classes is not None:
        if not all(0 <= c < config.num_classes for c in classes):
            raise ValueError(f"classes {classes} outside [0, {config.num_classes})")
        return list(classes)
    count = num_objects or int(rng.integers(config.min_objects, config.max_objects + 1))
    return rng.integers(config.num_classes, size=count).tolist()


@dataclass
class _Canvas:
    """A scene being painted back to front.

    Args:
        pixels: ``float32 [3, S, S]`` in [0, 1].
        semantic: ``int64 [S, S]`` label map so far.
        visible: ``bool [N, S, S]``, room for every object asked for; the first
            ``len(objects)`` hold the visible part of each object painted so far.
        areas: ``int64 [N]`` pixel count of each visible part.
        depth: ``float32 [S, S]`` depth map so far, in metres.
    """

    pixels: np.ndarray
    semantic: np.ndarray
    visible: np.ndarray
    areas: np.ndarray
    depth: np.ndarray
    objects: list[ToyObject] = field(default_factory=list)

    def paint(
        self, obj: ToyObject, *, window: tuple[slice, slice], mask: np.ndarray, fill: np.ndarray
    ) -> None:
        """Paint ``obj`` on top: ``mask`` ``bool [h, w]`` in ``window``, ``fill`` ``[3, n]``
        the colours of its ``n`` pixels."""
        rows, cols = window
        # Basic slicing gives views, so the masked assignments write into the full arrays.
        self.pixels[:, rows, cols][:, mask] = fill
        self.semantic[rows, cols][mask] = obj.class_id + 1
        size = self.depth.shape[-1]
        self.depth[rows, cols][mask] = object_depth(
            self.depth[rows, cols],
            window=window,
            mask=mask,
            centre=(obj.centre[0] * size, obj.centre[1] * size),
            radius=obj.size * size / 2,
            side=size,
        )
        m = len(self.objects)
        self.areas[:m] -= (self.visible[:m, rows, cols] & mask).sum(axis=(1, 2))
        self.visible[:m, rows, cols] &= ~mask
        self.visible[m, rows, cols] = mask
        self.areas[m] = int(mask.sum())
        self.objects.append(obj)

    def to_scene(self, *, noise: float, rng: np.random.Generator) -> Scene:
        """The finished scene, with zero-mean pixel noise of standard deviation ``noise``."""
        m = len(self.objects)
        pixels = self.pixels
        if noise > 0:
            # Uniform rather than Gaussian: three times cheaper to draw, as good a nuisance.
            uniform = rng.random(pixels.shape, dtype=np.float32)
            uniform -= 0.5
            uniform *= np.float32(noise * math.sqrt(12))
            pixels += uniform
        pixels *= 255
        pixels += 0.5  # round to nearest on the cast below
        image = np.clip(pixels, 0, 255, out=pixels).astype(np.uint8)
        visible, areas = self.visible[:m], self.areas[:m]
        boxes = np.zeros((m, 4), dtype=np.float32)
        for k, mask in enumerate(visible):
            ys, xs = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
            boxes[k] = (xs[0], ys[0], xs[-1] + 1, ys[-1] + 1)
        return Scene(
            image=torch.from_numpy(image),
            masks=torch.from_numpy(np.ascontiguousarray(visible)),
            classes=torch.tensor([o.class_id for o in self.objects], dtype=torch.int64),
            boxes=torch.from_numpy(boxes),
            semantic=torch.from_numpy(self.semantic),
            caption=describe(self.objects),
            label=self.objects[int(np.argmax(areas))].class_id if m else -1,
            objects=tuple(self.objects),
            depth=torch.from_numpy(self.depth),
        )


def _place(
    config: ToyWorldConfig,
    *,
    class_id: int,
    rng: np.random.Generator,
    canvas: _Canvas,
    centric: bool = False,
) -> tuple[ToyObject, tuple[slice, slice], np.ndarray] | None:
    """Draw an object of ``class_id`` that leaves earlier objects visible enough, or None.

    Returns the object, its bounding window ``(rows, cols)`` and its ``bool`` mask in the window.
    """
    size, placed = config.image_size, len(canvas.objects)
    visible, areas = canvas.visible[:placed], canvas.areas[:placed]
    colour, _ = config.colours[class_id // len(config.shapes)]
    shape = config.shapes[class_id % len(config.shapes)]
    texture = config.textures[int(rng.integers(len(config.textures)))]
    for _ in range(_PLACEMENT_ATTEMPTS):
        low, high = config.centric_size if centric else (config.min_size, config.max_size)
        diameter = float(rng.uniform(low, high))
        radius = diameter * size / 2
        # The whole circumscribed circle stays in the image: no shape is cut by the border.
        cx, cy = rng.uniform(radius, size - radius, size=2)
        rotation = float(rng.uniform(0, 2 * math.pi))
        window, xs, ys = window_grid(size=size, centre=(cx, cy), radius=radius)
        mask = rasterise_shape(shape, xs=xs, ys=ys, radius=radius, rotation=rotation)
        if not mask.any():
            continue
        hidden = (visible[:, window[0], window[1]] & mask).sum(axis=(1, 2))
        if np.all(areas - hidden >= (1 - config.max_overlap) * areas):
            obj = ToyObject(
                class_id=class_id,
                colour=colour,
                shape=shape,
                texture=texture,
                centre=(float(cx) / size, float(cy) / size),
                size=diameter,
                rotation=rotation,
            )
            return obj, window, mask
    return None


def _jittered_colour(config: ToyWorldConfig, name: str, rng: np.random.Generator) -> np.ndarray:
    rgb = np.asarray(dict(config.colours)[name], dtype=np.float32) / 255
    jitter = rng.uniform(-config.colour_jitter, config.colour_jitter, size=3)
    return np.clip(rgb + jitter, 0, 1).astype(np.float32)


def describe(objects: list[ToyObject] | tuple[ToyObject, ...]) -> str:
    """A caption naming every object once: consecutive pairs joined by their spatial relation.

    ``[A, B, C]`` -> ``"a red circle left of a blue star and a green square"``.
    """
    phrases = []
    for i in range(0, len(objects), 2):
        first = f"a {objects[i].name}"
        if i + 1 < len(objects):
            second = objects[i + 1]
            first = f"{first} {spatial_relation(objects[i], second)} a {second.name}"
        phrases.append(first)
    return " and ".join(phrases)


def spatial_relation(a: ToyObject, b: ToyObject) -> str:
    """Where ``a`` is relative to ``b``, along the axis on which their centres differ most."""
    dx, dy = a.centre[0] - b.centre[0], a.centre[1] - b.centre[1]
    if abs(dx) >= abs(dy):
        return "left of" if dx < 0 else "right of"
    return "above" if dy < 0 else "below"
