"""The feature (AM-RADIO cosine + smooth-L1) and MSE losses, checked by hand."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

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
