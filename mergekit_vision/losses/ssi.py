"""The scale-and-shift-invariant loss of MiDaS and Depth Anything, for relative depth maps."""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import Field
from torch import Tensor

from mergekit_vision.contracts import LOSSES, Loss
from mergekit_vision.losses.feature import align_prediction
from mergekit_vision.registry import PluginParams


def median_scale_normalized(maps: Tensor, *, eps: float) -> Tensor:
    """``[B, N]`` -> each row minus its median, over its mean absolute deviation from it.

    MiDaS's ``t(d) = median(d)``, ``s(d) = mean |d - t(d)|`` (Ranftl et al., arXiv 1907.01341,
    eq. 6); ``torch.median`` takes the lower of the two middle values of an even count.
    """
    median = maps.median(dim=1, keepdim=True).values
    centred = maps - median
    return centred / (centred.abs().mean(dim=1, keepdim=True) + eps)


def least_squares_aligned(prediction: Tensor, target: Tensor) -> Tensor:
    """``[B, N]`` predictions, each row mapped by the ``s * p + t`` closest to its target row in
    the least-squares sense (MiDaS, arXiv 1907.01341, eq. 4; a constant row gets ``s = 0``)."""
    p_mean = prediction.mean(dim=1, keepdim=True)
    t_mean = target.mean(dim=1, keepdim=True)
    p_centred = prediction - p_mean
    covariance = (p_centred * (target - t_mean)).sum(dim=1, keepdim=True)
    variance = p_centred.square().sum(dim=1, keepdim=True)
    scale = torch.where(variance > 0, covariance / variance.clamp_min(1e-12), 0.0)
    return scale * p_centred + t_mean


@LOSSES.register("ssi")
class ScaleShiftInvariantLoss(Loss):
    """Mean absolute error after per-image scale-and-shift alignment, for relative depth.

    MiDaS (Ranftl et al., "Towards Robust Monocular Depth Estimation: Mixing Datasets for
    Zero-shot Cross-dataset Transfer", TPAMI 2022, arXiv 1907.01341) and Depth Anything (Yang et
    al., CVPR 2024, arXiv 2401.10891, eq. 1-2) train on disparity known only up to a scale and a
    shift per image. ``alignment: median`` (theirs) normalizes prediction and target alike,
    ``d -> (d - median(d)) / mean |d - median(d)|``, and averages ``|pred - target|``;
    ``alignment: least_squares`` fits ``s * pred + t`` to the target per image in closed form
    (MiDaS eq. 4) and averages ``|s * pred + t - target|`` in the target's units. Either way a
    prediction ``a * target + b`` (``a > 0``) costs 0. ``[B, C, h, w]`` predictions are first
    resized to the target's grid; each image's (and channel's) pixels are one set.
    """

    class Params(PluginParams):
        alignment: Literal["median", "least_squares"] = "median"
        eps: float = Field(1e-6, gt=0, description="added to the median scale of a flat map")

    def __init__(self, *, alignment: str = "median", eps: float = 1e-6):
        """
        Args:
            alignment: ``median`` (normalize both sides) or ``least_squares`` (fit the
                prediction to the target).
            eps: keeps the median normalization finite for a constant map.
        """
        super().__init__()
        self.alignment, self.eps = alignment, eps

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """
        Args:
            prediction: ``[B, C, h', w']`` (or any ``[B, ...]`` of the target's shape).
            target: ``[B, C, h, w]``.

        Returns:
            A scalar.
        """
        # float32: the medians and sums of a large map are what bf16 rounds away first
        prediction = align_prediction(prediction, target, loss="ssi").float()
        rows = prediction.flatten(2) if prediction.ndim > 2 else prediction[:, None]
        truth = target.float().flatten(2) if target.ndim > 2 else target.float()[:, None]
        rows, truth = rows.flatten(0, 1), truth.flatten(0, 1)  # one row per image and channel
        if self.alignment == "median":
            rows = median_scale_normalized(rows, eps=self.eps)
            truth = median_scale_normalized(truth, eps=self.eps)
        else:
            rows = least_squares_aligned(rows, truth)
        return (rows - truth).abs().mean()
