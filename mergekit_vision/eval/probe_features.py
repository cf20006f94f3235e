"""Frozen features for the probes: one pass of a model over a dataset, features and labels kept
in memory (on the CPU) so every probe of that model and data reads the same tensors, and a
teacher's kept on disk beside ``eval.teacher_results`` to be read back by later evaluations."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from mergekit_vision.eval.tasks import batches


@torch.no_grad()
def frozen_features(
    model: Any, kind: str, dataset: Any, label: str, batch_size: int
) -> tuple[Tensor, Tensor]:
    """``(features, labels)``: ``[N, D]`` summary or ``[N, C, h, w]`` dense features and the
    samples' ``label`` (``[N]`` classes or ``[N, H, W]`` label maps)."""
    extract = model.summary_features if kind == "summary" else model.dense_features
    features, labels = [], []
    for batch in batches(dataset, batch_size=batch_size):
        features.append(extract(batch["image"]).float().cpu())
        labels.append(torch.as_tensor(batch[label]).long())
    return torch.cat(features), torch.cat(labels)


class FeatureStore:
    """Frozen features on disk, one safetensors file per key, so a teacher's probe features are
    computed once for all the runs that evaluate it (``vmerge compare``'s variants share their
    teachers); without a folder nothing is stored."""

    def __init__(self, folder: Path | None):
        self.folder = folder

    def get(
        self, key: dict[str, Any], compute: Callable[[], tuple[Tensor, Tensor]]
    ) -> tuple[Tensor, Tensor]:
        """The stored ``(features, labels)`` for ``key`` (any JSON-able description of what
        they depend on), else ``compute()``'s, stored."""
        if self.folder is None:
            return compute()
        digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:32]
        path = self.folder / f"{digest}.safetensors"
        if path.is_file():
            try:
                stored = load_file(path)
                return stored["features"], stored["labels"]
            except (OSError, KeyError, SafetensorError):
                pass  # a torn write from an interrupted run: compute again
        features, labels = compute()
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        save_file({"features": features.contiguous(), "labels": labels.contiguous()}, tmp)
        tmp.replace(path)
        return features, labels
