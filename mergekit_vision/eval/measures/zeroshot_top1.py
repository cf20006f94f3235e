"""Zero-shot classification top-1: each image's embedding against its text tower's class
prompts (CLIP, Radford et al. 2021, arXiv 2103.00020; SAM-CLIP reports it, arXiv 2310.15308)."""

from __future__ import annotations

from typing import Any

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.tasks import zero_shot_top1


@METRICS.register("zeroshot_top1")
class ZeroShotTop1(Metric):
    """Zero-shot top-1 accuracy on the classification data (prompt-template averaged texts)."""

    needs = frozenset({"text_image_embedding"})
    reads = "classification"
    values = (Value("zeroshot_cls_top1"),)
    ability = "classification"

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        texts = evaluation.texts(model, dataset, skip_background=False)
        top1 = zero_shot_top1(model, dataset, texts, batch_size=evaluation.spec.batch_size)
        return {"zeroshot_cls_top1": top1}
