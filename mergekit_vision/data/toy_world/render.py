"""Vectorised rasterisation for the toy world: shapes, textures, cluttered backgrounds, depth.

Everything is a test on pixel-centre coordinates (numpy broadcasting), evaluated only inside an
object's bounding window, so no drawing loop runs per pixel. Images here are ``float32 [3, S, S]``
in [0, 1]; depth maps ``float32 [S, S]`` in metres.
"""

from __future__ import annotations

import math
from functools import lru_cache

import numpy as np

# Regular polygons and stars share one test: (points, inner radius / outer radius), where the
# inner vertex sits halfway between two outer ones. A regular n-gon's "inner vertex" is the
# midpoint of its edge, at cos(pi / n) of the circumradius.
_STAR_POLYGONS: dict[str, tuple[int, float]] = {
    "triangle": (3, math.cos(math.pi / 3)),
    "square": (4, math.cos(math.pi / 4)),
    "hexagon": (6, math.cos(math.pi / 6)),
    "star": (5, 0.45),  # fatter than the geometric pentagram (0.38) so it survives downscaling
}
_TEXTURE_SHADE = 0.6  # stripes and dots darken the fill; scaling RGB keeps the hue
_BLOTCH_GRID = 6  # low-frequency background noise: a random 6x6 grid upsampled bilinearly
_MAX_DISTRACTORS = 6  # at clutter 1
# Depth, in metres: the ground plane runs from GROUND_NEAR at the bottom edge to GROUND_FAR at the
# top. An object stands 1 / (1 + NEARNESS * diameter) of the ground's depth under it (a large one
# looks near: 0.68x at diameter 0.12 of the image, 0.42x at 0.35), and at most OBJECT_GAP times
# the nearest depth it covers; its centre bulges up to BULGE nearer than its rim. Every depth stays
# positive: 0 marks a missing depth in depth files.
GROUND_NEAR, GROUND_FAR = 2.0, 8.0
NEARNESS = 4.0
OBJECT_GAP = 0.9
BULGE = 0.05


def window_grid(
    *, size: int, centre: tuple[float, float], radius: float
) -> tuple[tuple[slice, slice], np.ndarray, np.ndarray]:
    """The pixel window around a disc and its pixel-centre offsets from the centre.

    Args:
        size: side ``S`` of the image.
        centre: ``(x, y)`` in pixels.
        radius: the disc's radius in pixels.

    Returns:
        ``(rows, cols)`` slices, ``xs [1, w]`` and ``ys [h, 1]`` offsets in pixels.
    """
    cx, cy = centre
    x0, x1 = max(0, int(cx - radius) - 1), min(size, int(math.ceil(cx + radius)) + 1)
    y0, y1 = max(0, int(cy - radius) - 1), min(size, int(math.ceil(cy + radius)) + 1)
    xs = (np.arange(x0, x1, dtype=np.float32) + 0.5 - cx)[None, :]
    ys = (np.arange(y0, y1, dtype=np.float32) + 0.5 - cy)[:, None]
    return (slice(y0, y1), slice(x0, x1)), xs, ys


def rasterise_shape(
    shape: str, *, xs: np.ndarray, ys: np.ndarray, radius: float, rotation: float
) -> np.ndarray:
    """``bool [h, w]`` inside-test of a shape centred at the origin.

    Args:
        shape: circle, square, triangle, star, hexagon or cross.
        xs: ``[1, w]`` pixel-centre x offsets; ys: ``[h, 1]`` y offsets.
        radius: circumradius in pixels (the shape fits the disc of this radius).
        rotation: radians, counter-clockwise in image coordinates.
    """
    if shape == "circle":
        return xs * xs + ys * ys <= radius * radius
    cos, sin = math.cos(rotation), math.sin(rotation)
    u, v = xs * cos + ys * sin, ys * cos - xs * sin  # rotate the grid, not the shape
    if shape == "cross":
        arm = radius * math.sqrt(0.5)  # arm tips touch the circumscribed circle
        width = 0.35 * arm
        return ((np.abs(u) <= arm) & (np.abs(v) <= width)) | (
            (np.abs(v) <= arm) & (np.abs(u) <= width)
        )
    if shape not in _STAR_POLYGONS:
        raise ValueError(
            f"unknown shape {shape!r}; known: circle, cross, {', '.join(_STAR_POLYGONS)}"
        )
    points, inner = _STAR_POLYGONS[shape]
    return _star_polygon(u, v, points=points, radius=radius, inner=inner * radius)


def _star_polygon(u: np.ndarray, v: np.ndarray, *, points: int, radius: float, inner: float):
    """Inside-test of a star polygon with an outer vertex on the +u axis.

    By symmetry, fold every angle into ``[0, pi / points]``; there the boundary is one edge, from
    the outer vertex ``(radius, 0)`` to the inner vertex at angle ``pi / points``, and a point is
    inside when it lies on the origin's side of that edge (a half-plane test).
    """
    half = math.pi / points
    angle = np.mod(np.arctan2(v, u), 2 * half)
    angle = np.minimum(angle, 2 * half - angle)
    rho = np.sqrt(u * u + v * v)
    pu, pv = rho * np.cos(angle), rho * np.sin(angle)
    eu, ev = inner * math.cos(half) - radius, inner * math.sin(half)  # edge direction
    return eu * pv - ev * (pu - radius) >= 0


def texture_shade(
    texture: str, *, shape: tuple[int, int], radius: float, rng: np.random.Generator
) -> np.ndarray:
    """``float32 [h, w]`` brightness factor of an object's fill: 1, or darker stripes or dots.

    Args:
        texture: solid, stripes or dots.
        shape: ``(h, w)`` of the object's window.
        radius: the object's radius in pixels; the pattern period scales with it.
        rng: draws the pattern's direction, period and phase.
    """
    if texture == "solid":
        return np.ones(shape, dtype=np.float32)
    angle = rng.uniform(0, math.pi)
    period = max(3.0, radius * rng.uniform(0.45, 0.7))
    phase = rng.uniform(0, 1, size=2)
    xs = np.arange(shape[1], dtype=np.float32)[None, :]
    ys = np.arange(shape[0], dtype=np.float32)[:, None]
    u = (xs * math.cos(angle) + ys * math.sin(angle)) / period + phase[0]
    if texture == "stripes":
        dark = np.mod(u, 1.0) < 0.5
    elif texture == "dots":
        v = (ys * math.cos(angle) - xs * math.sin(angle)) / period + phase[1]
        du, dv = np.mod(u, 1.0) - 0.5, np.mod(v, 1.0) - 0.5
        dark = du * du + dv * dv < 0.09
    else:
        raise ValueError(f"unknown texture {texture!r}; known: solid, stripes, dots")
    return np.where(dark, np.float32(_TEXTURE_SHADE), np.float32(1.0))


def paint_background(*, size: int, clutter: float, rng: np.random.Generator) -> np.ndarray:
    """A low-saturation background, ``float32 [3, S, S]``; busier as ``clutter`` goes 0 -> 1.

    At 0 it is one flat neutral colour. Clutter adds a gradient towards a second neutral colour,
    low-frequency blotches, and up to ``6 * clutter`` distractors: grey or brown blobs and thin
    lines. Distractors are drawn under the objects and belong to no class.
    """
    base = _neutral(rng)
    canvas = np.empty((3, size, size), dtype=np.float32)
    canvas[:] = base[:, None, None]
    if clutter <= 0:
        return canvas
    angle = rng.uniform(0, 2 * math.pi)
    coords = (np.arange(size, dtype=np.float32) + 0.5) / size
    ramp = coords[None, :] * math.cos(angle) + coords[:, None] * math.sin(angle)
    ramp = (ramp - ramp.min()) / max(float(ramp.max() - ramp.min()), 1e-6)
    canvas += (clutter * ramp)[None] * (_neutral(rng) - base)[:, None, None]
    weights = _bilinear_weights(size, _BLOTCH_GRID)
    grid = rng.uniform(-1, 1, size=(3, _BLOTCH_GRID, _BLOTCH_GRID)).astype(np.float32)
    blotches = weights @ grid @ weights.T  # [3, S, S]: separable bilinear upsampling
    canvas += (0.15 * clutter) * blotches
    count = int(rng.integers(0, round(_MAX_DISTRACTORS * clutter) + 1))
    for _ in range(count):
        _paint_distractor(canvas, rng)
    return canvas


def _neutral(rng: np.random.Generator) -> np.ndarray:
    """A grey, slightly warm or cool: far in saturation from every class colour."""
    grey = rng.uniform(0.3, 0.75)
    tint = rng.uniform(-0.06, 0.06)
    return np.array([grey + tint, grey, grey - tint], dtype=np.float32)


def _paint_distractor(canvas: np.ndarray, rng: np.random.Generator) -> None:
    """A grey/brown rotated ellipse or a thin line segment, in place."""
    size = canvas.shape[-1]
    colour = _neutral(rng) if rng.uniform() < 0.5 else _brown(rng)
    cx, cy = rng.uniform(0, size, size=2)
    angle = rng.uniform(0, math.pi)
    if rng.uniform() < 0.5:
        axes = rng.uniform(0.02, 0.08, size=2) * size
        window, xs, ys = window_grid(size=size, centre=(cx, cy), radius=float(axes.max()))
        u = xs * math.cos(angle) + ys * math.sin(angle)
        v = ys * math.cos(angle) - xs * math.sin(angle)
        inside = (u / axes[0]) ** 2 + (v / axes[1]) ** 2 <= 1
    else:
        half_length = rng.uniform(0.1, 0.3) * size
        window, xs, ys = window_grid(size=size, centre=(cx, cy), radius=half_length)
        along = xs * math.cos(angle) + ys * math.sin(angle)
        across = ys * math.cos(angle) - xs * math.sin(angle)
        inside = (np.abs(along) <= half_length) & (np.abs(across) <= rng.uniform(0.5, 1.0))
    canvas[:, window[0], window[1]][:, inside] = colour[:, None]


def _brown(rng: np.random.Generator) -> np.ndarray:
    shade = rng.uniform(0.6, 1.2)
    return np.clip(np.array([0.45, 0.32, 0.2], dtype=np.float32) * shade, 0, 1)


@lru_cache(maxsize=16)
def ground_depth(size: int) -> np.ndarray:
    """``float32 [S, S]`` depth of the ground plane, read-only: constant along a row, growing
    towards the top of the image. Inverse depth is affine in the row, as for a pinhole camera
    looking down at a plane (the horizon lies above the image)."""
    rows = (np.arange(size, dtype=np.float64) + 0.5) / size  # 0 at the top, 1 at the bottom
    disparity = 1 / GROUND_FAR + (1 / GROUND_NEAR - 1 / GROUND_FAR) * rows
    depth = np.repeat((1 / disparity).astype(np.float32)[:, None], size, axis=1)
    depth.setflags(write=False)
    return depth


def object_depth(
    covered: np.ndarray,
    *,
    window: tuple[slice, slice],
    mask: np.ndarray,
    centre: tuple[float, float],
    radius: float,
    side: int,
) -> np.ndarray:
    """``float32 [n]`` depths of an object's ``n`` pixels, nearer than everything they cover.

    The object stands at ``1 / (1 + NEARNESS * diameter)`` (diameter as a fraction of the image
    side) of the ground's depth at its lowest pixel: apparent size is the cue to nearness, as in
    perspective. It stands at most ``OBJECT_GAP`` times the nearest depth under its whole shape,
    so it is nearer than all it hides (ground or earlier objects), whatever is drawn later. Its
    face bulges gently towards the camera, ``BULGE`` nearer at the centre.

    Args:
        covered: ``float32 [h, w]`` the depth in the object's window before it is drawn.
        window: the window's ``(rows, cols)`` slices in the image.
        mask: ``bool [h, w]`` the object's shape in the window.
        centre: ``(x, y)`` in pixels; radius: its circumradius in pixels.
        side: the image's side ``S``.
    """
    ground = float(ground_depth(side)[window][mask].min())
    diameter = 2 * radius / side
    stand = min(ground / (1 + NEARNESS * diameter), OBJECT_GAP * float(covered[mask].min()))
    ys = np.arange(window[0].start, window[0].stop, dtype=np.float32) + 0.5 - centre[1]
    xs = np.arange(window[1].start, window[1].stop, dtype=np.float32) + 0.5 - centre[0]
    reach = np.minimum((xs[None, :] ** 2 + ys[:, None] ** 2) / radius**2, 1.0)
    return (stand * (1 - BULGE * (1 - reach[mask]))).astype(np.float32)


@lru_cache(maxsize=16)
def _bilinear_weights(size: int, grid: int) -> np.ndarray:
    """``float32 [size, grid]``: row ``i`` interpolates pixel ``i`` from ``grid`` knots."""
    position = (np.arange(size) + 0.5) / size * (grid - 1)
    low = np.minimum(np.floor(position).astype(int), grid - 2)
    frac = (position - low).astype(np.float32)
    weights = np.zeros((size, grid), dtype=np.float32)
    weights[np.arange(size), low] = 1 - frac
    weights[np.arange(size), low + 1] = frac
    weights.setflags(write=False)
    return weights
