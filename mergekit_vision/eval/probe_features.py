"""Frozen features for the probes: one pass of a model over a dataset, features and labels kept
in memory (on the CPU) so every probe of that model and data reads the same tensors."""

from __future__ import annotations

from typing import Any

import torch
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
