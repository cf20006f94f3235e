"""The two-model baseline SAM-CLIP compares against (arXiv 2310.15308, table 4): a promptable
teacher's masks from a point grid, each crop classified by a text-aligned teacher; its mIoU and
its cost per image (see :mod:`mergekit_vision.eval.pipeline`)."""

from __future__ import annotations

from typing import Any

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.tasks import Segmenter


@METRICS.register("pipeline_semseg")
class PipelineSemseg(Metric):
    """mIoU and cost of the mask-then-classify pipeline of two teachers on the semantic data."""

    needs = frozenset({"mask_then_classify"})
    reads = "semantic"
    values = (
        Value("semseg_miou"),
        Value("seconds_per_image", higher_is_better=False),
        Value("gflops_per_image", higher_is_better=False),
    )
    ability = "semantic segmentation"

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        pipeline = model.pipeline(evaluation.texts(model, dataset, skip_background=True))
        segmenter = Segmenter(prepare=pipeline.prepare, labels=pipeline.labels)
        result = evaluation.semseg(pipeline.prepare, dataset, pipeline=pipeline.labels)
        threshold = result["pipeline"]["threshold"]
        out = {"semseg_miou": result["pipeline"]["miou"], "semseg_threshold": threshold}
        out.update(evaluation.cost(lambda x: segmenter(x, threshold), dataset))
        return out
