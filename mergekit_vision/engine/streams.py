"""Endless, resumable batch streams over a task's dataset.

Map-style datasets are read in a seeded permutation per epoch, so a stream is fully described by
(epoch, offset): resuming recreates the exact same next batch. Iterable datasets (WebDataset
shards) are replayed from their deterministic order and the consumed samples skipped.

Under data parallelism every rank walks the same global order and keeps every ``world_size``-th
sample from its ``rank`` on: a step's batches on N ranks together hold exactly the samples one
process would batch with N x ``batch_size``. The position counts global samples, identical on every
rank, so a checkpoint resumes at any world size.

A sample the dataset could not decode was skipped there, its record riding with the batch
(:mod:`mergekit_vision.data.skips`); a stream takes the records off its batches and counts the
samples it read, for :class:`~mergekit_vision.engine.skips.SkipLedger` to collect.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import torch
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from mergekit_vision.data.base import SKIPPED, collate_samples
from mergekit_vision.data.skips import NoReadableSampleError
from mergekit_vision.engine.skips import SkippedSamplesError

if TYPE_CHECKING:
    from mergekit_vision.engine.build import BuiltTask


class _PermutationSampler(Sampler[int]):
    """Indices of epochs ``epoch, epoch+1, ...``, each a seeded permutation, from ``offset`` on;
    of that endless sequence a rank keeps items ``rank, rank + world_size, ...``."""

    def __init__(
        self,
        length: int,
        *,
        seed: int,
        epoch: int,
        offset: int,
        rank: int = 0,
        world_size: int = 1,
        by_epoch: bool = False,
    ):
        self.length, self.seed, self.epoch, self.offset = length, seed, epoch, offset
        self.rank, self.world_size = rank, world_size
        self.by_epoch = by_epoch  # yield (epoch, index): keyed views (data/views.py) need the epoch

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(self._global(), self.rank, None, self.world_size)

    def _global(self) -> Iterator[int]:
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
        rank: int = 0,
        world_size: int = 1,
        name: str = "",
    ):
        """``batch_size`` is this rank's; ``start`` counts global samples (see the module);
        ``name`` (the task's) names the data in errors."""
        self.dataset, self.batch_size, self.seed = dataset, batch_size, seed
        self.name = name
        self.num_workers = num_workers
        self.rank, self.world_size = rank, world_size
        start = start or {"epoch": 0, "offset": 0}
        self.epoch, self.offset = int(start["epoch"]), int(start["offset"])
        self._iterator: Iterator[dict[str, Any]] | None = None
        self._batches_in_pass = 0
        self.length = _length(dataset)
        self._read, self._skipped = 0, []  # this rank's, since the last take_skips()

    def position(self) -> dict[str, int]:
        return {"epoch": self.epoch, "offset": self.offset}

    def take_skips(self) -> tuple[int, list[dict[str, str]]]:
        """(samples read, decoded or skipped; the skipped ones' records) on this rank since the
        last call."""
        taken = self._read, self._skipped
        self._read, self._skipped = 0, []
        return taken

    def next(self) -> dict[str, Any]:
        if self._iterator is None:
            self._iterator = self._open()
            self._batches_in_pass = 0
        try:
            batch = next(self._iterator)
        except StopIteration:  # an iterable dataset ran out: next epoch
            if self._batches_in_pass == 0 and self.offset == 0:
                raise SkippedSamplesError(
                    f"task {self.name!r}: a whole pass over its data gave no sample (none can "
                    "be decoded, or there is no shard for this process to read)"
                ) from None
            self.epoch, self.offset, self._iterator = self.epoch + 1, 0, None
            return self.next()
        except NoReadableSampleError as err:
            raise SkippedSamplesError(f"task {self.name!r}: {_first_line(err)}") from None
        self._batches_in_pass += 1
        skipped = batch.pop(SKIPPED, [])
        self._read += len(batch["image"]) + len(skipped)
        self._skipped += skipped
        self._advance(len(batch["image"]) * self.world_size)
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
            if self.world_size == 1:
                loader = DataLoader(self.dataset, **common)
                return itertools.islice(iter(loader), self.offset // self.batch_size, None)
            # Every rank reads the whole stream and keeps its own samples: the same global order
            # at any world size (reading cost grows with ranks; shard by node for large runs).
            shard = _StridedIterable(
                self.dataset, start=self.offset, rank=self.rank, world_size=self.world_size
            )
            return iter(DataLoader(shard, **common))
        sampler = _PermutationSampler(
            len(self.dataset),  # type: ignore[arg-type]
            seed=self.seed,
            epoch=self.epoch,
            offset=self.offset,
            rank=self.rank,
            world_size=self.world_size,
            by_epoch=getattr(self.dataset, "indexed_by_epoch", False),
        )
        return iter(DataLoader(self.dataset, sampler=sampler, drop_last=True, **common))


def _length(dataset: Dataset) -> int | None:
    """Samples per pass, or None for a stream without a length (a WebDataset without
    ``num_samples`` has ``__len__`` but raises TypeError)."""
    try:
        return len(dataset)  # type: ignore[arg-type]
    except TypeError:
        return None


def _first_line(err: Exception) -> str:
    """The data's own message, also when a DataLoader worker wrapped it in its traceback."""
    text = str(err)
    if "Traceback" not in text:
        return text
    last = text.strip().splitlines()[-1]  # "<module>.NoReadableSampleError: <message>"
    return last.split(": ", 1)[-1]


class _StridedIterable(IterableDataset):
    """Samples ``start + rank, start + rank + world_size, ...`` of an iterable dataset."""

    def __init__(self, dataset: IterableDataset, *, start: int, rank: int, world_size: int):
        self.dataset, self.start, self.rank, self.world_size = dataset, start, rank, world_size

    def __iter__(self) -> Iterator[Any]:
        return itertools.islice(iter(self.dataset), self.start + self.rank, None, self.world_size)


def open_streams(
    tasks: dict[str, BuiltTask],
    *,
    seed: int,
    positions: dict[str, dict[str, int]] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> dict[str, BatchStream]:
    """One training stream per task, seeded ``seed + i`` for the recipe's ``i``-th task, each
    from its saved position (see :class:`~mergekit_vision.engine.run_folder.TrainState`)."""
    positions = positions or {}
    return {
        name: task_stream(
            task, seed=seed + index, start=positions.get(name), rank=rank, world_size=world_size
        )
        for index, (name, task) in enumerate(tasks.items())
    }


def task_stream(
    task: BuiltTask,
    *,
    seed: int,
    start: dict[str, int] | None = None,
    rank: int = 0,
    world_size: int = 1,
) -> BatchStream:
    """Batches of ``task``'s data at its batch size, this rank's share of each."""
    return BatchStream(
        task.dataset,
        batch_size=task.spec.batch_size,
        seed=seed,
        num_workers=task.spec.num_workers,
        start=start,
        rank=rank,
        world_size=world_size,
        name=task.name,
    )
