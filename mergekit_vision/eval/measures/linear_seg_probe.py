"""Linear semantic-segmentation probe: a 1x1 conv trained on frozen, cached dense features of a
train split, bilinearly upsampled logits, mIoU on the eval section's semantic data (DINOv2,
arXiv 2304.07193; AM-RADIO, arXiv 2312.06709; see
:func:`mergekit_vision.eval.probes.linear_seg_probe_miou`)."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from mergekit_vision.eval.metric import METRICS, ProbeMetric, ProbeParams, Value
from mergekit_vision.eval.probes import linear_seg_probe_miou


@METRICS.register("linear_seg_probe")
class LinearSegProbe(ProbeMetric):
    """Linear-probe mIoU of dense features, trained on ``train`` (a VOC-layout split), scored
    on the semantic data (runs only when ``params.train`` names the train split)."""

    needs = frozenset({"dense"})
    reads = "semantic"
    values = (Value("linear_seg_probe_miou"),)
    ability = "frozen-feature probes"

    feature = "dense"
    label = "semantic"

    class Params(ProbeParams):
        epochs: int = Field(20, ge=1, le=100_000)
        lr: float = Field(0.05, gt=0, le=10)
        seed: int = 0

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        split = self.split_features(model, evaluation)
        if split is None:
            return {}
        miou = linear_seg_probe_miou(
            *split,
            num_classes=len(dataset.class_names),
            epochs=self.params.epochs,
            lr=self.params.lr,
            seed=self.params.seed,
            batch_size=evaluation.spec.batch_size,
        )
        return {"linear_seg_probe_miou": miou}
