"""The dataset contract: what every ``datasets`` plugin returns.

A dataset plugin is a map-style ``torch.utils.data.Dataset`` (random access lets the engine shuffle
with a seeded permutation and resume at an exact position) or, for streams such as WebDataset
shards, an ``IterableDataset`` that yields samples in a deterministic order for a given seed (the
engine resumes it by skipping the samples already consumed).

Each sample is a dict:
- ``"image"``: ``uint8 [3, R, R]``, RGB, already resized to the task resolution ``R``;
- ``"masks"``: ``bool [M, R, R]`` instance masks on the same grid (``M`` may be 0), only for
  datasets with ``has_masks = True``;
- ``"key"``: a string naming the sample (file path or shard key), for error messages and caches.

Resizing follows the teacher the task serves: ``"pad"`` (longest side to ``R``, zero-pad bottom and
right, as SAM does) or ``"crop"`` (shortest side to ``R``, centre crop, as CLIP does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from mergekit_vision.registry import PluginParams

ResizeMode = Literal["pad", "crop"]


class ImageDataset:
    """Mixin declaring the dataset plugin interface (combine with a torch Dataset class)."""

    Params: ClassVar[type[PluginParams]] = PluginParams
    has_masks: ClassVar[bool] = False

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> torch.utils.data.Dataset:
        """Build from validated params; raise FileNotFoundError/ValueError naming the bad path."""
        raise NotImplementedError

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        """Params fields that name files or folders that must exist before a real run."""
        return {}


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images ``[B, 3, R, R]``; keep masks as a list (their counts differ per image)."""
    batch: dict[str, Any] = {
        "image": torch.stack([s["image"] for s in samples]),
        "key": [s.get("key", "") for s in samples],
    }
    if "masks" in samples[0]:
        batch["masks"] = [s["masks"] for s in samples]
    return batch
