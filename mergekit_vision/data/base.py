"""The dataset contract: what every ``datasets`` plugin returns.

A dataset plugin is a map-style ``torch.utils.data.Dataset`` (random access lets the engine shuffle
with a seeded permutation and resume at an exact position) or, for streams such as WebDataset
shards, an ``IterableDataset`` that yields samples in a deterministic order for a given seed (the
engine resumes it by skipping the samples already consumed).

Each sample is a dict:
- ``"image"``: ``uint8 [3, R, R]``, RGB, already resized to the task resolution ``R``;
- ``"masks"``: ``bool [M, R, R]`` instance masks on the same grid (``M`` may be 0), only for
  datasets with ``has_masks = True``;
- ``"key"``: a string naming the sample (file path or shard key), for error messages and caches;
- ``"skipped"`` (only when some were): ``{"path", "reason"}`` records of the undecodable samples
  skipped in this one's place (:mod:`mergekit_vision.data.skips`).

Resizing follows the teacher the task serves: ``"pad"`` (longest side to ``R``, zero-pad bottom and
right, as SAM does) or ``"crop"`` (shortest side to ``R``, centre crop, as CLIP does).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar, Literal

import torch

from mergekit_vision.registry import PluginParams, Registry

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


DATASETS: Registry[ImageDataset] = Registry("datasets")


SKIPPED = "skipped"  # records of samples skipped in a sample's place (data/skips.py)
PER_MASK_KEYS = ("masks", "classes")  # one entry per mask: counts differ between images


def collate_samples(samples: list[dict[str, Any]]) -> dict[str, Any]:
    """Stack images ``[B, 3, R, R]`` and other same-shaped tensors (label maps); numbers become
    a tensor; masks (their counts differ per image), strings and the rest stay lists. The records
    of samples skipped in the samples' place (:mod:`mergekit_vision.data.skips`), which only some
    samples carry, become one list under ``"skipped"`` when there are any."""
    batch: dict[str, Any] = {}
    skipped = [record for s in samples for record in s.get(SKIPPED, ())]
    for key in samples[0]:
        if key == SKIPPED:
            continue
        values = [s[key] for s in samples]
        first = values[0]
        if key not in PER_MASK_KEYS and isinstance(first, torch.Tensor) and _same_shape(values):
            batch[key] = torch.stack(values)
        elif isinstance(first, int | float) and not isinstance(first, bool):
            batch[key] = torch.tensor(values)
        else:
            batch[key] = values
    batch.setdefault("key", [""] * len(samples))
    if skipped:
        batch[SKIPPED] = skipped
    return batch


def _same_shape(values: list[Any]) -> bool:
    return all(isinstance(v, torch.Tensor) and v.shape == values[0].shape for v in values)
