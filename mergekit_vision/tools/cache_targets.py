"""What ``vmerge cache`` stores, before it is stored: a task's samples in shard order, the
teacher's targets of their keyed views, and the codec's fit on the first of them.

:mod:`.cache_writer` turns these into files (shards, ``codec.safetensors``, the manifest).
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import IterableDataset

from mergekit_vision.contracts import Prompts
from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.targets_cache.codecs import Codec, CodecError
from mergekit_vision.engine.build import BuiltTask
from mergekit_vision.engine.step import prepare_images, sample_prompts


def shard_chunks(dataset: Any, size: int) -> Iterator[Callable[[], list[dict[str, Any]]]]:
    """Per shard, a function loading its samples (map-style: only when called)."""
    if isinstance(dataset, IterableDataset):
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(0)
        stream = iter(dataset)
        while chunk := list(itertools.islice(stream, size)):
            yield lambda chunk=chunk: chunk
        return
    for start in range(0, len(dataset), size):
        indices = range(start, min(start + size, len(dataset)))
        yield lambda indices=indices: _readable(dataset[i] for i in indices)


def _readable(samples: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    """A map-style dataset serves another sample in place of one it cannot decode (marked
    ``"skipped"``); that stand-in is cached under its own index, so it is dropped here."""
    return [sample for sample in samples if "skipped" not in sample]


def first_samples(dataset: Any, count: int, chunk: int = 64) -> Iterator[list[dict[str, Any]]]:
    """The dataset's first ``count`` readable samples (in shard order), ``chunk`` at a time."""
    left = count
    for fetch in shard_chunks(dataset, chunk):
        if left <= 0:
            return
        samples = fetch()[:left]
        left -= len(samples)
        yield samples


@torch.no_grad()
def teacher_targets(
    task: BuiltTask,
    samples: list[dict[str, Any]],
    resolutions: list[int],
    *,
    batch_size: int,
    device: torch.device,
) -> Iterator[tuple[int, Tensor, Prompts | None]]:
    """``(resolution, target, prompts)`` of every view of ``samples``, batch by batch, in row
    order (row ``j * views + v``: sample ``j``'s view ``v``)."""
    views = task.dataset.views
    viewed = [task.dataset.view_of(s, v) for s in samples for v in range(views)]
    unused = torch.Generator()  # keyed views draw prompts from their own seeds
    name = task.spec.target
    for start in range(0, len(viewed), batch_size):
        batch = collate_samples(viewed[start : start + batch_size])
        for resolution in resolutions:
            images, masks = prepare_images(batch, resolution=resolution, device=device)
            prompts = sample_prompts(task, images, masks, unused, batch=batch)
            yield resolution, task.teacher(images, targets=[name], prompts=prompts)[name], prompts


def check_codec(codec: Codec, task: BuiltTask, task_name: str) -> None:
    """Refuse a codec that cannot store the task's target, naming one that can."""
    refusal = codec.refusal(task.teacher.target_specs()[task.spec.target])
    if refusal is not None:
        raise CodecError(
            task_name,
            f"--codec {codec}: {refusal} (target {task.spec.target!r}); e.g. "
            f"`vmerge cache <recipe> --task {task_name} --codec int8`",
        )


def fit_codec(
    task: BuiltTask,
    codec: Codec,
    resolutions: list[int],
    *,
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """The codec's shared tensors ``{R}.target.<name>``, fitted per resolution on the targets of
    the first ``codec.fit_samples`` samples (all their views)."""
    shared: dict[str, Tensor] = {}
    for resolution in resolutions:  # one pass each: the codec streams over its batches
        batches = (
            target
            for samples in first_samples(task.dataset.dataset, codec.fit_samples)
            for _, target, _ in teacher_targets(
                task, samples, [resolution], batch_size=batch_size, device=device
            )
        )
        for name, value in codec.fit(batches).items():
            shared[f"{resolution}.target.{name}"] = value.cpu()
    return shared
