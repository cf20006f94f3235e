"""SAM-CLIP's zero-shot segmentation with both heads (Wang et al., arXiv 2310.15308, sec. 5.2):
the CLIP head's coarse masks give points, the SAM head turns them into masks, each classified
again; with its cost per image (wall time and FLOPs, torch's FLOP counter)."""

from __future__ import annotations

from typing import Any

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.tasks import refined_segmenter


@METRICS.register("refined_semseg")
class RefinedSemseg(Metric):
    """mIoU of the promptable-mask refined zero-shot labels, and their cost per image."""

    needs = frozenset({"text_dense_embedding", "promptable_masks", "shared_encoder"})
    reads = "semantic"
    values = (
        Value("semseg_miou_refined"),
        Value("seconds_per_image", higher_is_better=False),
        Value("gflops_per_image", higher_is_better=False),
    )
    ability = "semantic segmentation"

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        spec = evaluation.spec
        texts = evaluation.texts(model, dataset, skip_background=True)
        refiner = refined_segmenter(
            model,
            texts,
            points_per_class=spec.points_per_class,
            mask_class=spec.refined_mask_class,
        )
        result = evaluation.semseg(refiner.prepare, dataset, refined=refiner.labels)["refined"]
        out = {
            "semseg_miou_refined": result["miou"],
            "semseg_refined_threshold": result["threshold"],
        }
        out.update(evaluation.cost(lambda x: refiner(x, result["threshold"]), dataset))
        return out
