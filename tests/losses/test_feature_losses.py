"""The feature (AM-RADIO cosine + smooth-L1), MSE and contrastive (CLIP-KD) losses, checked by
hand."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mergekit_vision.losses.contrastive import ContrastiveLoss
from mergekit_vision.losses.feature import FeatureLoss
from mergekit_vision.losses.mse import MSELoss


def test_feature_loss_by_hand():
    # row 1: same direction, twice as long: cos 1, residual (1, 0) -> smooth-L1 0.5 and 0
    # row 2: orthogonal unit vectors: cos 0, residuals (1, -1) -> 0.5 and 0.5
    prediction = torch.tensor([[2.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    cosine = (0.0 + 1.0) / 2
    smooth = (0.5 + 0.0 + 0.5 + 0.5) / 4
    loss = FeatureLoss.build(FeatureLoss.Params())
    assert loss(prediction, target).item() == pytest.approx(0.9 * cosine + 0.1 * smooth)
    only_cos = FeatureLoss(cosine_weight=1.0, smooth_l1_weight=0.0)
    assert only_cos(prediction, target).item() == pytest.approx(cosine)


def test_feature_maps_compare_per_position_on_the_targets_grid():
    torch.manual_seed(0)
    prediction, target = torch.randn(2, 8, 3, 3), torch.randn(2, 8, 6, 6)
    upsampled = F.interpolate(prediction, size=(6, 6), mode="bilinear", align_corners=False)
    cosine = 1 - F.cosine_similarity(upsampled, target, dim=1).mean()
    want = 0.9 * cosine + 0.1 * F.smooth_l1_loss(upsampled, target)
    assert FeatureLoss()(prediction, target).item() == pytest.approx(want.item(), rel=1e-5)
    assert FeatureLoss()(target, target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"prediction \(2, 4, 3, 3\) and target \(2, 8, 6, 6\)"):
        FeatureLoss()(prediction[:, :4], target)


def test_mse_by_hand_and_on_maps():
    prediction = torch.tensor([[1.0, 2.0], [0.0, 0.0]])
    target = torch.tensor([[0.0, 0.0], [0.0, 2.0]])
    assert MSELoss.build(MSELoss.Params())(prediction, target).item() == pytest.approx(9 / 4)
    maps = torch.ones(1, 2, 2, 2)
    assert MSELoss()(maps, torch.ones(1, 2, 4, 4)).item() == pytest.approx(0.0)
    with pytest.raises(ValueError, match="mse loss"):
        MSELoss()(torch.ones(2, 3), torch.ones(2, 4))


def test_params_are_checked():
    with pytest.raises(ValidationError, match="cannot both be 0"):
        FeatureLoss.Params(cosine_weight=0, smooth_l1_weight=0)
    with pytest.raises(ValidationError):
        FeatureLoss.Params(alpha=0.9)
    with pytest.raises(ValidationError):
        MSELoss.Params(reduction="sum")


def test_contrastive_loss_by_hand():
    # unit vectors: student rows s1 = e1, s2 = e2; teacher rows t1 = e1, t2 = (e1 + e2) / sqrt 2
    r = 1 / math.sqrt(2)
    prediction = torch.tensor([[1.0, 0.0], [0.0, 3.0]])  # the second row's length must not matter
    target = torch.tensor([[2.0, 0.0], [1.0, 1.0]])
    cosine = ((1 - 1) + (1 - r)) / 2
    # row 1 picks t1 (cos 1) against t2 (cos r); row 2 picks t2 (cos r) against t1 (cos 0)
    tau = 0.5
    row1 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(r / tau)))
    row2 = -math.log(math.exp(r / tau) / (math.exp(r / tau) + math.exp(0.0)))
    loss = ContrastiveLoss(cosine_weight=2.0, contrastive_weight=0.5, temperature=tau)
    want = 2.0 * cosine + 0.5 * (row1 + row2) / 2
    assert loss(prediction, target).item() == pytest.approx(want, rel=1e-6)
    only_cos = ContrastiveLoss.build(ContrastiveLoss.Params(contrastive_weight=0))
    assert only_cos(prediction, target).item() == pytest.approx(cosine, rel=1e-6)


def test_contrastive_loss_needs_embeddings_and_one_image_has_no_negatives():
    one = torch.tensor([[1.0, 0.0]])
    assert ContrastiveLoss()(one, torch.tensor([[1.0, 1.0]])).item() == pytest.approx(
        1 - 1 / math.sqrt(2), rel=1e-6
    )
    with pytest.raises(ValueError, match=r"contrastive loss: prediction \(2, 4, 3, 3\)"):
        ContrastiveLoss()(torch.ones(2, 4, 3, 3), torch.ones(2, 4, 3, 3))
    with pytest.raises(ValidationError, match="cannot both be 0"):
        ContrastiveLoss.Params(cosine_weight=0, contrastive_weight=0)
    with pytest.raises(ValidationError):
        ContrastiveLoss.Params(temperature=0)
