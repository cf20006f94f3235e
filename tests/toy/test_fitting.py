"""The toy teachers' Muon + AdamW optimiser: who steps which tensor, its schedule, and the error
on a torch without Muon."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mergekit_vision.engine.lr_schedule import warmup_cosine
from mergekit_vision.toy import fitting
from mergekit_vision.toy.fitting import muon_warmup_cosine


def _model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 3),
        nn.Flatten(),
        nn.LayerNorm(4 * 6 * 6),
        nn.Linear(4 * 6 * 6, 16),
        nn.GELU(),
        nn.Linear(16, 2),
    )


def test_muon_steps_the_linear_matrices_and_adamw_everything_else():
    model = _model()
    optimizers, _ = muon_warmup_cosine(model, lr=1e-2, weight_decay=0.05, warmup=2, steps=10)
    muon, adamw = optimizers.optimizers
    assert isinstance(muon, torch.optim.Muon) and isinstance(adamw, torch.optim.AdamW)
    in_muon = {id(p) for group in muon.param_groups for p in group["params"]}
    linears = [m for m in model if isinstance(m, nn.Linear)]
    assert in_muon == {id(m.weight) for m in linears}
    # Every other tensor is AdamW's, 1-D ones (norms, biases) without weight decay.
    decayed, plain = ({id(p) for p in g["params"]} for g in adamw.param_groups)
    assert decayed == {id(model[0].weight)}
    assert plain == {id(p) for p in model.parameters() if p.ndim == 1}


def test_muon_warmup_cosine_schedules_both_optimisers_and_lowers_the_loss():
    model = _model()
    optimizers, schedules = muon_warmup_cosine(model, lr=1e-2, weight_decay=0.0, warmup=2, steps=40)
    inputs, labels = torch.randn(32, 3, 8, 8), torch.randint(0, 2, (32,))
    first_lrs = [o.param_groups[0]["lr"] for o in optimizers.optimizers]
    losses = []
    for _ in range(40):
        loss = nn.functional.cross_entropy(model(inputs), labels)
        optimizers.zero_grad()
        loss.backward()
        optimizers.step()
        schedules.step()
        losses.append(loss.item())
    # Linear warmup, then cosine to 0, in both optimisers alike.
    assert first_lrs == pytest.approx([1e-2 * warmup_cosine(0, warmup=2, total_steps=40)] * 2)
    assert first_lrs[0] < 1e-2
    assert [o.param_groups[0]["lr"] for o in optimizers.optimizers] == pytest.approx([0.0, 0.0])
    assert losses[-1] < 0.5 * losses[0]


def test_muon_on_a_torch_without_it_says_what_to_do(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.delattr(torch.optim, "Muon")
    with pytest.raises(RuntimeError, match="torch >= 2.9.*optimizer 'adamw'"):
        fitting.muon_warmup_cosine(_model(), lr=1e-2, weight_decay=0.0, warmup=0, steps=1)
