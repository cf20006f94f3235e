"""Promptable segmentation: single-point and box-prompted mask IoU against each instance (SAM's
protocol, Kirillov et al. 2023, arXiv 2304.02643, sec. 7.1), and box-prompted COCO mask AP through
pycocotools (Lin et al. 2014), the forgetting measure SAM-CLIP tracks (arXiv 2310.15308)."""

from __future__ import annotations

from typing import Any

from mergekit_vision.eval.metric import METRICS, Metric, Value
from mergekit_vision.eval.tasks import promptable_segmentation


@METRICS.register("promptable_segmentation")
class PromptableSegmentation(Metric):
    """Point and box mIoU and box-prompted mask AP on the instance data, one decoding pass."""

    needs = frozenset({"promptable_masks"})
    reads = "instances"
    values = (
        Value("prompt_seg_miou"),
        Value("prompt_seg_miou_box"),
        Value("mask_ap"),
        Value("mask_ap50"),
    )
    ability = "promptable segmentation"

    def compute(self, model: Any, dataset: Any, evaluation: Any) -> dict[str, float]:
        spec = evaluation.spec
        return promptable_segmentation(
            model, dataset, max_prompts=spec.max_prompts_per_image, batch_size=spec.batch_size
        )
