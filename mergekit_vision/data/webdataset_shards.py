"""WebDataset tar shards of images (the usual format of web-scale image sets such as CC12M)."""

from __future__ import annotations

import io
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
import webdataset as wds
from pydantic import Field
from torch.utils.data import IterableDataset

from mergekit_vision.data.base import DATASETS, ImageDataset, ResizeMode
from mergekit_vision.data.skips import UndecodableSampleError, decoding, readable_stream
from mergekit_vision.data.transforms import load_image, missing_path_error, resize_image
from mergekit_vision.registry import PluginParams

NodeSplitter = Callable[[Iterator[Any]], Iterator[Any]]


def expand_shards(urls: str) -> list[str]:
    """``"/d/{000..002}.tar"`` -> the three shard paths (``::`` separates several patterns)."""
    return list(wds.shardlists.expand_urls(urls))


def _is_local(url: str) -> bool:
    scheme = urlparse(url).scheme
    return scheme in ("", "file") or len(scheme) == 1  # one letter: a Windows drive


@DATASETS.register("webdataset")
class WebDatasetShards(ImageDataset, IterableDataset):
    """Images streamed from WebDataset tar shards; the sample key is the shard's ``__key__``.

    Order: shards are visited in pattern order, or in a permutation drawn from ``seed`` when
    ``shuffle_buffer > 0``, and samples then pass a shuffle buffer of that size seeded from
    ``seed`` and the epoch (:meth:`set_epoch`). The order is thus fixed by the seed, the epoch and
    the number of DataLoader workers.

    Splitting: DataLoader workers each read a disjoint subset of shards (``wds.split_by_worker``),
    so use at least as many shards as workers. Multi-rank training passes ``node_splitter`` (e.g.
    ``wds.split_by_node``) to the constructor to give each rank its own shards; without one,
    webdataset refuses to run under torch.distributed rather than silently duplicate data.

    A sample whose image cannot be decoded, or that has no image field, is skipped; its record
    rides with the next sample (:mod:`mergekit_vision.data.skips`).
    """

    has_masks = False

    class Params(PluginParams):
        urls: str
        image_keys: tuple[str, ...] = ("jpg", "jpeg", "png", "webp")
        shuffle_buffer: int = Field(default=0, ge=0)
        num_samples: int | None = Field(default=None, ge=1)

    def __init__(
        self,
        *,
        shards: list[str],
        image_keys: tuple[str, ...],
        resolution: int,
        resize: ResizeMode,
        seed: int,
        shuffle_buffer: int = 0,
        num_samples: int | None = None,
        node_splitter: NodeSplitter | None = None,
    ):
        """
        Args:
            shards: shard paths or URLs, in their unshuffled order.
            image_keys: sample fields that may hold the image, tried in order (e.g. ``"jpg"``).
            resolution: side ``R`` of the square output images.
            resize: ``"pad"`` or ``"crop"``.
            seed: seeds the shard permutation and the sample shuffle buffer.
            shuffle_buffer: samples held for shuffling; 0 streams in shard order.
            num_samples: the nominal epoch length reported by ``len()``; the stream itself is not
                cut (each worker reads its shards to the end).
            node_splitter: splits the shard list across ranks; None means single-node only.
        """
        super().__init__()
        self.shards, self.image_keys = shards, image_keys
        self.resolution, self.resize, self.seed = resolution, resize, seed
        self.shuffle_buffer, self.num_samples = shuffle_buffer, num_samples
        self.node_splitter = node_splitter
        self.epoch = 0

    @classmethod
    def build(
        cls, params: Any, *, resolution: int, resize: ResizeMode, seed: int, max_masks: int = 64
    ) -> WebDatasetShards:
        problems = cls.check_paths(params)
        if problems:
            raise missing_path_error(
                dataset="webdataset",
                field="urls",
                path=params.urls,
                what="names shards that do not exist: " + "; ".join(problems),
                hint="fix the brace pattern or the shard folder",
            )
        return cls(
            shards=expand_shards(params.urls),
            image_keys=params.image_keys,
            resolution=resolution,
            resize=resize,
            seed=seed,
            shuffle_buffer=params.shuffle_buffer,
            num_samples=params.num_samples,
        )

    @classmethod
    def check_paths(cls, params: Any) -> list[str]:
        """Problems with the shard pattern: missing local shards (remote URLs are not checked)."""
        shards = expand_shards(params.urls)
        if not shards:
            return [f"pattern {params.urls!r} expands to no shards"]
        local = [s for s in shards if _is_local(s)]
        missing = [s for s in local if not Path(urlparse(s).path or s).is_file()]
        if len(missing) > 5:
            return [*missing[:5], f"... and {len(missing) - 5} more of {len(shards)} shards"]
        return missing

    @classmethod
    def path_fields(cls, params: Any) -> dict[str, Path]:
        # Only the first shard: a full check of every shard is check_paths().
        first = expand_shards(params.urls)[:1]
        return {"urls": Path(first[0])} if first and _is_local(first[0]) else {}

    def set_epoch(self, epoch: int) -> None:
        """Reseed the shuffles for ``epoch`` (call before iterating, as with DistributedSampler)."""
        self.epoch = epoch

    def __len__(self) -> int:
        if self.num_samples is None:
            raise TypeError("webdataset: set params.num_samples to give the stream a length")
        return self.num_samples

    def __iter__(self) -> Iterator[dict[str, Any]]:
        epoch_seed = self.seed * 1_000_003 + self.epoch
        shards = self._shard_order(epoch_seed)
        pipeline = wds.WebDataset(
            shards,
            shardshuffle=False,  # shuffled above with our own seed
            empty_check=False,
            nodesplitter=self.node_splitter or wds.shardlists.single_node_only,
            workersplitter=wds.shardlists.split_by_worker,
        )
        if self.shuffle_buffer > 0:
            pipeline = pipeline.shuffle(self.shuffle_buffer, rng=random.Random(epoch_seed))
        yield from readable_stream(pipeline, self._decode)

    def _shard_order(self, epoch_seed: int) -> list[str]:
        if self.shuffle_buffer == 0:
            return list(self.shards)
        generator = torch.Generator().manual_seed(epoch_seed)
        return [self.shards[i] for i in torch.randperm(len(self.shards), generator=generator)]

    def _decode(self, sample: dict[str, Any]) -> dict[str, Any]:
        key = str(sample["__key__"])
        field = next((k for k in self.image_keys if k in sample), None)
        if field is None:
            fields = sorted(k for k in sample if not k.startswith("__"))
            raise UndecodableSampleError(
                f"{sample.get('__url__', '?')}:{key}",
                f"no image field among {list(self.image_keys)}; it has {fields}",
            )
        where = f"{sample.get('__url__', '?')}:{key}.{field}"
        with decoding(where):
            image = load_image(io.BytesIO(sample[field]), name=where)
        return {
            "image": resize_image(image, resolution=self.resolution, mode=self.resize),
            "key": key,
        }
