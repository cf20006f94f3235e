from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError

from mergekit_vision.losses.cosine import CosineLoss
from mergekit_vision.losses.focal_dice import FocalDiceLoss

LN2 = math.log(2.0)


def test_cosine_loss_values():
    loss = CosineLoss.build(CosineLoss.Params())
    prediction = torch.tensor([[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    target = torch.tensor([[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]])  # cos 1, 0, -1
    assert loss(prediction, target).item() == pytest.approx((0.0 + 1.0 + 2.0) / 3)


def test_cosine_loss_flattens_trailing_dims_and_has_gradient():
    loss = CosineLoss()
    prediction = torch.randn(4, 2, 3, requires_grad=True)
    target = torch.randn(4, 2, 3)
    value = loss(prediction, target)
    expected = 1 - F.cosine_similarity(prediction.reshape(4, 6), target.reshape(4, 6)).mean()
    assert value.item() == pytest.approx(expected.item(), abs=1e-6)
    value.backward()
    assert torch.isfinite(prediction.grad).all()
    assert loss(target, 5 * target).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\(4, 6\) and target \(4, 2, 3\)"):
        loss(prediction.reshape(4, 6), target)


def test_focal_dice_two_pixel_case_by_hand():
    # student probabilities 0.5 and 0.75; teacher logits +1, -1 -> targets 1, 0
    prediction = torch.tensor([0.0, math.log(3.0)]).view(1, 1, 1, 1, 2)
    teacher = torch.tensor([1.0, -1.0]).view(1, 1, 1, 1, 2)
    # focal, pixel 1: alpha 0.25 * (1 - 0.5)^2 * ln 2            = 0.0625 ln 2
    # focal, pixel 2: (1 - alpha) 0.75 * (1 - 0.25)^2 * ln 4    = 0.84375 ln 2
    focal = (0.0625 + 0.84375) * LN2 / 2
    # dice: 1 - (2 * 0.5 + 1) / (1.25 + 1 + 1), smoothing 1
    dice = 1 - 2 / 3.25
    loss = FocalDiceLoss.build(FocalDiceLoss.Params())
    assert loss(prediction, teacher).item() == pytest.approx(20 * focal + dice, rel=1e-6)
    focal_only = FocalDiceLoss(focal_weight=1.0, dice_weight=0.0)
    assert focal_only(prediction, teacher).item() == pytest.approx(focal, rel=1e-6)


def test_focal_dice_soft_targets_by_hand():
    # all probabilities 0.5, soft targets sigmoid(0) = 0.5: per pixel
    # focal = alpha_t 0.5 * (1 - p_t 0.5)^2 * ce ln 2 = 0.125 ln 2; dice = 1 - (1 + 1) / (2 + 1)
    prediction = torch.zeros(1, 2)
    teacher = torch.zeros(1, 2)
    loss = FocalDiceLoss(soft_targets=True)
    assert loss(prediction, teacher).item() == pytest.approx(20 * 0.125 * LN2 + 1 / 3, rel=1e-6)


def test_perfect_prediction_gives_zero_dice_and_focal():
    torch.manual_seed(0)
    teacher = torch.randn(2, 3, 1, 8, 8)
    prediction = 50 * teacher.sign()
    dice_only = FocalDiceLoss(focal_weight=0.0, dice_weight=1.0)
    assert dice_only(prediction, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert FocalDiceLoss()(prediction, teacher).item() == pytest.approx(0.0, abs=1e-6)
    assert FocalDiceLoss()(-prediction, teacher).item() > 1.0


def test_gradient_pushes_logits_towards_teacher_masks():
    prediction = torch.zeros(1, 1, 1, 1, 2, requires_grad=True)
    teacher = torch.tensor([3.0, -3.0]).view(1, 1, 1, 1, 2)
    FocalDiceLoss()(prediction, teacher).backward()
    grad = prediction.grad.flatten()
    assert grad[0] < 0 < grad[1]  # descent raises the foreground logit, lowers the background


def test_prediction_is_resized_to_target_and_means_over_masks():
    torch.manual_seed(0)
    prediction = torch.randn(3, 2, 4, 4)  # any leading dims
    teacher = torch.randn(3, 2, 8, 8)
    loss = FocalDiceLoss()
    upsampled = F.interpolate(prediction, size=(8, 8), mode="bilinear", align_corners=False)
    assert loss(prediction, teacher).item() == pytest.approx(loss(upsampled, teacher).item())
    per_mask = [loss(upsampled[i, j], teacher[i, j]).item() for i in range(3) for j in range(2)]
    assert loss(upsampled, teacher).item() == pytest.approx(sum(per_mask) / 6, rel=1e-5)
    with pytest.raises(ValueError, match="differ before the last two"):
        loss(prediction[:, :1], teacher)


def test_focal_dice_empty_and_params():
    prediction = torch.zeros(2, 0, 1, 4, 4, requires_grad=True)
    value = FocalDiceLoss()(prediction, torch.zeros(2, 0, 1, 4, 4))
    assert value.item() == 0.0
    value.backward()
    with pytest.raises(ValidationError):
        FocalDiceLoss.Params(alpha=1.5)
    with pytest.raises(ValidationError):
        FocalDiceLoss.Params(focal_wieght=1.0)
