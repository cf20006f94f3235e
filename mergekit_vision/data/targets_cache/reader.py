"""Serve a task's cached targets in training, after checking the cache fits the recipe.

:func:`open_target_sources` (called by ``vmerge run`` and the tools for the tasks with a
``targets_cache``) refuses a cache that is missing, unfinished or computed from anything else than
the recipe says (teacher checkpoint, resolution, views, augmentation, prompts, dataset), naming
the difference; the builder then checks it against the task's dataset. During training the
engine's step asks it, the task's target source, for the prompts and target of each keyed view
in place of the teacher; shards are memory-mapped, so only the rows a batch needs are read, and
each row is decoded by the cache's codec (:mod:`.codecs`) to float32.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from torch import Tensor

from mergekit_vision.contracts import Prompts
from mergekit_vision.data.targets_cache.codecs import (
    codec_from_record,
    manifest_codec,
    state_of,
)
from mergekit_vision.data.targets_cache.manifest import (
    StaleCacheError,
    cache_identity,
    identity_differences,
    read_manifest,
)
from mergekit_vision.recipe.schema import Recipe


def open_target_sources(recipe: Recipe) -> dict[str, CachedTargets]:
    """The cache of every task with a ``targets_cache``, checked against the recipe: what
    :func:`~mergekit_vision.engine.build.build_components` is handed as ``target_sources``."""
    return {
        name: CachedTargets.open(recipe, name)
        for name, spec in recipe.tasks.items()
        if spec.targets_cache is not None
    }


class CachedTargets:
    """Prompts and targets of keyed sample views, read from a cache folder (a task's target
    source, see :class:`~mergekit_vision.engine.build.TargetSource`)."""

    def __init__(self, *, task: str, folder: Path, manifest: dict[str, Any]):
        """
        Args:
            task: the task's recipe name (for error messages).
            folder: the cache folder.
            manifest: its (already checked) manifest.
        """
        self.task, self.folder = task, folder
        self.views = int(manifest["identity"]["views"])
        self.resolutions = list(manifest["identity"]["resolutions"])
        self.samples = int(manifest["samples"])
        self._files = [
            safe_open(str(folder / s["file"]), framework="pt") for s in manifest["shards"]
        ]
        self._rows: dict[str, tuple[int, int]] = {}
        for shard, handle in enumerate(self._files):
            for position, key in enumerate(json.loads(handle.metadata()["keys"])):
                self._rows[key] = (shard, position)
        self._fields = set(self._files[0].keys()) if self._files else set()
        record = manifest_codec(manifest)
        self.codec = codec_from_record(record)
        state = folder / record["state"] if "state" in record else None
        self._shared = load_file(str(state)) if state is not None else {}
        self._shard_state: dict[tuple[int, str], dict[str, Tensor]] = {}

    @classmethod
    def open(cls, recipe: Recipe, task: str, *, dataset: Any = None) -> CachedTargets:
        """The task's cache, or :class:`StaleCacheError` saying what differs and how to fix it.

        ``dataset``: the task's, if built; see :meth:`check_dataset`.
        """
        spec = recipe.tasks[task]
        assert spec.targets_cache is not None
        folder = Path(spec.targets_cache)
        fix = f"run `vmerge cache <recipe> --task {task}` to (re)build it"
        manifest = read_manifest(folder)
        if manifest is None:
            raise StaleCacheError(task, f"no targets cache in {folder} (no manifest.json); {fix}")
        diffs = identity_differences(manifest.get("identity", {}), cache_identity(recipe, task))
        if diffs:
            raise StaleCacheError(
                task,
                f"the cache in {folder} was computed for other settings: {'; '.join(diffs)}; {fix}",
            )
        if not manifest.get("complete"):
            raise StaleCacheError(task, f"the cache in {folder} is unfinished; {fix}")
        try:
            codec_from_record(manifest_codec(manifest))
        except ValueError as err:
            raise StaleCacheError(task, f"the cache in {folder}: {err}; {fix}") from None
        files = [s["file"] for s in manifest["shards"]]
        files += [f for f in [manifest_codec(manifest).get("state")] if f is not None]
        missing = [f for f in files if not (folder / f).is_file()]
        if missing:
            raise StaleCacheError(
                task, f"the cache in {folder} lacks the files {', '.join(missing[:5])}; {fix}"
            )
        cached = cls(task=task, folder=folder, manifest=manifest)
        cached.check_dataset(dataset)
        return cached

    def check_dataset(self, dataset: Any) -> None:
        """Refuse a cache of another number of samples than ``dataset`` (the task's) holds."""
        samples = _length(dataset)
        if samples is not None and self.samples != samples:
            raise StaleCacheError(
                self.task,
                f"the cache in {self.folder} holds {self.samples} samples but the dataset has "
                f"{samples}; run `vmerge cache <recipe> --task {self.task}` to (re)build it",
            )

    def __len__(self) -> int:
        return len(self._rows)

    def prompts(self, batch: dict[str, Any], images: Tensor) -> Prompts:
        """The cached prompts of the batch's views at ``images``' resolution."""
        size = images.shape[-1]
        fields = {f: self._gather(batch, size, f) for f in ("points", "point_labels", "boxes")}
        return Prompts(size, **fields).to(images.device)

    def target(self, batch: dict[str, Any], images: Tensor) -> Tensor:
        """The cached targets ``[B, ...]`` (float32, on ``images``' device) of the batch's views."""
        name = f"{images.shape[-1]}.target"
        decoded = [
            self.codec.decode(rows, self._state(shard, name))
            for shard, rows in self._rows_of(batch, images.shape[-1], "target")
        ]
        return torch.cat(decoded).to(device=images.device, dtype=torch.float32)

    def _gather(self, batch: dict[str, Any], resolution: int, field: str) -> Tensor | None:
        rows = self._rows_of(batch, resolution, field)
        return None if rows is None else torch.cat([r for _, r in rows])

    def _rows_of(
        self, batch: dict[str, Any], resolution: int, field: str
    ) -> list[tuple[int, Tensor]] | None:
        """``(shard, stored row [1, ...])`` of each of the batch's views, in batch order."""
        if resolution not in self.resolutions:
            raise StaleCacheError(
                self.task,
                f"the cache in {self.folder} holds resolutions {self.resolutions}, not "
                f"{resolution}; run `vmerge cache <recipe> --task {self.task}` to rebuild it",
            )
        name = f"{resolution}.{field}"
        if name not in self._fields:
            return None
        rows = []
        for key, view in zip(batch["key"], batch["view"].tolist(), strict=True):
            shard, position = self._locate(key)
            row = position * self.views + view % self.views
            rows.append((shard, self._files[shard].get_slice(name)[row : row + 1]))
        return rows

    def _state(self, shard: int, field: str) -> dict[str, Tensor]:
        """The codec's shared tensors and shard ``shard``'s own (int8's scales) for ``field``."""
        if (shard, field) not in self._shard_state:
            handle = self._files[shard]
            own = {k: handle.get_tensor(k) for k in handle.keys() if k.startswith(field + ".")}
            shared = state_of(self._shared, field)
            self._shard_state[shard, field] = shared | state_of(own, field)
        return self._shard_state[shard, field]

    def stored_size(self) -> CacheSize:
        """What the cached targets take, against the same targets in fp16."""
        stored = fp16 = 0
        for shard, handle in enumerate(self._files):
            for resolution in self.resolutions:
                field = f"{resolution}.target"
                for name in (n for n in handle.keys() if n == field or n.startswith(field + ".")):
                    tensor = handle.get_slice(name)
                    stored += math.prod(tensor.get_shape()) * _ITEM_BYTES[tensor.get_dtype()]
                shape = handle.get_slice(field).get_shape()
                decoded = self.codec.decoded_shape(tuple(shape), self._state(shard, field))
                fp16 += 2 * math.prod(decoded)
        shared = sum(t.numel() * t.element_size() for t in self._shared.values())
        return CacheSize(
            codec=str(self.codec), samples=self.samples, shards=stored, shared=shared, fp16=fp16
        )

    def _locate(self, key: str) -> tuple[int, int]:
        try:
            return self._rows[key]
        except KeyError:
            raise StaleCacheError(
                self.task,
                f"sample {key!r} is not in the cache in {self.folder} (the dataset changed?); "
                f"run `vmerge cache <recipe> --task {self.task} --overwrite` to rebuild it",
            ) from None


_ITEM_BYTES = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1, "U8": 1}


@dataclass(frozen=True)
class CacheSize:
    """Bytes of a cache's stored target tensors (codes, scales, coefficients, basis and mean;
    not the prompts, which every codec keeps alike, nor the files' headers).

    Args:
        codec: the codec, as ``vmerge cache --codec`` names it.
        samples: samples cached (each with every view and resolution).
        shards: bytes of the target tensors in the shard files.
        shared: bytes of the codec's shared tensors (``codec.safetensors``), stored once.
        fp16: bytes the same targets take in fp16.
    """

    codec: str
    samples: int
    shards: int
    shared: int
    fp16: int

    @property
    def bytes_per_image(self) -> float:
        """All target bytes (the shared ones spread over the samples) per sample."""
        return (self.shards + self.shared) / max(self.samples, 1)

    @property
    def fp16_bytes_per_image(self) -> float:
        return self.fp16 / max(self.samples, 1)

    @property
    def ratio_to_fp16(self) -> float:
        """How many times fewer bytes than fp16 (above 1: smaller)."""
        return self.fp16 / max(self.shards + self.shared, 1)


def _length(dataset: Any) -> int | None:
    try:
        return None if dataset is None else len(dataset)
    except TypeError:  # a stream without a nominal length
        return None
