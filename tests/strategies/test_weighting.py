from __future__ import annotations

import math

import pytest
import torch

from mergekit_vision.strategies.weighting.base import WEIGHTING
from mergekit_vision.strategies.weighting.dwa import DynamicWeightAverage
from mergekit_vision.strategies.weighting.famo import FAMO
from mergekit_vision.strategies.weighting.gradnorm import GradNorm
from mergekit_vision.strategies.weighting.uncertainty import UncertaintyWeighting

BASE = {"clip": 1.0, "sam": 10.0}


def test_uncertainty_log_variances_are_parameters_with_gradients():
    weighting = UncertaintyWeighting.build(UncertaintyWeighting.Params(), base_weights=BASE)
    params = dict(weighting.named_parameters())
    assert set(params) == {"log_variances.clip", "log_variances.sam"}
    loss = torch.tensor(0.5, requires_grad=True)
    value = weighting.weighted(task="sam", loss=loss)
    assert value.item() == pytest.approx(10.0 * 0.5)  # s = 0: exactly the static weight
    value.backward()
    # d/ds base (exp(-s) L + s) = base (1 - exp(-s) L) = 10 * (1 - 0.5)
    assert params["log_variances.sam"].grad.item() == pytest.approx(5.0)
    assert params["log_variances.clip"].grad is None
    assert loss.grad.item() == pytest.approx(10.0)


def test_uncertainty_optimum_is_the_loss_variance():
    weighting = UncertaintyWeighting(base_weights={"a": 1.0})
    optimiser = torch.optim.SGD(weighting.parameters(), lr=0.1)
    for _ in range(500):
        optimiser.zero_grad()
        weighting.weighted(task="a", loss=torch.tensor(4.0)).backward()
        optimiser.step()
    assert weighting.log_variances["a"].item() == pytest.approx(math.log(4.0), abs=1e-3)
    assert weighting.current_weights()["a"] == pytest.approx(0.25, abs=1e-3)


def test_gradnorm_raises_the_weight_of_the_slower_task():
    weighting = GradNorm.build(GradNorm.Params(alpha=1.5, lr=0.05), base_weights=BASE)
    assert weighting.needs_task_gradients
    gradients = {"clip": torch.full((10,), 0.1), "sam": torch.full((10,), 0.1)}
    weighting.observe(step=0, losses={"clip": 1.0, "sam": 1.0}, task_gradients=gradients)
    assert weighting.current_weights() == pytest.approx(BASE)  # ratios equal: on target
    # clip's loss halves, sam's stays: sam trains slower and must gain weight
    for step in range(1, 4):
        weighting.observe(step=step, losses={"clip": 0.5, "sam": 1.0}, task_gradients=gradients)
    weights = weighting.current_weights()
    assert weights["sam"] > 10.0 and weights["clip"] < 1.0
    assert sum(weights.values()) == pytest.approx(11.0)
    loss = torch.tensor(2.0)
    assert weighting.weighted(task="sam", loss=loss).item() == pytest.approx(2 * weights["sam"])


def test_gradnorm_equalises_gradient_norms_at_equal_rates():
    weighting = GradNorm(base_weights={"a": 1.0, "b": 1.0}, lr=0.05)
    for step in range(3):
        weights = weighting.current_weights()
        # gradient norm of the weighted loss: a's raw gradient is 4x b's
        gradients = {"a": torch.tensor([4.0 * weights["a"]]), "b": torch.tensor([weights["b"]])}
        weighting.observe(step=step, losses={"a": 1.0, "b": 1.0}, task_gradients=gradients)
    weights = weighting.current_weights()
    assert weights["b"] > weights["a"]
    state = weighting.state_dict_extra()
    restored = GradNorm(base_weights={"a": 1.0, "b": 1.0}, lr=0.05)
    restored.load_state_dict(weighting.state_dict())
    restored.load_state_dict_extra(state)
    assert restored.current_weights() == weights and restored.initial_losses == {"a": 1, "b": 1}


def test_dwa_weights_the_task_whose_loss_falls_slower():
    weighting = DynamicWeightAverage.build(
        DynamicWeightAverage.Params(temperature=2.0, window=2), base_weights=BASE
    )
    history = [(1.0, 1.0), (1.0, 1.0), (0.5, 1.0), (0.5, 1.0)]  # two windows of two steps
    for step, (clip, sam) in enumerate(history):
        assert weighting.current_weights() == BASE  # static until two windows are complete
        weighting.observe(step=step, losses={"clip": clip, "sam": sam})
    # r_clip = 0.5, r_sam = 1: lambda = 2 softmax(r / 2)
    e_clip, e_sam = math.exp(0.25), math.exp(0.5)
    expected = {"clip": 2 * e_clip / (e_clip + e_sam), "sam": 2 * e_sam / (e_clip + e_sam)}
    assert weighting.multipliers == pytest.approx(expected)
    assert weighting.current_weights()["sam"] == pytest.approx(10.0 * expected["sam"])
    restored = DynamicWeightAverage(base_weights=BASE, temperature=2.0, window=2)
    restored.load_state_dict_extra(weighting.state_dict_extra())
    assert restored.multipliers == pytest.approx(expected)


def test_famo_shifts_weight_to_the_task_whose_log_loss_falls_less():
    weighting = FAMO.build(FAMO.Params(lr=0.05), base_weights={"a": 1.0, "b": 1.0})
    loss = torch.tensor(0.5, requires_grad=True)
    assert weighting.weighted(task="a", loss=loss).item() == pytest.approx(0.5)  # no history
    for step in range(20):
        # a's loss falls by 10% a step, b's stays
        weighting.observe(step=step, losses={"a": 0.9**step, "b": 1.0})
    z = weighting.task_weights()
    assert z[1] > 0.7 > z[0]
    weights = weighting.current_weights()
    # effective weights: 2 z_t / (c L_t), summing to 2 at the last losses
    c = float(z[0]) / 0.9**19 + float(z[1]) / 1.0
    assert weights["b"] == pytest.approx(2 * float(z[1]) / c)
    assert sum(weights.values()) == pytest.approx(2.0)
    value = weighting.weighted(task="b", loss=torch.tensor(1.0, requires_grad=True))
    assert value.item() == pytest.approx(weights["b"])
    restored = FAMO(base_weights={"a": 1.0, "b": 1.0}, lr=0.05)
    restored.load_state_dict(weighting.state_dict())
    restored.load_state_dict_extra(weighting.state_dict_extra())
    assert restored.current_weights() == pytest.approx(weights)


@pytest.mark.parametrize("name", ["uncertainty", "gradnorm", "dwa", "famo"])
def test_registered(name):
    assert name in WEIGHTING
