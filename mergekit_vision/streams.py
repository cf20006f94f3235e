"""Endless, resumable batch streams over a task's dataset.

Map-style datasets are read in a seeded permutation per epoch, so a stream is fully described by
(epoch, offset): resuming recreates the exact same next batch. Iterable datasets (WebDataset
shards) are replayed from their deterministic order and the consumed samples skipped.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from mergekit_vision.data.base import collate_samples


class _PermutationSampler(Sampler[int]):
    """Indices of epochs ``epoch, epoch+1, ...``, each a seeded permutation, from ``offset`` on."""

    def __init__(self, length: int, *, seed: int, epoch: int, offset: int, by_epoch: bool = False):
        self.length, self.seed, self.epoch, self.offset = length, seed, epoch, offset
        self.by_epoch = by_epoch  # yield (epoch, index): keyed views (data/views.py) need the epoch

    def __iter__(self) -> Iterator[int]:
        epoch, offset = self.epoch, self.offset
        while True:
            generator = torch.Generator().manual_seed(self.seed * 100_003 + epoch)
            order = torch.randperm(self.length, generator=generator).tolist()
            tail = order[offset:]
            yield from (((epoch, i) for i in tail) if self.by_epoch else tail)
            epoch, offset = epoch + 1, 0

    def __len__(self) -> int:  # endless; DataLoader only needs a number
        return 2**62


class BatchStream:
    """Batches of a fixed size from ``dataset``; :meth:`position` / ``start`` resume exactly."""

    def __init__(
        self,
        dataset: Dataset,
        *,
        batch_size: int,
        seed: int,
        num_workers: int = 0,
        start: dict[str, int] | None = None,
    ):
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.num_workers = num_workers
        start = start or {"epoch": 0, "offset": 0}
        self.epoch, self.offset = int(start["epoch"]), int(start["offset"])
        self._iterator: Iterator[dict[str, Any]] | None = None
        self.length = len(dataset) if hasattr(dataset, "__len__") else None  # type: ignore[arg-type]

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def next(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._open()
        try:
            batch = next(self._iterator)
        except StopIteration:  # an iterable dataset ran out: next epoch
            self.epoch, self.offset, self._iterator = self.epoch + 1, 0, None
            return self.next()
        self._advance(len(batch["image"]))
        return batch

    def _advance(self, n: int) -> None:
        self.offset += n
        if self.length is not None and self.offset >= self.length:
            self.epoch, self.offset = (
                self.epoch + self.offset // self.length,
                self.offset % self.length,
            )

    def _open(self) -> Iterator[dict[str, Any]]:
        common = dict(
            batch_size=self.batch_size,
            num_workers=self.num_workers,
            collate_fn=collate_samples,
            persistent_workers=self.num_workers > 0,
        )
        if isinstance(self.dataset, IterableDataset):
            if hasattr(self.dataset, "set_epoch"):
                self.dataset.set_epoch(self.epoch)
            loader = DataLoader(self.dataset, **common)
            skip = self.offset // self.batch_size
            return itertools.islice(iter(loader), skip, None)
        sampler = _PermutationSampler(
            len(self.dataset),
            seed=self.seed,
            epoch=self.epoch,
            offset=self.offset,  # type: ignore[arg-type]
            by_epoch=getattr(self.dataset, "indexed_by_epoch", False),
        )
        return iter(DataLoader(self.dataset, sampler=sampler, drop_last=True, **common))
