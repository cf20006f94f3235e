"""Image-text retrieval Recall@1/5 in both directions on captioned images (Karpathy splits of
Flickr30k / COCO-Captions, Karpathy & Fei-Fei 2015; reported by CLIP, arXiv 2103.00020, and
SAM-CLIP, arXiv 2310.15308): each image ranks every caption and each caption every image by
cosine similarity (see :func:`mergekit_vision.eval.retrieval.retrieval_recall`)."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.retrieval import retrieval_recall
from mergekit_vision.eval.tasks import batches
from mergekit_vision.registry import PluginParams


@METRICS.register("retrieval")
class Retrieval(Metric):
    """Image-to-text and text-to-image Recall@1 and @5 on the eval section's captions data."""

    needs = frozenset({"text_image_embedding"})
    reads = "captions"
    values = (
        Value("image_to_text_R@1"),
        Value("image_to_text_R@5"),
        Value("text_to_image_R@1"),
        Value("text_to_image_R@5"),
    )
    ability = "image-text retrieval"

    class Params(PluginParams):
        text_batch: int = Field(256, ge=1, le=65536, description="captions embedded per call")

    @torch.no_grad()
    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        images, captions, owner = [], [], []  # owner: the image index of each caption
        for batch in batches(dataset, batch_size=evaluation.spec.batch_size):
            first = sum(len(e) for e in images)
            images.append(model.embed_images(batch["image"]).float())
            for index, one in enumerate(batch["captions"]):
                owner.extend([first + index] * len(one))
                captions.extend(one)
        step = self.params.text_batch
        texts = torch.cat(
            [
                model.text_tower.embed_texts(captions[i : i + step]).float()
                for i in range(0, len(captions), step)
            ]
        )
        return retrieval_recall(
            F.normalize(torch.cat(images), dim=-1),
            F.normalize(texts, dim=-1),
            torch.tensor(owner, dtype=torch.long),
        )
