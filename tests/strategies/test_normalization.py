from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mergekit_vision.strategies.normalization.base import NORMALIZATION
from mergekit_vision.strategies.normalization.phi_s import (
    PhiS,
    equalizing_rotation,
    sylvester_hadamard,
)
from mergekit_vision.strategies.normalization.standardize import Standardize


def correlated_targets(dim: int, *, n: int = 4096, seed: int = 0) -> torch.Tensor:
    """``[n, dim]`` with unequal, correlated dimensions and a far-off mean."""
    generator = torch.Generator().manual_seed(seed)
    mixing = torch.randn(dim, dim, generator=generator) * torch.linspace(0.1, 20.0, dim)
    offset = torch.randn(dim, generator=generator) * 50
    return torch.randn(n, dim, generator=generator) @ mixing.T + offset


def estimate(normalizer, targets: torch.Tensor) -> None:
    for chunk in targets.reshape(4, -1, 2, targets.shape[-1]).unbind(0):  # [..., D] batches
        normalizer.update(chunk)
    assert normalizer.frozen


def test_standardize_gives_zero_mean_unit_variance_and_folds_exactly():
    targets = correlated_targets(6)
    normalizer = Standardize.build(Standardize.Params(estimate_steps=4), dim=6)
    torch.testing.assert_close(normalizer(targets), targets)  # identity before any update
    estimate(normalizer, targets)
    normalizer.update(targets * 100)  # frozen: ignored
    out = normalizer(targets).double()
    torch.testing.assert_close(out.mean(0), torch.zeros(6, dtype=torch.float64), atol=1e-4, rtol=0)
    torch.testing.assert_close(out.var(0, unbiased=False), torch.ones(6, dtype=torch.float64))
    torch.testing.assert_close(
        normalizer.inverse(normalizer(targets)), targets, rtol=1e-5, atol=1e-3
    )
    assert_fold_exact(normalizer, dim=6)


@pytest.mark.parametrize("dim", [8, 6])  # Sylvester Hadamard, Givens fallback
def test_phi_s_is_isotropic_with_equal_per_dimension_variance(dim):
    targets = correlated_targets(dim)
    normalizer = PhiS.build(PhiS.Params(estimate_steps=4), dim=dim)
    estimate(normalizer, targets)
    out = normalizer(targets).double()
    covariance = torch.cov(out.T, correction=0)
    torch.testing.assert_close(
        out.mean(0), torch.zeros(dim, dtype=torch.float64), atol=1e-4, rtol=0
    )
    # every dimension has variance 1, but PHI-S is a rotation and a scale, not a whitening:
    torch.testing.assert_close(covariance.diagonal(), torch.ones(dim, dtype=torch.float64))
    raw = torch.cov(targets.double().T, correction=0)
    eigen_raw = torch.linalg.eigvalsh(raw)
    phi = eigen_raw.mean().sqrt()
    torch.testing.assert_close(torch.linalg.eigvalsh(covariance), eigen_raw / phi**2)
    torch.testing.assert_close(
        normalizer.inverse(normalizer(targets)), targets, rtol=1e-5, atol=1e-3
    )
    assert_fold_exact(normalizer, dim=dim)


def test_phi_s_uses_the_hadamard_matrix_for_powers_of_two():
    targets = correlated_targets(4)
    normalizer = PhiS(dim=4, estimate_steps=4)
    estimate(normalizer, targets)
    _, covariance = normalizer.mean_and_covariance()
    _, eigenvectors = torch.linalg.eigh(covariance)
    hadamard = normalizer.rotation @ eigenvectors  # R U^T U = R
    torch.testing.assert_close(hadamard, sylvester_hadamard(4))
    assert (sylvester_hadamard(4).abs() == 0.5).all()


def test_equalizing_rotation_spreads_any_spectrum_evenly():
    eigenvalues = torch.tensor([9.0, 0.0, 1.0, 4.0, 0.5, 30.0, 2.0], dtype=torch.float64)
    rotation = equalizing_rotation(eigenvalues)
    torch.testing.assert_close(rotation @ rotation.T, torch.eye(7, dtype=torch.float64))
    spread = rotation @ torch.diag(eigenvalues) @ rotation.T
    torch.testing.assert_close(
        spread.diagonal(), torch.full((7,), float(eigenvalues.mean())).double()
    )


def test_phi_s_before_freezing_only_centres_and_scales():
    targets = correlated_targets(6)
    normalizer = PhiS(dim=6, estimate_steps=10)
    normalizer.update(targets)
    assert not normalizer.frozen and not bool(normalizer.solved)
    mean, covariance = normalizer.mean_and_covariance()
    phi = math.sqrt(float(covariance.diagonal().mean()))
    expected = (targets.double() - mean) / phi
    torch.testing.assert_close(normalizer(targets).double(), expected, atol=1e-4, rtol=1e-4)


def test_phi_s_state_round_trips():
    targets = correlated_targets(6)
    normalizer = PhiS(dim=6, estimate_steps=4)
    estimate(normalizer, targets)
    restored = PhiS(dim=6, estimate_steps=4)
    restored.load_state_dict(normalizer.state_dict())
    assert restored.frozen
    torch.testing.assert_close(restored(targets), normalizer(targets))


def assert_fold_exact(normalizer, *, dim: int) -> None:
    torch.manual_seed(0)
    linear = nn.Linear(5, dim)
    x = torch.randn(7, 5)
    folded = normalizer.fold_into(linear)
    assert folded is not linear
    with torch.no_grad():
        torch.testing.assert_close(folded(x), normalizer.inverse(linear(x)), rtol=1e-4, atol=1e-3)
    without_bias = nn.Linear(5, dim, bias=False)
    with torch.no_grad():
        expected = normalizer.inverse(without_bias(x))
        torch.testing.assert_close(
            normalizer.fold_into(without_bias)(x), expected, rtol=1e-4, atol=1e-3
        )


@pytest.mark.parametrize("name", ["standardize", "phi_s", "teacher_norm"])
def test_registered(name):
    assert name in NORMALIZATION


@pytest.mark.parametrize("name", ["standardize", "phi_s", "teacher_norm"])
def test_feature_maps_are_normalized_along_their_channel_axis(name):
    """Teacher feature maps are ``[B, C, h, w]``: statistics and maps are per channel, whatever
    the spatial size (the builder sizes the normalizer by the target's axis 1)."""
    from types import SimpleNamespace

    from mergekit_vision.contracts import TargetSpec
    from mergekit_vision.engine.build import _build_normalizer
    from mergekit_vision.recipe.schema import NormalizationSpec

    channels = 4
    teacher = SimpleNamespace(
        target_specs=lambda: {"spatial": TargetSpec(("B", channels, 3, 5), "feature map")}
    )
    spec = SimpleNamespace(target="spatial", normalize=NormalizationSpec(type=name))
    normalizer = _build_normalizer(spec, teacher)
    assert normalizer.dim == channels
    vectors = correlated_targets(channels, n=4 * 2 * 3 * 5)  # [n, C]
    maps = vectors.reshape(4, 2, 3, 5, channels).movedim(-1, 2)  # 4 batches of [2, C, 3, 5]
    reference = NORMALIZATION.get(name).build(NORMALIZATION.get(name).Params(estimate_steps=4),
                                              dim=channels)  # fmt: skip
    normalizer.estimate_steps = 4
    for batch in maps.unbind(0):
        normalizer.observe(batch)
        reference.update(batch.movedim(1, -1))
    out = normalizer.normalize(maps[0])
    assert out.shape == maps[0].shape
    torch.testing.assert_close(out.movedim(1, -1), reference(maps[0].movedim(1, -1)))
    torch.testing.assert_close(normalizer.denormalize(out), maps[0], atol=1e-3, rtol=1e-4)
