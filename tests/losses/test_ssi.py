"""The scale-and-shift-invariant loss on hand-computed cases: 0 for any positive scale and shift
of the target, the MiDaS / Depth Anything value otherwise."""

from __future__ import annotations

import pytest
import torch
from pydantic import ValidationError

from mergekit_vision.losses.ssi import ScaleShiftInvariantLoss


def _loss(alignment: str = "median") -> ScaleShiftInvariantLoss:
    cls = ScaleShiftInvariantLoss
    return cls.build(cls.Params(alignment=alignment))


@pytest.mark.parametrize("alignment", ["median", "least_squares"])
def test_a_scaled_and_shifted_target_costs_nothing(alignment):
    target = torch.rand(3, 1, 6, 6) * 5
    scales = torch.tensor([0.5, 2.0, 30.0]).view(3, 1, 1, 1)  # one scale and shift per image
    shifts = torch.tensor([-4.0, 0.0, 7.0]).view(3, 1, 1, 1)
    assert _loss(alignment)(scales * target + shifts, target).item() == pytest.approx(0, abs=1e-5)


def test_hand_computed_values():
    prediction = torch.tensor([1.0, 2.0, 4.0]).view(1, 1, 1, 3)
    target = torch.tensor([0.0, 1.0, 2.0]).view(1, 1, 1, 3)
    # median: target (t - 1) / (2/3) = [-1.5, 0, 1.5]; prediction (p - 2) / 1 = [-1, 0, 2]
    assert _loss("median")(prediction, target).item() == pytest.approx(1 / 3, rel=1e-5)
    # least squares: s = cov / var = 3 / (14/3) = 9/14, t = 1 - s * 7/3, so the prediction
    # becomes [2, 11, 29] / 14, off the target by [2, 3, 1] / 14
    assert _loss("least_squares")(prediction, target).item() == pytest.approx(1 / 7, rel=1e-5)


def test_images_are_aligned_each_on_their_own():
    target = torch.rand(2, 1, 4, 4)
    good = torch.stack([3 * target[0] + 1, target[1]])
    bad = torch.stack([3 * target[0] + 1, -target[1]])  # an inverted map is not a scale of it
    loss = _loss()
    assert loss(good, target).item() == pytest.approx(0, abs=1e-5)
    assert loss(bad, target).item() > 0.5  # only the inverted image costs
    # least squares fits a negative scale too: it measures shape, the median form also order
    assert _loss("least_squares")(bad, target).item() == pytest.approx(0, abs=1e-5)


def test_a_coarser_prediction_is_resized_to_the_target_and_gets_gradients():
    target = torch.rand(2, 1, 8, 8)
    prediction = torch.rand(2, 1, 4, 4, requires_grad=True)
    value = _loss()(prediction, target)
    value.backward()
    assert value.ndim == 0 and prediction.grad.abs().sum() > 0
    flat = torch.zeros(1, 1, 4, 4, requires_grad=True)  # a constant map stays finite
    assert torch.isfinite(_loss()(flat, torch.rand(1, 1, 4, 4)))
    with pytest.raises(ValueError, match="differ in shape"):
        _loss()(torch.rand(2, 8), torch.rand(2, 1, 8, 8))
    with pytest.raises(ValidationError):
        ScaleShiftInvariantLoss.Params(alignment="mean")
