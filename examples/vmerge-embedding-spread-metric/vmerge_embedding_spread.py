"""An evaluation metric from outside mergekit-vision: how spread out a model's image embeddings
are (1 - mean pairwise cosine), a collapse check; registered through the entry-point group
``mergekit_vision.metrics`` (see pyproject.toml)."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field

from mergekit_vision.eval.metric import Metric, Value
from mergekit_vision.eval.tasks import batches
from mergekit_vision.registry import PluginParams


class EmbeddingSpread(Metric):
    """1 - mean pairwise cosine of the image embeddings of the classification images."""

    needs = frozenset({"text_image_embedding"})
    reads = "classification"
    values = (Value("embedding_spread"),)
    ability = "embedding health"

    class Params(PluginParams):
        max_images: int = Field(64, ge=2)

    @torch.no_grad()
    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        rows = []
        batch_size = evaluation.spec.batch_size
        for batch in batches(dataset, batch_size=batch_size, stop=self.params.max_images):
            rows.append(torch.nn.functional.normalize(model.embed_images(batch["image"]), dim=-1))
        embeddings = torch.cat(rows)
        cosine = embeddings @ embeddings.T
        count = len(embeddings)
        mean_off_diagonal = (cosine.sum() - cosine.diagonal().sum()) / (count * (count - 1))
        return {"embedding_spread": float(1.0 - mean_off_diagonal)}
