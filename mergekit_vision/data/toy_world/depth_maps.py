"""Toy-world depth maps as files: 16-bit PNGs in millimetres, the layout ``depth_folder`` reads.

``<out_dir>/<key>.png`` holds scene ``key``'s :attr:`~.world.Scene.depth` as
``round(depth * 1000)`` (millimetres, NYU Depth v2's convention; the toy depths, 1-8 m, fit 16
bits with room to spare, and no pixel is 0, which marks a missing depth). The maps pair by key
with the same scenes' RGB images of the other exports (``coco/images/<key>.png`` of the same seed
and count), so the ``depth_folder`` plugin reads them as ``{images: <split>/coco/images, depth:
<split>/depth}`` and no image is written twice.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from torch import Tensor

from mergekit_vision.data.toy_world.world import Scene, ToyWorldConfig, generate_scene

DEPTH_SCALE = 1000.0  # PNG value per metre: millimetres
_MAX_VALUE = 65535


def encode_depth_png(depth: Tensor, *, scale: float = DEPTH_SCALE) -> bytes:
    """``float32 [H, W]`` depth in metres -> 16-bit greyscale PNG bytes of ``depth * scale``.

    Raises:
        ValueError: a depth rounds to 0 (the files' "no measurement") or past 16 bits.
    """
    values = np.rint(depth.numpy().astype(np.float64) * scale)
    if values.min() < 1 or values.max() > _MAX_VALUE:
        raise ValueError(
            f"depth {float(depth.min()):.4g}..{float(depth.max()):.4g} m at {scale:g} per metre "
            f"does not fit 1..{_MAX_VALUE}; choose another scale"
        )
    buffer = io.BytesIO()
    Image.fromarray(values.astype(np.uint16)).save(buffer, format="PNG", compress_level=1)
    return buffer.getvalue()


class DepthWriter:
    """A writer of the toy exports (:mod:`.export`): one depth PNG per scene, under ``root``.

    Args:
        root: the folder of the depth maps.
        images: the folder of the same scenes' RGB images, named in the reader params.
    """

    def __init__(self, root: Path, *, images: Path):
        self.root, self.images = root, images
        root.mkdir(parents=True, exist_ok=True)

    def add(self, key: str, scene: Scene, png: bytes) -> None:
        (self.root / f"{key}.png").write_bytes(encode_depth_png(scene.depth))

    def close(self) -> dict[str, Any]:
        params = {"images": str(self.images), "depth": str(self.root), "depth_scale": DEPTH_SCALE}
        return {"type": "depth_folder", "params": params}


def export_depth(
    out_dir: Path, *, config: ToyWorldConfig, num_samples: int, seed: int, images: Path
) -> dict[str, Any]:
    """Depth maps of scenes ``0..num_samples-1`` of ``seed`` (the cluttered scenes the COCO and
    VOC exports hold) as ``out_dir/<key>.png``.

    Args:
        out_dir: the folder to write.
        config: the world.
        num_samples: how many scenes.
        seed: the world's seed.
        images: the folder holding the same scenes' images (e.g. ``<split>/coco/images``).

    Returns:
        The ``{"type": "depth_folder", "params": ...}`` that reads the pairs back.
    """
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
    writer = DepthWriter(Path(out_dir), images=Path(images))
    for index in range(num_samples):
        writer.add(f"{index:06d}", generate_scene(config, seed=seed, index=index), b"")
    return writer.close()
