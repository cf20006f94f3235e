"""One strict load for every adapter: errors name what was loaded and each key that does not fit."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mergekit_vision.weights import load_strict


def test_loads_fitting_weights():
    model = nn.Linear(3, 2)
    weights = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    load_strict(model, weights, what="linear from a test")
    assert torch.equal(model.weight, torch.ones(2, 3))


def test_error_names_what_and_every_kind_of_key_and_loads_nothing():
    model = nn.Linear(3, 2)
    before = model.weight.clone()
    weights = {"weight": torch.ones(2, 4), "scale": torch.ones(1)}
    described = []
    with pytest.raises(ValueError) as error:
        load_strict(
            model,
            weights,
            what="x.pth does not fit 'linear'",
            describe=lambda w: described.append(w) or "it looks like a scaled linear",
        )
    assert str(error.value) == (
        "x.pth does not fit 'linear': shape of weight: file (2, 4), model (2, 3); "
        "unexpected scale; missing bias. it looks like a scaled linear."
    )
    assert described == [weights] and torch.equal(model.weight, before)
