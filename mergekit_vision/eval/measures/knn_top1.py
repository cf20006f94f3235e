"""k-NN top-1 on frozen summary features: cosine, k = 20, votes weighted by
``exp(similarity / 0.07)``, DINO's evaluation (Caron et al. 2021, arXiv 2104.14294), as
agglomerative models are compared with their teachers (AM-RADIO, arXiv 2312.06709)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mergekit_vision.eval.metric import METRICS, ProbeMetric, ProbeParams, Value
from mergekit_vision.eval.probes import knn_top1


@METRICS.register("knn_top1")
class KnnTop1(ProbeMetric):
    """k-NN top-1 of summary features: ``train`` images vote, the classification data is scored
    (runs only when ``params.train`` names the train split)."""

    needs = frozenset({"summary"})
    reads = "classification"
    values = (Value("knn_top1"),)
    ability = "frozen-feature probes"

    feature = "summary"
    label = "label"

    class Params(ProbeParams):
        k: int = Field(20, ge=1, le=1000)
        temperature: float = Field(0.07, gt=0, le=10)

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        split = self.split_features(model, evaluation)
        if split is None:
            return {}
        top1 = knn_top1(
            *split,
            k=self.params.k,
            temperature=self.params.temperature,
            num_classes=len(dataset.class_names),
        )
        return {"knn_top1": top1}
