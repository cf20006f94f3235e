"""DUNE's TeacherNorm: moving averages of per-channel mean and std, checked by hand; the map,
its inverse and export fold; the buffers a checkpoint carries."""

from __future__ import annotations

import torch
from torch import nn

from mergekit_vision.strategies.normalization.base import NORMALIZATION
from mergekit_vision.strategies.normalization.teacher_norm import TeacherNorm


def test_running_statistics_are_the_hand_computed_moving_averages():
    normalizer = TeacherNorm.build(TeacherNorm.Params(estimate_steps=1, momentum=0.5), dim=2)
    # three batches of two vectors [2, D]; per channel: mean, population std
    batches = [
        torch.tensor([[1.0, 10.0], [3.0, 10.0]]),  # means 2, 10; stds 1, 0
        torch.tensor([[0.0, 4.0], [0.0, 8.0]]),  # means 0, 6; stds 0, 2
        torch.tensor([[5.0, -2.0], [9.0, 2.0]]),  # means 7, 0; stds 2, 2
    ]
    for batch in batches:
        normalizer.update(batch)
    # mu:    0 -> 0.5*0 + 0.5*2 = 1    -> 0.5*1 + 0.5*0 = 0.5  -> 0.5*0.5 + 0.5*7 = 3.75
    #        0 -> 5                    -> 0.5*5 + 0.5*6 = 5.5  -> 0.5*5.5 + 0 = 2.75
    # sigma: 1 -> 0.5*1 + 0.5*1 = 1    -> 0.5*1 + 0 = 0.5      -> 0.5*0.5 + 0.5*2 = 1.25
    #        1 -> 0.5*1 + 0 = 0.5      -> 0.5*0.5 + 0.5*2 = 1.25 -> 0.5*1.25 + 0.5*2 = 1.625
    torch.testing.assert_close(normalizer.mean, torch.tensor([3.75, 2.75], dtype=torch.float64))
    torch.testing.assert_close(normalizer.std, torch.tensor([1.25, 1.625], dtype=torch.float64))
    assert int(normalizer.updates) == 3 and normalizer.frozen and normalizer.tracking
    x = torch.tensor([[5.0, 6.0]])
    torch.testing.assert_close(normalizer(x), torch.tensor([[1.0, 2.0]]))  # (5-3.75)/1.25 ...


def test_statistics_keep_moving_after_the_warm_up_unlike_standardize():
    online = NORMALIZATION.get("teacher_norm")(dim=3, estimate_steps=2, momentum=0.1)
    frozen = NORMALIZATION.get("standardize")(dim=3, estimate_steps=2)
    assert online.online and not frozen.online
    generator = torch.Generator().manual_seed(0)
    for _ in range(2):
        batch = torch.randn(16, 3, generator=generator)
        online.update(batch)
        frozen.update(batch)
    assert online.frozen and frozen.frozen  # both warmed up / estimated
    assert online.tracking and not frozen.tracking  # only the online one keeps learning
    before = online.mean.clone(), frozen.statistics()[0].clone()
    shifted = torch.randn(16, 3, generator=generator) + 100.0
    online.update(shifted)
    frozen.update(shifted)
    torch.testing.assert_close(online.mean, 0.9 * before[0] + 0.1 * shifted.double().mean(0))
    torch.testing.assert_close(frozen.statistics()[0], before[1])


def test_feature_maps_use_batch_and_positions_and_the_eps_floor():
    normalizer = TeacherNorm(dim=2, estimate_steps=1, momentum=1.0, eps=0.5)
    maps = torch.tensor([[[[1.0, 3.0]], [[4.0, 4.0]]]])  # [B=1, C=2, h=1, w=2]
    normalizer.observe(maps)
    # momentum 1: the batch's statistics over its 2 positions; channel 1 is constant
    torch.testing.assert_close(normalizer.mean, torch.tensor([2.0, 4.0], dtype=torch.float64))
    torch.testing.assert_close(normalizer.std, torch.tensor([1.0, 0.0], dtype=torch.float64))
    out = normalizer.normalize(maps)
    torch.testing.assert_close(out, torch.tensor([[[[-1.0, 1.0]], [[0.0, 0.0]]]]))
    torch.testing.assert_close(normalizer.statistics()[1].float(), torch.tensor([1.0, 0.5]))


def test_inverse_undoes_forward_and_folds_exactly():
    generator = torch.Generator().manual_seed(1)
    targets = torch.randn(128, 5, generator=generator) * torch.tensor([0.01, 1, 3, 50, 7]) + 20
    normalizer = TeacherNorm(dim=5, estimate_steps=16, momentum=0.5)
    for chunk in targets.chunk(16):  # the identity start now weighs 0.5**16
        normalizer.update(chunk)
    out = normalizer(targets)
    assert (out.std(0) - 1).abs().max() < 0.3 and out.mean(0).abs().max() < 0.5  # standard
    torch.testing.assert_close(normalizer.inverse(out), targets, rtol=1e-5, atol=1e-4)
    torch.manual_seed(0)
    linear = nn.Linear(4, 5)
    x = torch.randn(3, 4)
    with torch.no_grad():
        expected = normalizer.inverse(linear(x))
        torch.testing.assert_close(normalizer.fold_into(linear)(x), expected, rtol=1e-5, atol=1e-3)


def test_state_round_trips_and_a_resumed_normalizer_continues_the_averages():
    generator = torch.Generator().manual_seed(2)
    batches = [torch.randn(8, 4, generator=generator) * (i + 1) for i in range(6)]
    straight = TeacherNorm(dim=4, estimate_steps=2)
    for batch in batches:
        straight.update(batch)
    first = TeacherNorm(dim=4, estimate_steps=2)
    for batch in batches[:3]:
        first.update(batch)
    state = first.state_dict()
    assert set(state) == {"updates", "mean", "std"}
    resumed = TeacherNorm(dim=4, estimate_steps=2)
    resumed.load_state_dict(state)
    assert int(resumed.updates) == 3 and resumed.frozen
    for batch in batches[3:]:
        resumed.update(batch)
    torch.testing.assert_close(resumed.mean, straight.mean, rtol=0, atol=0)
    torch.testing.assert_close(resumed.std, straight.std, rtol=0, atol=0)
