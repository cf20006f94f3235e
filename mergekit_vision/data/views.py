"""Per-sample augmentation views: a deterministic function of ``(seed, task, sample key, view)``.

A task with ``views`` (or ``augment`` / ``targets_cache``) sees each sample as one of ``views``
fixed augmentations, view ``epoch % views`` in epoch ``epoch``. Because a view depends on the
sample's key and not on the batch, worker, rank or step it lands in, a teacher's target for it
can be computed once (``vmerge cache``) and looked up during training.

The augmentations are the light geometric ones of CLIP-style distillation: a square random crop of
``scale`` of the image area resized back to ``R``, and a horizontal flip. Masks and label maps
follow the image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import torch
import torchvision.transforms.v2.functional as TF
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset
from torchvision.transforms import InterpolationMode

from mergekit_vision.recipe.task_params import AugmentSpec

_NEAREST = InterpolationMode.NEAREST_EXACT


def stable_seed(*parts: object) -> int:
    """A 63-bit seed from ``parts`` (seed, task, key, view, ...): the same on every machine and
    Python process, unlike ``hash()``."""
    digest = hashlib.sha256("\x1f".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & (2**63 - 1)


def view_generator(seed: int, task: str, key: str, view: int, purpose: str) -> torch.Generator:
    """The generator of one sample view's ``purpose`` (``"augment"``, ``"prompts"``)."""
    return torch.Generator().manual_seed(stable_seed(seed, task, key, int(view), purpose))


def augment_sample(
    sample: dict[str, Any], spec: AugmentSpec | None, generator: torch.Generator
) -> dict[str, Any]:
    """``sample`` with its image ``uint8 [3, R, R]`` (and ``masks``, ``semantic``) augmented."""
    if spec is None:
        return sample
    u = torch.rand(4, generator=generator).tolist()
    size = sample["image"].shape[-1]
    area = spec.scale[0] + u[0] * (spec.scale[1] - spec.scale[0])
    side = max(1, min(size, round(size * area**0.5)))
    top, left = int(u[1] * (size - side + 1)), int(u[2] * (size - side + 1))
    flip = spec.hflip and u[3] < 0.5

    def geometry(x: Tensor, mode: InterpolationMode) -> Tensor:
        x = x[..., top : top + side, left : left + side]
        if side != size:
            x = TF.resize(x, [size, size], interpolation=mode, antialias=True)
        return (x.flip(-1) if flip else x).contiguous()

    out = dict(sample)
    out["image"] = geometry(sample["image"], InterpolationMode.BILINEAR)
    if isinstance(sample.get("masks"), Tensor) and sample["masks"].shape[0]:
        out["masks"] = geometry(sample["masks"], _NEAREST)
    if isinstance(sample.get("semantic"), Tensor):
        out["semantic"] = geometry(sample["semantic"][None], _NEAREST)[0]
    return out


class _Views:
    """What both wrappers share: the view of a sample and its augmentation."""

    def __init__(self, dataset: Any, *, views: int, augment: AugmentSpec | None, seed: int, task):
        if views < 1:
            raise ValueError(f"views must be >= 1, got {views}")
        self.dataset, self.views, self.augment = dataset, views, augment
        self.seed, self.task = seed, task

    def view_of(self, sample: dict[str, Any], view: int) -> dict[str, Any]:
        """``sample`` as its view ``view``: augmented, with ``"view"`` and ``"view_seed"`` (the
        seed of its prompts, see
        :func:`~mergekit_vision.engine.step.keyed_prompts`)."""
        generator = view_generator(self.seed, self.task, sample["key"], view, "augment")
        out = augment_sample(sample, self.augment, generator)
        out["view"] = int(view)
        out["view_seed"] = stable_seed(self.seed, self.task, sample["key"], int(view), "prompts")
        return out

    def __getattr__(self, name: str) -> Any:  # class_names, num_samples, ... of the dataset
        if name == "dataset" or name.startswith("__"):  # unpickling in a DataLoader worker
            raise AttributeError(name)
        return getattr(self.dataset, name)


class ViewedDataset(_Views, Dataset):
    """A map-style dataset whose items are views; index it by ``(epoch, index)`` or ``index``.

    ``indexed_by_epoch`` asks :class:`~mergekit_vision.engine.streams.BatchStream` for
    ``(epoch, index)`` items; a plain index (held-out batches, evaluation) is view 0.
    """

    indexed_by_epoch = True

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, item: int | tuple[int, int]) -> dict[str, Any]:
        epoch, index = item if isinstance(item, tuple) else (0, item)
        return self.view_of(self.dataset[index], epoch % self.views)


class ViewedIterable(_Views, IterableDataset):
    """A streamed dataset of views ``epoch % views``, the epoch given by :meth:`set_epoch`."""

    epoch = 0

    def __len__(self) -> int:
        return len(self.dataset)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        if hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        view = self.epoch % self.views
        for sample in self.dataset:
            yield self.view_of(sample, view)


def with_views(
    dataset: Any, *, views: int, augment: AugmentSpec | None, seed: int, task: str
) -> _Views:
    """Wrap ``dataset`` (map-style or iterable) so its samples are keyed views."""
    cls = ViewedIterable if isinstance(dataset, IterableDataset) else ViewedDataset
    return cls(dataset, views=views, augment=augment, seed=seed, task=task)
