"""Cosine distance plus CLIP-KD's interactive contrastive term over the batch."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor

from mergekit_vision.contracts import LOSSES, Loss
from mergekit_vision.registry import PluginParams


@LOSSES.register("contrastive")
class ContrastiveLoss(Loss):
    """``cosine_weight * (1 - cos) + contrastive_weight * ICL`` for ``[B, D]`` embeddings.

    The cosine term matches each image's embedding to its teacher's, as ``cosine`` does. Its
    gradient is spread over every direction of the error, so directions in which the teacher's
    embeddings of *different* images barely differ (and which may still decide a zero-shot
    class) weigh little. The interactive contrastive term of CLIP-KD (Yang et al., CVPR 2024,
    arXiv 2307.12732, sec. 3.4) weighs exactly those: each student embedding, as the anchor,
    must pick its own image's teacher embedding out of the batch's teacher embeddings,

        ICL = mean_i  -log softmax_j( cos(s_i, t_j) / temperature )[i].

    The negatives are the other images of the local batch (per process under DDP), so the term
    needs a batch of more than one image; with one it is zero.
    """

    class Params(PluginParams):
        cosine_weight: float = Field(1.0, ge=0)
        contrastive_weight: float = Field(1.0, ge=0)
        temperature: float = Field(
            0.07, gt=0, description="softmax temperature of the contrastive term (CLIP's init)"
        )

        @model_validator(mode="after")
        def _some_weight(self) -> ContrastiveLoss.Params:
            if self.cosine_weight == 0 and self.contrastive_weight == 0:
                raise ValueError("cosine_weight and contrastive_weight cannot both be 0")
            return self

    def __init__(
        self,
        *,
        cosine_weight: float = 1.0,
        contrastive_weight: float = 1.0,
        temperature: float = 0.07,
    ):
        """
        Args:
            cosine_weight: weight of the mean cosine distance to the own image's target.
            contrastive_weight: weight of the contrastive term.
            temperature: the contrastive softmax's temperature.
        """
        super().__init__()
        self.cosine_weight, self.contrastive_weight = cosine_weight, contrastive_weight
        self.temperature = temperature

    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """
        Args:
            prediction: ``[B, D]`` student embeddings.
            target: ``[B, D]`` teacher embeddings of the same images, in the same order.

        Returns:
            A scalar.
        """
        if prediction.ndim != 2 or prediction.shape != target.shape:
            raise ValueError(
                f"contrastive loss: prediction {tuple(prediction.shape)} and target "
                f"{tuple(target.shape)} must be the same [batch, dim] embeddings"
            )
        # float32: cosines near 1 are what bf16 loses first.
        student = F.normalize(prediction.float(), dim=1)
        teacher = F.normalize(target.float(), dim=1)
        similarity = student @ teacher.T  # [B, B]; the diagonal pairs each image with itself
        cosine = (1.0 - similarity.diagonal()).mean()
        own = torch.arange(similarity.shape[0], device=similarity.device)
        contrastive = F.cross_entropy(similarity / self.temperature, own)
        return self.cosine_weight * cosine + self.contrastive_weight * contrastive
