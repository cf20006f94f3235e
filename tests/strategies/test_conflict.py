from __future__ import annotations

import importlib

import pytest
import torch
from torch import nn

from mergekit_vision.engine.gradients import TaskGradients
from mergekit_vision.strategies.conflict import torchjd_adapter
from mergekit_vision.strategies.conflict.base import CONFLICT
from mergekit_vision.strategies.conflict.torchjd_adapter import MissingDependencyError

NAMES = [
    "pcgrad",
    "upgrad",
    "mgda",
    "cagrad",
    "imtl_g",
    "aligned_mtl",
    "dualproj",
    "config",
    "graddrop",
    "nash_mtl",
]
for _name in NAMES:
    importlib.import_module(f"mergekit_vision.strategies.conflict.{_name}")


def build(name: str, **params):
    """The strategy, or a skip when its optional dependencies are not installed here."""
    cls = CONFLICT.get(name)
    try:
        return cls.build(cls.Params(**params))
    except MissingDependencyError as missing:
        pytest.skip(str(missing))


def test_pcgrad_projects_conflicting_gradients_by_hand():
    g1, g2 = torch.tensor([1.0, 0.0]), torch.tensor([-1.0, 1.0])
    g1_proj = g1 - (g1 @ g2) / (g2 @ g2) * g2  # [0.5, 0.5]
    g2_proj = g2 - (g2 @ g1) / (g1 @ g1) * g1  # [0, 1]
    out = build("pcgrad").aggregate(torch.stack([g1, g2]))
    torch.testing.assert_close(out, g1_proj + g2_proj)
    torch.testing.assert_close(out, torch.tensor([0.5, 1.5]))


def test_pcgrad_without_conflict_is_the_sum():
    agreeing = torch.tensor([[1.0, 2.0, 0.0], [0.5, 0.5, 3.0]])
    assert float(agreeing[0] @ agreeing[1]) > 0
    torch.testing.assert_close(build("pcgrad").aggregate(agreeing), agreeing.sum(0))


def test_mgda_orthogonal_unit_gradients_give_the_min_norm_point_times_tasks():
    out = build("mgda").aggregate(torch.eye(2))
    # min-norm point of the segment between e1 and e2 is (0.5, 0.5); times T = 2
    torch.testing.assert_close(out, torch.tensor([1.0, 1.0]))
    # unequal norms: min over a of |a e1 + (1 - a) 2 e2|^2 -> a = 0.8: (0.8, 0.4), times 2
    out = build("mgda", epsilon=1e-6, max_iters=1000).aggregate(torch.tensor([[1.0, 0], [0, 2]]))
    torch.testing.assert_close(out, torch.tensor([1.6, 0.8]), atol=1e-3, rtol=0)


def test_upgrad_conflicts_with_no_task():
    generator = torch.Generator().manual_seed(0)
    strategy = build("upgrad")
    for _ in range(5):
        matrix = torch.randn(3, 20, generator=generator)
        matrix[1] = -matrix[0] + 0.3 * matrix[1]  # a strong conflict
        out = strategy.aggregate(matrix)
        assert (matrix @ out).min() >= -1e-4
        assert (matrix.sum(0) @ matrix.T).min() < 0  # the plain sum does conflict


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("rows", [2, 3])
def test_identical_task_gradients_aggregate_to_their_sum(name, rows):
    g = torch.tensor([1.0, 2.0, -0.5, 0.25])
    out = build(name).aggregate(g.repeat(rows, 1))
    torch.testing.assert_close(out, rows * g, atol=2e-3, rtol=2e-3)


def test_nash_mtl_nearly_identical_gradients_solve_to_about_their_sum():
    generator = torch.Generator().manual_seed(0)
    g = torch.randn(1, 50, generator=generator)
    matrix = torch.cat([g, g + 0.1 * torch.randn(1, 50, generator=generator)])
    strategy = build("nash_mtl")
    out = strategy.aggregate(matrix)
    assert strategy.fallbacks == 0
    torch.testing.assert_close(out, matrix.sum(0), atol=0.05, rtol=0.05)


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.shared = nn.Linear(4, 3)
        self.heads = nn.ModuleDict({"a": nn.Linear(3, 1), "b": nn.Linear(3, 1)})

    def loss(self, task: str, x: torch.Tensor) -> torch.Tensor:
        return self.heads[task](torch.tanh(self.shared(x))).pow(2).mean()


@pytest.mark.parametrize("name", NAMES)
def test_only_shared_gradients_are_rewritten(name):
    torch.manual_seed(0)
    model, x = TwoHeads(), torch.randn(5, 4)
    shared = list(model.shared.parameters())
    strategy = build(name)
    rows = []
    for task in ("a", "b"):  # the plain per-task gradients, for reference
        model.zero_grad()
        model.loss(task, x).backward()
        rows.append(torch.cat([p.grad.reshape(-1) for p in shared]))
    model.zero_grad()
    for task in ("a", "b"):
        model.loss(task, x).backward()
    head_grads = {n: p.grad.clone() for n, p in model.heads.named_parameters()}
    model.zero_grad()
    recorder = TaskGradients(shared=shared, enabled=True)  # the engine's, as in a step
    recorder.begin_step()
    for task in ("a", "b"):
        model.loss(task, x).backward()
        recorder.after_backward(task=task)
    torch.testing.assert_close(torch.stack(list(recorder.rows().values())), torch.stack(rows))
    torch.manual_seed(1)  # graddrop draws: compare with the same draw
    strategy.finish_step(shared=shared, task_gradients=recorder.rows())
    written = torch.cat([p.grad.reshape(-1) for p in shared])
    torch.manual_seed(1)
    expected = build(name).aggregate(torch.stack(rows))
    torch.testing.assert_close(written, expected, atol=1e-5, rtol=1e-4)
    for n, p in model.heads.named_parameters():
        torch.testing.assert_close(p.grad, head_grads[n])


@pytest.mark.parametrize(
    ("name", "module", "message"),
    [
        ("cagrad", "clarabel", "needs cvxpy and clarabel: pip install 'mergekit-vision[cagrad]'"),
        (
            "upgrad",
            "quadprog",
            "needs qpsolvers and quadprog: pip install 'mergekit-vision[quadprog]'",
        ),
        ("dualproj", "qpsolvers", "pip install 'mergekit-vision[quadprog]'"),
        ("nash_mtl", "ecos", "needs cvxpy and ecos: pip install 'mergekit-vision[nash_mtl]'"),
        ("pcgrad", "torchjd", "needs torchjd"),
    ],
)
def test_missing_optional_dependency_fails_at_build(monkeypatch, name, module, message):
    real = torchjd_adapter.find_spec
    monkeypatch.setattr(torchjd_adapter, "find_spec", lambda m: None if m == module else real(m))
    cls = CONFLICT.get(name)
    with pytest.raises(MissingDependencyError) as err:
        cls.build(cls.Params())
    assert f"conflict strategy '{name}' " in str(err.value)
    assert message in str(err.value)
