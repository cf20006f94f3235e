"""``vmerge cache``: run a task's teacher once over every sample view and store the targets.

The dataset is cut into shards of ``shard_size`` samples in its own order (index order, or the
stream's epoch-0 order). Shard ``i`` holds, for each resolution ``R`` the task trains at,
``{R}.target`` (``[n * views, ...]`` in fp16 or bf16) and the prompts the target answers
(``{R}.points``, ``{R}.point_labels``, ``{R}.boxes``), row ``j * views + v`` for sample ``j``'s
view ``v``; the samples' keys are in the file's metadata. A shard is written to a temporary
file and renamed, so a crash keeps the finished shards and a rerun computes only the rest; the
values are a deterministic function of the manifest's identity, so the files come out the same.
"""

from __future__ import annotations

import itertools
import json
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import IterableDataset

from mergekit_vision.data.base import collate_samples
from mergekit_vision.data.targets_cache.manifest import (
    StaleCacheError,
    cache_identity,
    identity_differences,
    read_manifest,
    write_manifest,
)
from mergekit_vision.engine.build import BuiltTask, build_components, missing_paths
from mergekit_vision.engine.step import prepare_images, sample_prompts
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.schema import Recipe

DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}
PROMPT_FIELDS = ("points", "point_labels", "boxes")


@dataclass
class CacheReport:
    task: str
    folder: Path
    samples: int
    shards_written: int
    shards_reused: int
    seconds: float


def without_caches(recipe: Recipe) -> Recipe:
    """The recipe with every ``targets_cache`` removed but its keyed views kept (to fill a cache
    the teachers run)."""
    data = recipe.model_dump(mode="json")
    for name, task in recipe.tasks.items():
        data["tasks"][name].update(targets_cache=None, views=task.sample_views())
    return Recipe.model_validate(data)


def build_cache(
    recipe: Recipe,
    task_name: str,
    folder: Path,
    *,
    shard_size: int = 256,
    batch_size: int | None = None,
    dtype: str = "float16",
    overwrite: bool = False,
    progress: bool = True,
    allow_random_init: bool = False,
) -> CacheReport:
    """Fill (or finish) the targets cache of ``task_name`` in ``folder``.

    Args:
        shard_size: samples per shard file (each with all its views and resolutions).
        batch_size: teacher batch size (default: the task's).
        dtype: storage of the targets, ``"float16"`` or ``"bfloat16"``.
        overwrite: replace a cache of something else in ``folder`` instead of refusing.
    """
    started = time.perf_counter()
    identity = cache_identity(recipe, task_name)
    head = {"identity": identity, "shard_size": shard_size, "dtype": dtype}
    done = _prepare_folder(folder, head, task_name, overwrite=overwrite)
    if done is not None:  # nothing to do: the same cache is complete (streams need no re-read)
        count = len(done["shards"])
        return CacheReport(task_name, folder, done["samples"], 0, count, 0.0)
    components = build_components(without_caches(recipe), allow_random_init=allow_random_init)
    task = components.tasks[task_name]
    batch_size = batch_size or task.spec.batch_size
    written = reused = samples = 0
    shards: list[dict[str, Any]] = []
    seen: set[str] = set()
    total = _length(task.dataset.dataset)
    with _progress(enabled=progress) as bar:
        bar_task = bar.add_task(f"cache {task_name}", total=total)
        for index, fetch in enumerate(_chunks(task.dataset.dataset, shard_size)):
            path = folder / f"shard-{index:05d}.safetensors"
            if path.is_file():
                keys = _shard_keys(path)
                reused += 1
            else:
                keys = _write_shard(
                    task,
                    fetch(),
                    path,
                    identity=identity,
                    batch_size=batch_size,
                    dtype=dtype,
                    device=components.device,
                )
                written += 1
            _check_unique(keys, seen, task_name)
            if keys:
                shards.append({"file": path.name, "samples": len(keys)})
            samples += len(keys)
            bar.update(bar_task, advance=len(keys))
    write_manifest(folder, {**head, "shards": shards, "samples": samples, "complete": True})
    seconds = time.perf_counter() - started
    return CacheReport(task_name, folder, samples, written, reused, seconds)


def _prepare_folder(
    folder: Path, head: dict[str, Any], task: str, *, overwrite: bool
) -> dict[str, Any] | None:
    """Start a cache, or continue one of the same identity (returned when complete); refuse to
    mix two."""
    existing = read_manifest(folder)
    if existing is not None:
        old = {k: existing.get(k) for k in head}
        diffs = identity_differences(old, head)
        if not diffs:
            return existing if existing.get("complete") else None
        if not overwrite:
            raise StaleCacheError(
                task,
                f"{folder} holds a cache of something else ({'; '.join(diffs)}); "
                "pass --overwrite to replace it, or choose another --output",
            )
        shutil.rmtree(folder)
    elif folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty and holds no targets cache manifest")
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, {**head, "complete": False})
    return None


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def _chunks(dataset: Any, size: int) -> Iterator[Callable[[], list[dict[str, Any]]]]:
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


@torch.no_grad()
def _write_shard(
    task: BuiltTask,
    samples: list[dict[str, Any]],
    path: Path,
    *,
    identity: dict[str, Any],
    batch_size: int,
    dtype: str,
    device: torch.device,
) -> list[str]:
    """Compute one shard's targets and prompts; write them atomically; return its keys."""
    if not samples:  # every sample of the shard was undecodable
        return []
    views = task.dataset.views
    viewed = [task.dataset.view_of(s, v) for s in samples for v in range(views)]
    rows: dict[str, list[torch.Tensor]] = {}
    unused = torch.Generator()  # keyed views draw prompts from their own seeds
    name = task.spec.target
    for start in range(0, len(viewed), batch_size):
        batch = collate_samples(viewed[start : start + batch_size])
        for resolution in identity["resolutions"]:
            images, masks = prepare_images(batch, resolution=resolution, device=device)
            prompts = sample_prompts(task, images, masks, unused, batch=batch)
            target = task.teacher(images, targets=[name], prompts=prompts)[name]
            rows.setdefault(f"{resolution}.target", []).append(target.to(DTYPES[dtype]).cpu())
            for field in PROMPT_FIELDS if prompts is not None else ():
                value = getattr(prompts, field)
                if value is not None:
                    rows.setdefault(f"{resolution}.{field}", []).append(value.cpu())
    tensors = {key: torch.cat(parts).contiguous() for key, parts in rows.items()}
    keys = [str(s["key"]) for s in samples]
    tmp = path.with_suffix(".tmp")
    # One metadata entry: several would be written in a varying order, and resumed caches
    # must come out byte-identical.
    save_file(tensors, str(tmp), metadata={"keys": json.dumps(keys)})
    tmp.replace(path)
    return keys


def _shard_keys(path: Path) -> list[str]:
    with safe_open(str(path), framework="pt") as f:
        return json.loads(f.metadata()["keys"])


def _check_unique(keys: list[str], seen: set[str], task: str) -> None:
    for key in keys:
        if key in seen:
            raise StaleCacheError(
                task, f"the dataset has two samples with key {key!r}; a cache needs unique keys"
            )
        seen.add(key)


def _progress(*, enabled: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} samples"),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        disable=not enabled,
    )


def cache_recipe(
    recipe_path: str | Path,
    *,
    overrides: list[str] | None = None,
    tasks: list[str] | None = None,
    output: Path | None = None,
    **options: Any,
) -> list[CacheReport]:
    """``vmerge cache``: fill the targets cache of each chosen task.

    Tasks: ``tasks``, else those with a ``targets_cache``, else (with ``output``) all of them.
    Folders: ``output/<task>`` with ``output``, else each task's ``targets_cache``.
    ``options`` go to :func:`build_cache`.
    """
    recipe = load_recipe(recipe_path, overrides)
    chosen = tasks or [n for n, t in recipe.tasks.items() if t.targets_cache is not None]
    if not chosen and output is not None:
        chosen = list(recipe.tasks)
    if not chosen:
        raise RecipeError(
            str(recipe_path),
            [Issue("tasks", "no task has a targets_cache; set one or pass --output/--task")],
        )
    issues = [Issue(f"--task {n}", "no such task") for n in chosen if n not in recipe.tasks]
    for name in chosen if not issues else ():
        if output is None and recipe.tasks[name].targets_cache is None:
            issues.append(Issue(f"tasks.{name}.targets_cache", "not set; pass --output DIR"))
    if issues:
        raise RecipeError(str(recipe_path), issues)
    needed = {recipe.tasks[n].teacher for n in chosen}
    missing = [i for i in missing_paths(recipe) if _concerns(i.path, needed, chosen)]
    if missing:
        raise RecipeError(str(recipe_path), missing)
    reports = []
    for name in chosen:
        folder = output / name if output is not None else Path(recipe.tasks[name].targets_cache)
        reports.append(build_cache(recipe, name, folder, **options))
    return reports


def _concerns(path: str, teachers: set[str], tasks: list[str]) -> bool:
    parts = path.split(".")
    return (parts[0] == "teachers" and parts[1] in teachers) or (
        parts[0] == "tasks" and parts[1] in tasks
    )
