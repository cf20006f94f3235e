"""Focal + dice loss between student and teacher mask logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import Tensor

from mergekit_vision.contracts import LOSSES, Loss
from mergekit_vision.registry import PluginParams

# Added to the dice numerator and denominator so empty masks score 0 loss, not NaN.
_DICE_SMOOTHING = 1.0


def sigmoid_focal_loss(logits: Tensor, targets: Tensor, *, alpha: float, gamma: float) -> Tensor:
    """Per-mask focal loss (Lin et al., "Focal Loss for Dense Object Detection", ICCV 2017).

    Args:
        logits: ``[M, P]`` predicted logits of ``M`` masks with ``P`` pixels.
        targets: ``[M, P]`` in [0, 1].
        alpha: weight of the positive class (``1 - alpha`` for the negative).
        gamma: focusing exponent on ``1 - p_t``.

    Returns:
        ``[M]`` the mean over pixels of each mask.
    """
    probabilities = logits.sigmoid()
    cross_entropy = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = probabilities * targets + (1 - probabilities) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * (1 - p_t) ** gamma * cross_entropy).mean(dim=1)


def dice_loss(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-mask soft dice loss (Milletari et al., "V-Net", 3DV 2016), ``1 - 2|XY| / (|X| + |Y|)``.

    Args:
        logits: ``[M, P]`` predicted logits.
        targets: ``[M, P]`` in [0, 1].

    Returns:
        ``[M]``.
    """
    probabilities = logits.sigmoid()
    overlap = (probabilities * targets).sum(dim=1)
    total = probabilities.sum(dim=1) + targets.sum(dim=1)
    return 1 - (2 * overlap + _DICE_SMOOTHING) / (total + _DICE_SMOOTHING)


@LOSSES.register("focal_dice")
class FocalDiceLoss(Loss):
    """``focal_weight * focal + dice_weight * dice`` between student and teacher mask logits.

    SAM's mask loss (Kirillov et al., arXiv 2304.02643: focal and dice at 20:1), used by SAM-CLIP
    (Wang et al., arXiv 2310.15308) to distil the SAM branch from the teacher's mask logits:
    the targets are the teacher's binary masks (``logits > 0``), or its probabilities with
    ``soft_targets``. Focal follows Lin et al. 2017, dice Milletari et al. 2016.
    """

    class Params(PluginParams):
        focal_weight: float = Field(20.0, ge=0)
        dice_weight: float = Field(1.0, ge=0)
        alpha: float = Field(0.25, ge=0, le=1)
        gamma: float = Field(2.0, ge=0)
        soft_targets: bool = False

    def __init__(
        self,
        *,
        focal_weight: float = 20.0,
        dice_weight: float = 1.0,
        alpha: float = 0.25,
        gamma: float = 2.0,
        soft_targets: bool = False,
    ) -> None:
        """
        Args:
            focal_weight: weight of the focal term.
            dice_weight: weight of the dice term.
            alpha: focal loss positive-class weight.
            gamma: focal loss focusing exponent.
            soft_targets: use ``sigmoid(teacher)`` instead of ``teacher > 0`` as targets.
        """
        super().__init__()
        self.focal_weight = focal_weight
        self.dice_weight = dice_weight
        self.alpha = alpha
        self.gamma = gamma
        self.soft_targets = soft_targets

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """
        Args:
            prediction: student mask logits ``[..., H, W]`` (e.g. ``[B, N, K, H, W]``); resized
                bilinearly to the target's ``H', W'`` when they differ.
            target: teacher mask logits ``[..., H', W']`` with the same leading dimensions.

        Returns:
            A scalar, the mean over masks (0 for no masks at all).
        """
        if prediction.shape[:-2] != target.shape[:-2]:
            raise ValueError(
                f"focal_dice loss: prediction {tuple(prediction.shape)} and target "
                f"{tuple(target.shape)} differ before the last two (spatial) dimensions"
            )
        if target.numel() == 0:
            return prediction.sum() * 0.0  # keeps the graph for prompt-free batches
        logits = prediction.float().reshape(-1, 1, *prediction.shape[-2:])
        if logits.shape[-2:] != target.shape[-2:]:
            logits = F.interpolate(
                logits, size=target.shape[-2:], mode="bilinear", align_corners=False
            )
        logits = logits.flatten(1)
        teacher = target.detach().float().reshape(logits.shape[0], -1)
        targets = teacher.sigmoid() if self.soft_targets else (teacher > 0).to(torch.float32)
        focal = sigmoid_focal_loss(logits, targets, alpha=self.alpha, gamma=self.gamma)
        dice = dice_loss(logits, targets)
        return (self.focal_weight * focal + self.dice_weight * dice).mean()
