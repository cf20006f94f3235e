"""Mean squared error between a predicted and a teacher feature."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.contracts import LOSSES, Loss
from mergekit_vision.losses.feature import align_prediction


@LOSSES.register("mse")
class MSELoss(Loss):
    """Mean squared error over every element, the plain feature-distillation loss.

    FitNets (Romero et al., ICLR 2015, arXiv 1412.6550) regress a teacher's intermediate
    features with it; AM-RADIO (Ranzinger et al., CVPR 2024, arXiv 2312.06709) uses it as the
    baseline its cosine + smooth-L1 mix improves on, and PHI-S-normalized targets (Ranzinger et
    al., arXiv 2410.01680) make it balanced across teachers. Feature maps ``[B, C, h, w]`` are
    compared on the target's grid (the prediction is resized bilinearly).
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """
        Args:
            prediction: ``[B, ...]``; a ``[B, C, h', w']`` map is resized to the target's grid.
            target: ``[B, ...]``.

        Returns:
            A scalar.
        """
        prediction = align_prediction(prediction, target, loss="mse")
        return F.mse_loss(prediction.float(), target.float())
