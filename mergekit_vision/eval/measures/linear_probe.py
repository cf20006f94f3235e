"""Linear-probe top-1: logistic regression on frozen, cached summary features with a fixed small
budget (DINO, arXiv 2104.14294; AM-RADIO, arXiv 2312.06709; see
:func:`mergekit_vision.eval.probes.linear_probe_top1`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mergekit_vision.eval.metric import Metric, Value
from mergekit_vision.eval.probes import linear_probe_top1
from mergekit_vision.recipe.specs import DatasetSpec
from mergekit_vision.registry import METRICS, PluginParams


@METRICS.register("linear_probe")
class LinearProbe(Metric):
    """Linear-probe top-1 of summary features, trained on ``train``, scored on the
    classification data (runs only when ``params.train`` names the train split)."""

    needs = frozenset({"summary"})
    reads = "classification"
    values = (Value("linear_probe_top1"),)
    ability = "frozen-feature probes"

    class Params(PluginParams):
        train: DatasetSpec | None = Field(None, description="the probe's train split")
        epochs: int = Field(100, ge=1, le=100_000)
        lr: float = Field(0.1, gt=0, le=10)
        seed: int = 0

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        params = self.params
        if params.train is None:
            return {}
        train, train_labels = evaluation.features(model, "summary", params.train, "label")
        test, test_labels = evaluation.features(
            model, "summary", evaluation.spec.classification, "label"
        )
        top1 = linear_probe_top1(
            train,
            train_labels,
            test,
            test_labels,
            num_classes=len(dataset.class_names),
            epochs=params.epochs,
            lr=params.lr,
            seed=params.seed,
        )
        return {"linear_probe_top1": top1}
