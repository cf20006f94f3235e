"""A task's data drawn from several sources in declared proportions (per-teacher data routing)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from pydantic import Field, model_validator
from torch.utils.data import Dataset, IterableDataset

from mergekit_vision.data.base import DATASETS, SKIPPED, ImageDataset, ResizeMode
from mergekit_vision.data.views import stable_seed
from mergekit_vision.recipe.specs import DatasetSpec
from mergekit_vision.registry import PluginParams

SOURCE = "source"  # the sample field naming the source it was drawn from


class MixtureSource(DatasetSpec):
    """One source of a mixture: a dataset entry as a task's ``data:``, its share and its name."""

    name: str | None = Field(None, description="the source's id in samples (default: its type)")
    weight: float = Field(1.0, gt=0, description="its share of the mixture, relative to the rest")

    @property
    def id(self) -> str:
        return self.name if self.name is not None else self.type


@DATASETS.register("mixture")
class MixtureDataset(ImageDataset, Dataset):
    """Samples drawn from several datasets in proportion to their weights, each tagged with its
    source.

    DUNE (Sariyildiz et al., "DUNE: Distilling a Universal Encoder from Heterogeneous 2D and 3D
    Teachers", CVPR 2025, arXiv 2503.14405) distils teachers trained on very different domains
    and studies which data each teacher is distilled on: its own domain's, or that shared with
    the others. Every task of a recipe has its own ``data:``, so routing is declared there: a
    task's mixture lists the sources that feed its teacher (its own data and, say, a generic
    set), and a source listed by several tasks reaches each of them.

    One pass of the mixture holds ``length`` samples (default: all sources' lengths together),
    of which source ``s`` gets exactly ``length * w_s / sum(w)`` rounded by largest remainder;
    the engine shuffles the pass with its seeded permutation, so every epoch a task draws each
    source in exactly its share. Source ``s``'s slots take its samples in a seeded permutation
    (a fixed subset when it holds more than its share; cycled through fresh permutations when
    it holds fewer). Each sample keeps ``image`` and the skip records of its source's, gets the
    key ``"<source>/<key>"`` and ``"source"``, the source's id, so what each task was routed can
    be counted (``batch["source"]``). Masks and other fields are dropped (sources differ in
    them), so ``has_masks`` is False: SAM tasks on a mixture prompt from the teacher's masks.

    Each source is built at the task's resolution and resize, with a seed of the run seed and
    its id: a source listed in two tasks' mixtures yields the same samples in both.
    """

    class Params(PluginParams):
        sources: list[MixtureSource] = Field(min_length=1)
        length: int | None = Field(
            None, ge=1, description="samples per pass (default: the sources' lengths summed)"
        )

        @model_validator(mode="after")
        def _distinct_ids(self) -> MixtureDataset.Params:
            ids = [source.id for source in self.sources]
            repeated = sorted({i for i in ids if ids.count(i) > 1})
            if repeated:
                raise ValueError(
                    f"sources {', '.join(map(repr, repeated))} appear more than once; give each "
                    "source a distinct 'name'"
                )
            return self

    def __init__(
        self, *, sources: dict[str, Dataset], weights: list[float], length: int | None, seed: int
    ):
        """
        Args:
            sources: the map-style datasets by id, in declaration order.
            weights: their relative shares (positive).
            length: samples per pass; None for the sources' lengths summed.
            seed: with each source's id, the order its samples are taken in.
        """
        self.sources = sources
        self.names = list(sources)
        sizes = [len(dataset) for dataset in sources.values()]  # type: ignore[arg-type]
        for name, size in zip(self.names, sizes, strict=True):
            if size == 0:
                raise ValueError(f"mixture source {name!r} has no samples")
        self.length = sum(sizes) if length is None else length
        self.counts = allocate(self.length, weights)
        for name, count in zip(self.names, self.counts, strict=True):
            if count == 0:
                raise ValueError(
                    f"mixture source {name!r} gets no sample of a pass of {self.length}; raise "
                    "its weight or the mixture's length"
                )
        # slot -> (source, index in it): source s's slots follow one another (the engine shuffles)
        self.slot_source = torch.repeat_interleave(torch.tensor(self.counts))
        self.slot_index = torch.cat(
            [
                _taken(size, count, seed=stable_seed(seed, "mixture", name))
                for name, size, count in zip(self.names, sizes, self.counts, strict=True)
            ]
        )

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> MixtureDataset:
        sources: dict[str, Dataset] = {}
        for i, source in enumerate(params.sources):
            dataset = DATASETS.get(source.type).build(
                source.params,
                resolution=resolution,
                resize=resize,
                seed=stable_seed(seed, "mixture source", source.id) % 2**31,
                max_masks=max_masks,
            )
            if isinstance(dataset, IterableDataset):
                raise ValueError(
                    f"data.params.sources.{i}: {source.type!r} is a stream; a mixture draws "
                    "from map-style datasets (an image folder, COCO, SA-1B, ...)"
                )
            sources[source.id] = dataset
        weights = [source.weight for source in params.sources]
        return cls(sources=sources, weights=weights, length=params.length, seed=seed)

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        fields = {}
        for i, source in enumerate(params.sources):
            inner = DATASETS.get(source.type).path_fields(source.params)
            fields.update({f"sources.{i}.params.{k}": path for k, path in inner.items()})
        return fields

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not 0 <= index < self.length:
            raise IndexError(f"mixture: index {index} out of range [0, {self.length})")
        name = self.names[int(self.slot_source[index])]
        sample = self.sources[name][int(self.slot_index[index])]
        out = {"image": sample["image"], "key": f"{name}/{sample.get('key', '')}", SOURCE: name}
        if SKIPPED in sample:
            out[SKIPPED] = sample[SKIPPED]
        return out


def allocate(length: int, weights: list[float]) -> list[int]:
    """``length`` slots shared in proportion to ``weights`` by largest remainder (Hamilton's
    method): counts sum to ``length`` and each is within 1 of its exact share."""
    total = sum(weights)
    shares = [length * w / total for w in weights]
    counts = [math.floor(share) for share in shares]
    by_remainder = sorted(range(len(shares)), key=lambda i: (counts[i] - shares[i], i))
    for i in by_remainder[: length - sum(counts)]:
        counts[i] += 1
    return counts


def _taken(size: int, count: int, *, seed: int) -> torch.Tensor:
    """The indices of a source's ``count`` slots: its ``size`` samples in seeded permutations,
    a fresh one per pass over it."""
    passes = -(-count // size)
    orders = [
        torch.randperm(size, generator=torch.Generator().manual_seed((seed + p) % 2**63))
        for p in range(passes)
    ]
    return torch.cat(orders)[:count]
