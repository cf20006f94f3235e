"""The recipe's ``eval:`` section: what ``vmerge eval`` measures, on which data."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from mergekit_vision.recipe.ranges import MAX_BATCH, MAX_COUNT, MAX_SIDE, Count, Side
from mergekit_vision.recipe.specs import DatasetSpec, Frozen

# A few of CLIP's ImageNet prompt templates (Radford et al. 2021); recipes may give all 80.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a drawing of a {}.",
)


class EvalSpec(Frozen):
    """What ``vmerge eval`` measures: which teachers and heads play which role, on which data.

    ``classification`` (``image_classes`` layout) gives zero-shot top-1; ``instances`` (COCO JSON)
    gives promptable-segmentation mIoU and mask AP; ``semantic`` (VOC layout) gives zero-shot
    semantic segmentation, its first ``calibration_samples`` images choosing each model's
    background threshold.
    """

    clip_teacher: str
    sam_teacher: str
    clip_head: str
    sam_head: str
    classification: DatasetSpec | None = None
    instances: DatasetSpec | None = None
    semantic: DatasetSpec | None = None
    resolution: int = Field(ge=8, le=MAX_SIDE, description="main evaluation side in px")
    extra_resolutions: list[Side] = Field(default_factory=list)
    batch_size: int = Field(16, ge=1, le=MAX_BATCH)
    max_prompts_per_image: Count = 8
    calibration_samples: int = Field(16, ge=0, le=MAX_COUNT)
    points_per_class: int = Field(3, ge=1, le=16)
    refined_mask_class: Literal["pooled", "vote"] = Field(
        "pooled",
        description="how refined semseg classifies each SAM-head mask: the CLIP head's pooled "
        "embedding of the mask ('pooled') or its per-patch class probabilities averaged over the "
        "mask ('vote')",
    )
    pipeline_grid: int = Field(
        8, ge=2, le=1024, description="SAM point grid of the two-model pipeline"
    )
    pictures: int = Field(4, ge=0, le=MAX_COUNT)
    teacher_results: Path | None = Field(
        None,
        description="JSON file to keep the teachers' and pipeline's results in and reuse them "
        "from while the teachers and evaluation data are unchanged (vmerge compare sets it)",
    )
    templates: list[str] = Field(
        default_factory=lambda: list(DEFAULT_TEMPLATES),
        description="prompt templates for class names, e.g. 'a photo of a {}.'",
    )
