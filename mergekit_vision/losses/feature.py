"""AM-RADIO's feature-matching loss: a cosine and smooth-L1 mix."""

from __future__ import annotations

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from mergekit_vision.contracts import LOSSES, Loss
from mergekit_vision.registry import PluginParams


def align_prediction(prediction: Tensor, target: Tensor, *, loss: str) -> Tensor:
    """``prediction`` resized (bilinearly) to ``target``'s grid when both are ``[B, C, h, w]``.

    A student's token grid need not equal a teacher's (another patch size or input size); the
    prediction is brought to the teacher's grid rather than the target degraded to the student's.
    Any other shape mismatch is an error naming both shapes.
    """
    if prediction.ndim == 4 and target.ndim == 4 and prediction.shape[:2] == target.shape[:2]:
        if prediction.shape[-2:] != target.shape[-2:]:
            prediction = F.interpolate(
                prediction, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
    if prediction.shape != target.shape:
        raise ValueError(
            f"{loss} loss: prediction {tuple(prediction.shape)} and target "
            f"{tuple(target.shape)} differ in shape"
        )
    return prediction


@LOSSES.register("feature")
class FeatureLoss(Loss):
    """``cosine_weight * (1 - cos) + smooth_l1_weight * SmoothL1``, per feature vector.

    AM-RADIO (Ranzinger et al., CVPR 2024, arXiv 2312.06709, sec. 3) matches each teacher's
    features with this mix, ``alpha = 0.9`` cosine and ``beta = 0.1`` smooth-L1: the cosine
    term learns the direction whatever the teacher's scale, the smooth-L1 term its magnitude.
    For summaries ``[B, D]`` each row is one vector; for feature maps ``[B, C, h, w]`` each
    position's ``C``-vector is one (the prediction is first resized to the target's grid).
    """

    class Params(PluginParams):
        cosine_weight: float = Field(0.9, ge=0)
        smooth_l1_weight: float = Field(0.1, ge=0)
        beta: float = Field(1.0, gt=0, description="smooth-L1's switch from L2 to L1")

        @model_validator(mode="after")
        def _some_weight(self) -> FeatureLoss.Params:
            if self.cosine_weight == 0 and self.smooth_l1_weight == 0:
                raise ValueError("cosine_weight and smooth_l1_weight cannot both be 0")
            return self

    def __init__(
        self, *, cosine_weight: float = 0.9, smooth_l1_weight: float = 0.1, beta: float = 1.0
    ):
        """
        Args:
            cosine_weight: weight of the mean cosine distance.
            smooth_l1_weight: weight of the elementwise smooth-L1 mean.
            beta: smooth-L1's threshold between its quadratic and linear parts.
        """
        super().__init__()
        self.cosine_weight, self.smooth_l1_weight, self.beta = cosine_weight, smooth_l1_weight, beta

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """
        Args:
            prediction: ``[B, D]`` or ``[B, C, h', w']``.
            target: ``[B, D]`` or ``[B, C, h, w]``.

        Returns:
            A scalar.
        """
        # float32: cosines near 1 and small L1 residuals are what bf16 loses first.
        prediction = align_prediction(prediction, target, loss="feature").float()
        target = target.float()
        cosine = F.cosine_similarity(prediction, target, dim=1)  # [B] or [B, h, w]
        smooth = F.smooth_l1_loss(prediction, target, beta=self.beta)
        return self.cosine_weight * (1.0 - cosine).mean() + self.smooth_l1_weight * smooth
