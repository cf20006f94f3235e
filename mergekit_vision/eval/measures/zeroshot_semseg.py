"""Zero-shot semantic segmentation from patch embeddings against class texts (MaskCLIP, Zhou et
al. 2022, arXiv 2112.01071; SAM-CLIP's CLIP-head semseg, arXiv 2310.15308), the background
threshold calibrated on the first ``eval.calibration_samples`` images."""

from __future__ import annotations

from typing import Any

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.tasks import dense_segmenter


@METRICS.register("zeroshot_semseg")
class ZeroShotSemseg(Metric):
    """mIoU of per-patch zero-shot labels on the semantic data (writes its threshold too)."""

    needs = frozenset({"text_dense_embedding"})
    reads = "semantic"
    values = (Value("semseg_miou"),)
    ability = "semantic segmentation"

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        texts = evaluation.texts(model, dataset, skip_background=True)
        dense = dense_segmenter(model, texts)
        result = evaluation.semseg(dense.prepare, dataset, dense=dense.labels)["dense"]
        return {"semseg_miou": result["miou"], "semseg_threshold": result["threshold"]}
