"""Plain parameter models of a task's samples: augmentation views and SAM prompts.

They belong to the schema (a task's ``augment:`` and ``prompts:``), so they live here, free of
torch; :mod:`mergekit_vision.data.views` and :mod:`mergekit_vision.sam.prompts` apply them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from mergekit_vision.recipe.ranges import MAX_PROMPTS
from mergekit_vision.registry import PluginParams


class AugmentSpec(BaseModel):
    """``scale``: range of the crop's share of the image area (1 = no crop); ``hflip``: flip
    half of the views horizontally."""

    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False)

    scale: tuple[float, float] = (1.0, 1.0)
    hflip: bool = False

    @model_validator(mode="after")
    def _ordered(self) -> AugmentSpec:
        low, high = self.scale
        if not 0 < low <= high <= 1:
            raise ValueError(f"scale must satisfy 0 < low <= high <= 1, got {list(self.scale)}")
        return self


class PromptSamplerParams(PluginParams):
    """A SAM task's prompts; ``source: auto`` uses ground truth when the dataset has masks."""

    model_config = ConfigDict(allow_inf_nan=False)

    points_per_image: int = Field(default=16, ge=0, le=MAX_PROMPTS)
    boxes_per_image: int = Field(default=16, ge=0, le=MAX_PROMPTS)
    box_noise: float = Field(default=0.1, ge=0.0)
    source: Literal["auto", "ground_truth", "teacher"] = "auto"

    @model_validator(mode="after")
    def _some_prompt(self) -> PromptSamplerParams:
        if self.points_per_image + self.boxes_per_image == 0:
            raise ValueError(
                "no prompts: give points_per_image or boxes_per_image of at least 1 "
                "(or leave 'prompts' out for the defaults)"
            )
        return self
