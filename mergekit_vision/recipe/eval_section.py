"""The recipe's ``eval:`` section: what ``vmerge eval`` measures, on which data."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from pydantic import Field, model_validator

from mergekit_vision.recipe.ranges import MAX_BATCH, MAX_COUNT, MAX_SIDE, Count, Side
from mergekit_vision.recipe.specs import DatasetSpec, Frozen, PluginSpec
from mergekit_vision.registry import HeadName, TeacherName

# A few of CLIP's ImageNet prompt templates (Radford et al. 2021); recipes may give all 80.
DEFAULT_TEMPLATES = (
    "a photo of a {}.",
    "a bad photo of a {}.",
    "a photo of the large {}.",
    "a photo of the small {}.",
    "a cropped photo of a {}.",
    "a drawing of a {}.",
)


# The fixed roles of the first eval sections, read as the models they named.
OLD_ROLES = {
    "clip_teacher": "teachers",
    "sam_teacher": "teachers",
    "clip_head": "heads",
    "sam_head": "heads",
}


class MetricSpec(PluginSpec):
    kind = "metrics"


class EvalSpec(Frozen):
    """What ``vmerge eval`` measures: which models, by which metrics, on which data.

    ``teachers`` names the teachers to evaluate (all of the recipe's by default) and ``heads``
    the merged model's heads to evaluate it through (all by default); ``metrics`` lists metric
    plugins (every registered one by default), each run on every model that offers what it needs
    (``vmerge plugins`` lists them; docs/evaluation.md describes them).

    ``classification`` (``image_classes`` layout) gives zero-shot top-1; ``instances`` (COCO JSON)
    gives promptable-segmentation mIoU and mask AP; ``semantic`` (VOC layout) gives zero-shot
    semantic segmentation, its first ``calibration_samples`` images choosing each model's
    background threshold; ``captions`` (``captions`` plugin) gives image-text retrieval; ``depth``
    (``depth_folder`` plugin) gives relative depth's AbsRel and delta1.

    The old role keys (``clip_teacher``, ``sam_teacher``, ``clip_head``, ``sam_head``) are read as
    ``teachers: [clip_teacher, sam_teacher]`` and ``heads: [clip_head, sam_head]``.
    """

    teachers: list[TeacherName] | None = Field(
        None, description="teachers to evaluate, by recipe name (default: all)"
    )
    heads: list[HeadName] | None = Field(
        None, description="the merged model's heads to evaluate, by recipe name (default: all)"
    )
    metrics: list[MetricSpec] | None = Field(
        None, description="metric plugins to run (default: every registered metric)"
    )
    classification: DatasetSpec | None = None
    instances: DatasetSpec | None = None
    semantic: DatasetSpec | None = None
    captions: DatasetSpec | None = Field(
        None, description="captioned images (e.g. a Karpathy-split JSON) for retrieval"
    )
    depth: DatasetSpec | None = Field(
        None, description="images with ground-truth depth (e.g. depth_folder) for relative depth"
    )
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

    @model_validator(mode="before")
    @classmethod
    def _old_roles(cls, data: Any) -> Any:
        """Map the old role keys onto ``teachers`` and ``heads`` (in role order)."""
        if not isinstance(data, dict) or not any(key in data for key in OLD_ROLES):
            return data
        data = dict(data)
        for key, section in OLD_ROLES.items():
            if key not in data:
                continue
            name = data.pop(key)
            if section in cls._given(data, key):
                raise ValueError(
                    f"eval.{key} is the old form of eval.{section}; give one of them "
                    f"(write {section}: [...] and drop {key})"
                )
            data.setdefault(f"_{section}", []).append(name)
        for section in ("teachers", "heads"):
            if f"_{section}" in data:
                data[section] = data.pop(f"_{section}")
        return data

    @staticmethod
    def _given(data: dict[str, Any], key: str) -> set[str]:
        return {s for s in ("teachers", "heads") if s in data and OLD_ROLES[key] == s}
