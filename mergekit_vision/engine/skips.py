"""Undecodable samples, counted: a run survives broken files but not broken data.

The dataset plugins skip a sample they cannot decode and hand its record on with the batch
(:mod:`mergekit_vision.data.skips`); each training stream counts what it read
(:meth:`~mergekit_vision.engine.streams.BatchStream.take_skips`). After every step the
:class:`SkipLedger` adds those counts up per task (over the ranks), logs each newly skipped file
once per task to the run folder's ``skipped.jsonl``, and stops the run when a task skips more
than ``data.max_skip_fraction`` of the samples it reads. A few broken files among the first
batches are not a verdict on the data, so the share is judged once the task has read
``10 / max_skip_fraction`` samples (1,000 at the default 1%) or one pass over its data, whichever
is fewer; a bound of 0 stops the run at the first skip.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Protocol

import torch.distributed as dist

from mergekit_vision.engine.distributed import World, mean_over_ranks
from mergekit_vision.engine.run_folder import RunFolder
from mergekit_vision.errors import Issue, RecipeError


class BatchStream(Protocol):
    """What the ledger reads of a task's stream (``engine.streams.BatchStream``)."""

    def take_skips(self) -> tuple[int, list[dict[str, str]]]: ...


BOUND_FIELD = "data.max_skip_fraction"
ADVICE = f"fix or remove those files, or raise {BOUND_FIELD}"


class SkippedSamplesError(RecipeError):
    """Too many of a task's samples cannot be decoded: the message names the task, the count,
    the share, the bound and where the skipped files are listed."""

    def __init__(self, message: str):
        super().__init__(BOUND_FIELD, [Issue(BOUND_FIELD, message)])
        self.args = (message,)  # the one message, not the recipe-problem list


class SkipLedger:
    """Per task: samples read and skipped (summed over the ranks), and which files were logged.

    Args:
        bound: ``data.max_skip_fraction``.
        saved: the counts a resumed run continues from (:attr:`TrainState.skips`).
        lengths: each task's samples per pass over its data (None for a stream without a length).
        folder: the run folder that lists the skipped files.
        world: this process's place under ``torchrun``.
    """

    def __init__(
        self,
        *,
        bound: float,
        saved: Mapping[str, Mapping[str, int]] | None,
        lengths: Mapping[str, int | None],
        folder: RunFolder,
        world: World,
    ):
        self.bound, self.lengths, self.folder, self.world = bound, dict(lengths), folder, world
        saved = saved or {}
        self.counts = {task: {"read": 0, "skipped": 0} for task in lengths}
        for task, counts in self.counts.items():
            counts.update({k: int(v) for k, v in saved.get(task, {}).items() if k in counts})
        self.logged = {(r["task"], r["path"]) for r in folder.logged_skips()}
        self.example: dict[str, dict[str, str]] = {}  # the latest skipped file of each task

    def update(self, streams: Mapping[str, BatchStream], *, step: int) -> dict[str, int]:
        """Take what each stream read since the last call; log new files; stop the run when a
        task's share passes the bound. Returns the ``skipped/<task>`` metrics of tasks that
        skipped any sample so far."""
        taken = {task: stream.take_skips() for task, stream in streams.items()}
        local = {}
        for task, (read, records) in taken.items():
            local[f"{task}/read"], local[f"{task}/skipped"] = float(read), float(len(records))
        total = self._sum_over_ranks(local)  # the same on every rank: all decide alike
        if any(total[f"{task}/skipped"] for task in taken):
            records = [{"task": t, **r} for t, (_, recs) in taken.items() for r in recs]
            self._log(self._gather(records), step=step)
        for task in taken:
            self.counts[task]["read"] += total[f"{task}/read"]
            self.counts[task]["skipped"] += total[f"{task}/skipped"]
            self._check(task)
        return {f"skipped/{t}": c["skipped"] for t, c in self.counts.items() if c["skipped"]}

    def state_dict(self) -> dict[str, dict[str, int]]:
        return {task: dict(counts) for task, counts in self.counts.items()}

    def _sum_over_ranks(self, values: dict[str, float]) -> dict[str, int]:
        means = mean_over_ranks(values, self.world)
        return {key: round(value * self.world.size) for key, value in means.items()}

    def _gather(self, records: list[dict[str, str]]) -> list[dict[str, str]]:
        if not self.world.distributed:
            return records
        everyone: list[list[dict[str, str]] | None] = [None] * self.world.size
        dist.all_gather_object(everyone, records)
        return [record for rank in everyone for record in rank or ()]

    def _log(self, records: list[dict[str, str]], *, step: int) -> None:
        new = []
        for record in records:
            self.example[record["task"]] = record
            if (record["task"], record["path"]) not in self.logged:
                self.logged.add((record["task"], record["path"]))
                new.append({"step": step, **record})
        self.folder.log_skipped(new)

    def _check(self, task: str) -> None:
        read, skipped = self.counts[task]["read"], self.counts[task]["skipped"]
        if skipped == 0 or skipped <= self.bound * read:
            return
        length = self.lengths.get(task) or math.inf
        judged_from = 0 if self.bound == 0 else min(math.ceil(10 / self.bound), length)
        if read < judged_from:
            return
        example = self.example.get(task)
        seen = f", e.g. '{example['path']}': {example['reason']}" if example else ""
        raise SkippedSamplesError(
            f"task {task!r}: {skipped} of the {read} samples it read could not be decoded "
            f"({skipped / read:.1%}), more than {BOUND_FIELD} ({self.bound:.1%}) allows{seen}. "
            f"Every skipped file and why is listed in {self.folder.skipped}; {ADVICE}"
        )
