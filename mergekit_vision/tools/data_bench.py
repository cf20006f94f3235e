"""``vmerge bench --data``: can the data loaders keep a GPU fed?

Each task's dataset is built as training builds it (the recipe's plugin, the task's load
resolution and resize mode, its keyed views), and ``samples`` samples are read through it in
this process: file reading, JPEG decoding, resizing and, for mask sets, RLE decoding and mask
resizing. One process on one thread is what a DataLoader worker is (PyTorch sets each worker to
one intra-op thread), so samples per second here are **images/s per worker**. A GPU taking
``steps_per_s`` steps, each one batch of the task (``fixed_ratio`` replay, the reference
recipe's), needs ``steps_per_s x batch_size / images_per_s`` workers for that task.

The JPEG decoders (PIL, torchvision) are timed on the same bytes, interleaved, through
:func:`~mergekit_vision.data.transforms.load_image`, the one function every loader decodes with.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import math
import os
import statistics
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from mergekit_vision.data.base import DATASETS
from mergekit_vision.data.sa1b import SA1BDataset
from mergekit_vision.data.transforms import JPEG_DECODER, JPEG_DECODERS, JPEG_MAGIC, load_image
from mergekit_vision.data.views import with_views
from mergekit_vision.data.webdataset_shards import WebDatasetShards
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.io import load_recipe, validate_recipe
from mergekit_vision.recipe.schema import Recipe, task_load_resolution
from mergekit_vision.tools.data_samples import write_sa1b_folder, write_webdataset_shards

DECODERS = ("pil", "torchvision")


def bench_data(
    recipe_path: Path,
    *,
    overrides: list[str] | None = None,
    samples: int = 32,
    gpu_steps_per_s: float | None = None,
    synthetic: bool = False,
    synthetic_files: int = 8,
    synthetic_sizes: dict[str, tuple[int, int]] | None = None,
    synthetic_masks: int | None = None,
    decoder_images: int = 8,
) -> dict[str, Any]:
    """Images/s per worker of every task's loader, workers needed, and the JPEG decoders.

    Args:
        samples: samples timed per task (after one untimed warm-up sample); a dataset shorter
            than that is read again from the start.
        gpu_steps_per_s: the GPU's training steps per second to size the workers for.
        synthetic: write SA-1B-style and WebDataset sample files to a temporary folder and
            point the recipe's ``sa1b`` and ``webdataset`` tasks at them; tasks with other
            dataset types are skipped.
        synthetic_files: distinct images written per task (read in turn).
        synthetic_sizes: ``{"sa1b": (H, W), "webdataset": (H, W)}`` of the written images
            (default: the real sets', :mod:`mergekit_vision.tools.data_samples`).
        synthetic_masks: masks per SA-1B image (default SA-1B's average, 100).
        decoder_images: images of each task the two JPEG decoders are timed on.
    """
    recipe = load_recipe(recipe_path, overrides)
    with contextlib.ExitStack() as stack:
        skipped: dict[str, str] = {}
        if synthetic:
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="vmerge-data-")))
            recipe, skipped = _with_sample_files(
                recipe,
                folder,
                count=synthetic_files,
                sizes=synthetic_sizes or {},
                masks=synthetic_masks,
            )
        datasets = _build_all(recipe, skip=skipped, source=str(recipe_path))
        tasks = {}
        for name, dataset in datasets.items():
            spec = recipe.tasks[name]
            row = time_loader(dataset, samples=samples)
            row.update(
                dataset=spec.data.type,
                resolution=task_load_resolution(recipe, name),
                resize=spec.resize,
                batch_size=spec.batch_size,
                recipe_workers=spec.num_workers,
                workers_needed=None,
                decoders=None,
            )
            if gpu_steps_per_s is not None:
                row["workers_needed"] = workers_needed(
                    row["images_per_s"], batch_size=spec.batch_size, steps_per_s=gpu_steps_per_s
                )
            jpegs = _jpeg_bytes(dataset, decoder_images)
            if jpegs and set(DECODERS) <= set(JPEG_DECODERS):
                row["decoders"] = compare_decoders(jpegs)
            tasks[name] = row
    needed = [row["workers_needed"] for row in tasks.values()]
    return {
        "recipe": recipe.name,
        "synthetic": synthetic,
        "samples": samples,
        "gpu_steps_per_s": gpu_steps_per_s,
        "cpus": os.cpu_count(),
        "jpeg_decoder": JPEG_DECODER,
        "jpeg_decoders": list(JPEG_DECODERS),
        "tasks": tasks,
        "skipped": skipped,
        "workers_needed_total": sum(needed) if needed and None not in needed else None,
    }


def workers_needed(images_per_s: float, *, batch_size: int, steps_per_s: float) -> int:
    """Loader workers that deliver ``batch_size`` images per step at ``steps_per_s`` steps/s,
    each worker reading ``images_per_s``."""
    # less a hair: float rounding must not turn an exact 4.0 into 5 workers
    return max(1, math.ceil(steps_per_s * batch_size / images_per_s - 1e-9))


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Run torch ops on one thread, as a DataLoader worker does."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def time_loader(dataset: Any, *, samples: int) -> dict[str, Any]:
    """Read one warm-up sample, then time ``samples`` samples of ``dataset`` on one thread."""
    reader = _samples(dataset)
    with one_thread():
        next(reader)
        masks = 0
        started = time.perf_counter()
        for _ in range(samples):
            masks += len(next(reader).get("masks", ()))
        seconds = time.perf_counter() - started
    return {
        "timed_samples": samples,
        "seconds": seconds,
        "images_per_s": samples / seconds,
        "masks_per_image": masks / samples,
    }


def _samples(dataset: Any) -> Iterator[dict[str, Any]]:
    """Samples of ``dataset`` without end: indices in order (map-style) or the stream again
    from its start (iterable)."""
    if isinstance(dataset, IterableDataset):
        while True:
            empty = True
            for sample in dataset:
                empty = False
                yield sample
            if empty:
                raise ValueError("the dataset yielded no sample")
    else:
        if len(dataset) == 0:
            raise ValueError("the dataset has no sample")
        for index in itertools.cycle(range(len(dataset))):
            yield dataset[index]


def compare_decoders(jpegs: list[bytes], *, rounds: int = 3) -> dict[str, Any]:
    """Seconds per image of :func:`load_image` with each JPEG decoder on the same bytes.

    Every image is decoded by both in each round, the order alternating, so drift hits both
    alike; ``ratio`` is PIL's time over torchvision's (above 1: torchvision is faster). Also says
    whether the two give the same pixels.
    """
    times: dict[str, list[float]] = {name: [] for name in DECODERS}
    with one_thread():
        for round_index in range(rounds):
            for index, data in enumerate(jpegs):
                order = DECODERS if (round_index + index) % 2 == 0 else DECODERS[::-1]
                for name in order:
                    started = time.perf_counter()
                    load_image(io.BytesIO(data), jpeg_decoder=name)
                    times[name].append(time.perf_counter() - started)
    same = all(
        torch.equal(
            load_image(io.BytesIO(data), jpeg_decoder="pil"),
            load_image(io.BytesIO(data), jpeg_decoder="torchvision"),
        )
        for data in jpegs
    )
    per_image = {name: statistics.median(t) for name, t in times.items()}
    ratio = per_image["pil"] / per_image["torchvision"]
    return {
        "images": len(jpegs),
        "rounds": rounds,
        "seconds_per_image": per_image,
        "ratio_pil_over_torchvision": ratio,
        "faster": "torchvision" if ratio > 1 else "pil",
        "same_pixels": same,
    }


def _build_all(recipe: Recipe, *, skip: dict[str, str], source: str) -> dict[str, Any]:
    """Every task's dataset (but ``skip``'s) as the engine builds it (``engine.build``); missing
    paths are one recipe error naming every task's and the way out."""
    datasets, issues = {}, []
    for name, spec in recipe.tasks.items():
        if name in skip:
            continue
        try:
            dataset = DATASETS.get(spec.data.type).build(
                spec.data.params,
                resolution=task_load_resolution(recipe, name),
                resize=spec.resize,
                seed=recipe.seed,
                max_masks=spec.max_masks,
            )
        except (FileNotFoundError, ValueError) as err:
            issues.append(Issue(f"tasks.{name}.data", str(err)))
            continue
        views = spec.sample_views()
        if views is not None:
            dataset = with_views(
                dataset, views=views, augment=spec.augment, seed=recipe.seed, task=name
            )
        datasets[name] = dataset
    if issues:
        hint = "point the tasks at their data (--set), or time sample files with --synthetic"
        raise RecipeError(source, [*issues, Issue("--data", hint)])
    return datasets


def _with_sample_files(
    recipe: Recipe,
    folder: Path,
    *,
    count: int,
    sizes: dict[str, tuple[int, int]],
    masks: int | None,
) -> tuple[Recipe, dict[str, str]]:
    """The recipe with its ``sa1b`` and ``webdataset`` tasks reading sample files written to
    ``folder``; the other tasks, each with why it is skipped."""
    data = recipe.model_dump(mode="json")
    skipped = {}
    for name, spec in recipe.tasks.items():
        where = folder / name
        kind = spec.data.type
        if kind == SA1BDataset.registry_name:
            extra = {} if masks is None else {"masks": masks}
            if kind in sizes:
                extra["size"] = sizes[kind]
            root = write_sa1b_folder(where, count=count, **extra)
            params = {"root": str(root)}
        elif kind == WebDatasetShards.registry_name:
            extra = {"size": sizes[kind]} if kind in sizes else {}
            urls = write_webdataset_shards(where, count=count, **extra)
            params = {"urls": urls, "num_samples": count}
        else:
            skipped[name] = f"no sample files for dataset type {kind!r}; bench it on its files"
            continue
        data["tasks"][name]["data"] = {"type": kind, "params": params}
        data["tasks"][name]["targets_cache"] = None  # the sample files are in no cache
    return validate_recipe(data, source=f"{recipe.name} (sample files)"), skipped


def _jpeg_bytes(dataset: Any, count: int) -> list[bytes]:
    """Up to ``count`` JPEG files' bytes as ``dataset`` reads them (SA-1B folders and
    WebDataset shards; other datasets give none)."""
    dataset = getattr(dataset, "dataset", dataset)  # under keyed views
    found: list[bytes] = []
    if isinstance(dataset, SA1BDataset):
        found = [(dataset.root / n).read_bytes() for n in dataset.images[:count]]
    elif isinstance(dataset, WebDatasetShards):
        for sample in wds.WebDataset(dataset.shards, shardshuffle=False, empty_check=False):
            field = next((k for k in dataset.image_keys if k in sample), None)
            if field is not None:
                found.append(sample[field])
            if len(found) == count:
                break
    return [data for data in found if data.startswith(JPEG_MAGIC)]
