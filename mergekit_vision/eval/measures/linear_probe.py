"""Linear-probe top-1: logistic regression on frozen, cached summary features with a fixed small
budget (DINO, arXiv 2104.14294; AM-RADIO, arXiv 2312.06709; see
:func:`mergekit_vision.eval.probes.linear_probe_top1`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mergekit_vision.eval.metric import METRICS, ProbeMetric, ProbeParams, Value
from mergekit_vision.eval.probes import linear_probe_top1


@METRICS.register("linear_probe")
class LinearProbe(ProbeMetric):
    """Linear-probe top-1 of summary features, trained on ``train``, scored on the
    classification data (runs only when ``params.train`` names the train split)."""

    needs = frozenset({"summary"})
    reads = "classification"
    values = (Value("linear_probe_top1"),)
    ability = "frozen-feature probes"

    feature = "summary"
    label = "label"

    class Params(ProbeParams):
        epochs: int = Field(100, ge=1, le=100_000)
        lr: float = Field(0.1, gt=0, le=10)
        seed: int = 0

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        split = self.split_features(model, evaluation)
        if split is None:
            return {}
        top1 = linear_probe_top1(
            *split,
            num_classes=len(dataset.class_names),
            epochs=self.params.epochs,
            lr=self.params.lr,
            seed=self.params.seed,
        )
        return {"linear_probe_top1": top1}
