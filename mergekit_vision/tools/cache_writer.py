"""``vmerge cache``: run a task's teacher once over every sample view and store the targets.

The dataset is cut into shards of ``shard_size`` samples in its own order (index order, or the
stream's epoch-0 order). Shard ``i`` holds, for each resolution ``R`` the task trains at,
``{R}.target`` (``[n * views, ...]``, as the codec stores it: fp16, bf16, int8 codes or PCA
coefficients, with the codec's per-shard tensors ``{R}.target.<name>``) and the prompts the
target answers (``{R}.points``, ``{R}.point_labels``, ``{R}.boxes``), row ``j * views + v`` for
sample ``j``'s view ``v``; the samples' keys are in the file's metadata. A codec with shared
tensors (the PCA basis) fits them on the first samples and writes ``codec.safetensors`` before the
first shard. Each file is written to a temporary file and renamed, so a crash keeps the finished
shards and a rerun computes only the rest; the values are a deterministic function of the
manifest's identity and codec, so the files come out the same.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import Tensor

from mergekit_vision.data.targets_cache.codecs import (
    ROWS,
    Codec,
    manifest_codec,
    parse_codec,
    state_of,
)
from mergekit_vision.data.targets_cache.manifest import (
    StaleCacheError,
    cache_identity,
    identity_differences,
    read_manifest,
    write_manifest,
)
from mergekit_vision.data.targets_cache.reader import CachedTargets, CacheSize
from mergekit_vision.engine.build import BuiltTask, Components, build_components, missing_paths
from mergekit_vision.errors import Issue, RecipeError
from mergekit_vision.recipe.io import load_recipe
from mergekit_vision.recipe.schema import Recipe
from mergekit_vision.tools.cache_targets import (
    check_codec,
    fit_codec,
    shard_chunks,
    teacher_targets,
)

PROMPT_FIELDS = ("points", "point_labels", "boxes")


@dataclass
class CacheReport:
    task: str
    folder: Path
    samples: int
    shards_written: int
    shards_reused: int
    seconds: float
    size: CacheSize


def without_caches(recipe: Recipe) -> Recipe:
    """The recipe with every ``targets_cache`` removed but its keyed views kept (to fill a cache
    the teachers run)."""
    data = recipe.model_dump(mode="json")
    for name, task in recipe.tasks.items():
        # keyed even where the recipe is not (a cache is filled with `--output` alone): the
        # cache stores each sample by key, as training from it reads it
        data["tasks"][name].update(targets_cache=None, views=task.sample_views() or 1)
    return Recipe.model_validate(data)


def build_cache(
    recipe: Recipe,
    task_name: str,
    folder: Path,
    *,
    shard_size: int = 256,
    batch_size: int | None = None,
    codec: str | Codec = "fp16",
    overwrite: bool = False,
    progress: bool = True,
    allow_random_init: bool = False,
    components: Callable[[], Components] | None = None,
) -> CacheReport:
    """Fill (or finish) the targets cache of ``task_name`` in ``folder``.

    Args:
        shard_size: samples per shard file (each with all its views and resolutions).
        batch_size: teacher batch size (default: the task's).
        codec: how targets are stored: ``fp16``, ``bf16``, ``int8`` or ``pca:K``
            (:mod:`mergekit_vision.data.targets_cache.codecs`).
        overwrite: replace a cache of something else in ``folder`` instead of refusing.
        components: gives the recipe's components built without caches, if the caller has
            them (else they are built here, only when there is work left).
    """
    started = time.perf_counter()
    codec = parse_codec(codec) if isinstance(codec, str) else codec
    identity = cache_identity(recipe, task_name)
    head = {"identity": identity, "shard_size": shard_size, "codec": codec.record()}
    existing = _check_folder(folder, head, task_name, overwrite=overwrite)
    if existing is not None and existing.get("complete"):
        # nothing to do: the same cache is complete (streams need no re-read)
        count = len(existing["shards"])
        return CacheReport(task_name, folder, existing["samples"], 0, count, 0.0, _size(folder))
    if components is None:
        built = build_components(without_caches(recipe), allow_random_init=allow_random_init)
    else:
        built = components()
    task = built.tasks[task_name]
    check_codec(codec, task, task_name)  # before the folder is touched: another codec may fill it
    if existing is None:
        _start_folder(folder, head)
    batch_size = batch_size or task.spec.batch_size
    shared = _codec_state(
        task,
        codec,
        folder,
        task_name=task_name,
        identity=identity,
        batch_size=batch_size,
        device=built.device,
    )
    shards, written, reused = _fill_shards(
        task,
        folder,
        task_name=task_name,
        shard_size=shard_size,
        identity=identity,
        batch_size=batch_size,
        codec=codec,
        shared=shared,
        device=built.device,
        progress=progress,
    )
    samples = sum(s["samples"] for s in shards)
    write_manifest(folder, {**head, "shards": shards, "samples": samples, "complete": True})
    seconds = time.perf_counter() - started
    return CacheReport(task_name, folder, samples, written, reused, seconds, _size(folder))


def _fill_shards(
    task: BuiltTask,
    folder: Path,
    *,
    task_name: str,
    shard_size: int,
    progress: bool,
    **write: Any,
) -> tuple[list[dict[str, Any]], int, int]:
    """Write the shards ``folder`` lacks; return every shard's manifest entry and how many
    were written and kept. ``write`` goes to :func:`_write_shard`."""
    written = reused = 0
    shards: list[dict[str, Any]] = []
    seen: set[str] = set()
    with _progress(enabled=progress) as bar:
        bar_task = bar.add_task(f"cache {task_name}", total=_length(task.dataset.dataset))
        for index, fetch in enumerate(shard_chunks(task.dataset.dataset, shard_size)):
            path = folder / f"shard-{index:05d}.safetensors"
            if path.is_file():
                keys = _shard_keys(path)
                reused += 1
            else:
                keys = _write_shard(task, fetch(), path, **write)
                written += 1
            _check_unique(keys, seen, task_name)
            if keys:
                shards.append({"file": path.name, "samples": len(keys)})
            bar.update(bar_task, advance=len(keys))
    return shards, written, reused


def _size(folder: Path) -> CacheSize:
    manifest = read_manifest(folder)
    assert manifest is not None
    return CachedTargets(task="", folder=folder, manifest=manifest).stored_size()


def _check_folder(
    folder: Path, head: dict[str, Any], task: str, *, overwrite: bool
) -> dict[str, Any] | None:
    """The manifest of a cache of the same settings in ``folder`` (complete or to continue), or
    None to start one; refuse to mix two unless ``overwrite``."""
    existing = read_manifest(folder)
    if existing is not None:
        old = {k: existing.get(k) for k in head} | {"codec": manifest_codec(existing)}
        diffs = identity_differences(old, head)
        if not diffs:
            return existing
        if not overwrite:
            raise StaleCacheError(
                task,
                f"{folder} holds a cache of something else ({'; '.join(diffs)}); "
                "pass --overwrite to replace it, or choose another --output",
            )
    elif folder.is_dir() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} is not empty and holds no targets cache manifest")
    return None


def _start_folder(folder: Path, head: dict[str, Any]) -> None:
    """Begin a cache in ``folder``, replacing one of other settings (``--overwrite`` was given)."""
    if read_manifest(folder) is not None:
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_manifest(folder, {**head, "complete": False})


def _codec_state(
    task: BuiltTask,
    codec: Codec,
    folder: Path,
    *,
    task_name: str,
    identity: dict[str, Any],
    batch_size: int,
    device: torch.device,
) -> dict[str, Tensor]:
    """The codec's shared tensors ``{R}.target.<name>``: read back when a resumed cache has them,
    else fitted on the first ``codec.fit_samples`` samples and written before any shard."""
    if codec.fit_samples == 0:
        return {}
    path = folder / codec.record()["state"]
    if path.is_file():
        return load_file(str(path))
    if any(folder.glob("shard-*.safetensors")):
        raise StaleCacheError(
            task_name,
            f"{folder} has shards but not their {path.name}; pass --overwrite to rebuild it",
        )
    shared = fit_codec(task, codec, identity["resolutions"], batch_size=batch_size, device=device)
    tmp = path.with_suffix(".tmp")
    save_file(shared, str(tmp))
    tmp.replace(path)
    return shared


def _length(dataset: Any) -> int | None:
    try:
        return len(dataset)
    except TypeError:
        return None


def _write_shard(
    task: BuiltTask,
    samples: list[dict[str, Any]],
    path: Path,
    *,
    identity: dict[str, Any],
    batch_size: int,
    codec: Codec,
    shared: dict[str, Tensor],
    device: torch.device,
) -> list[str]:
    """Compute one shard's targets and prompts; write them atomically; return its keys."""
    if not samples:  # every sample of the shard was undecodable
        return []
    rows: dict[str, list[Tensor]] = {}
    outputs = teacher_targets(
        task, samples, identity["resolutions"], batch_size=batch_size, device=device
    )
    for resolution, target, prompts in outputs:
        rows.setdefault(f"{resolution}.target", []).append(target.to(codec.staging_dtype).cpu())
        for field in PROMPT_FIELDS if prompts is not None else ():
            value = getattr(prompts, field)
            if value is not None:
                rows.setdefault(f"{resolution}.{field}", []).append(value.cpu())
    tensors: dict[str, Tensor] = {}
    for key, parts in rows.items():
        if not key.endswith(".target"):
            tensors[key] = torch.cat(parts).contiguous()
            continue
        # a codec sees the whole shard: int8's scales are the shard's per-channel ranges
        for part, value in codec.encode(torch.cat(parts), state_of(shared, key)).items():
            tensors[key if part == ROWS else f"{key}.{part}"] = value.contiguous()
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
    codec: str | Codec = "fp16",
    allow_random_init: bool = False,
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
    codec = parse_codec(codec) if isinstance(codec, str) else codec
    built: list[Components] = []

    def components() -> Components:
        """Built once, when a task first has work left; every chosen task's codec is checked
        then, so a refusal comes before any task's teacher runs."""
        if not built:
            online = without_caches(recipe)
            built.append(build_components(online, allow_random_init=allow_random_init))
            for name in chosen:
                check_codec(codec, built[0].tasks[name], name)
        return built[0]

    reports = []
    for name in chosen:
        folder = output / name if output is not None else Path(recipe.tasks[name].targets_cache)
        reports.append(
            build_cache(
                recipe,
                name,
                folder,
                codec=codec,
                allow_random_init=allow_random_init,
                components=components,
                **options,
            )
        )
    return reports


def _concerns(path: str, teachers: set[str], tasks: list[str]) -> bool:
    parts = path.split(".")
    return (parts[0] == "teachers" and parts[1] in teachers) or (
        parts[0] == "tasks" and parts[1] in tasks
    )
