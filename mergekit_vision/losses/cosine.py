"""Cosine distance between a predicted and a teacher embedding."""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor

from mergekit_vision.contracts import LOSSES, Loss


@LOSSES.register("cosine")
class CosineLoss(Loss):
    """``1 - cos(prediction, target)``, averaged over the batch.

    SAM-CLIP's CLIP-branch loss (Wang et al., arXiv 2310.15308) and AM-RADIO's summary-token loss
    (Ranzinger et al., arXiv 2312.06709). Invariant to the scale of either side, so the head need
    not learn the teacher's embedding norm.
    """

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """
        Args:
            prediction: ``[B, ...]``; trailing dimensions are flattened into one vector.
            target: the same shape as ``prediction``.

        Returns:
            A scalar.
        """
        if prediction.shape != target.shape:
            raise ValueError(
                f"cosine loss: prediction {tuple(prediction.shape)} and target "
                f"{tuple(target.shape)} differ in shape"
            )
        # Computed in float32: cosine of bf16 vectors near 1 loses the signal the loss carries.
        similarity = F.cosine_similarity(
            prediction.flatten(1).float(), target.flatten(1).float(), dim=1
        )
        return (1.0 - similarity).mean()
