"""PHI-S: PCA-Hadamard isotropic standardisation of teacher targets."""

from __future__ import annotations

import copy
import math

import torch
from pydantic import Field
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams
from mergekit_vision.strategies.normalization.base import NORMALIZATION, TargetNormalizer


@NORMALIZATION.register("phi_s")
class PhiS(TargetNormalizer):
    """PHI-S: centre, rotate (PCA then Hadamard) and scale targets to equal variance per dim.

    Ranzinger et al., "PHI-S: Distribution Balancing for Label-Free Multi-Teacher
    Distillation", arXiv 2410.01680, 2024.

    With the targets' mean ``mu`` and covariance ``Sigma = U diag(lambda) U^T`` (running float64
    sums over the first ``estimate_steps`` updates), the map is

        ``y' = phi^-1 R U^T (y - mu)``,  ``phi = sqrt(mean(lambda))``

    where the rotation ``R`` spreads the variance evenly: every output dimension has variance
    exactly ``mean(lambda)``, hence 1 after dividing by ``phi`` (isotropic, not whitening: the
    covariance keeps its shape up to rotation and one global scale). For ``D`` a power of two
    ``R`` is the normalized Sylvester Hadamard matrix ``H`` of the paper. Other widths (768, ...)
    have no Sylvester matrix and padding would change the head's width, so ``R`` is then built
    from ``lambda`` by Givens rotations that equalise the diagonal of ``R diag(lambda) R^T``
    (Bendel & Mickey 1978): the same equal per-dimension variance, hence the same property PHI-S
    relies on, for any ``D``. The map is orthogonal up to ``phi``, so :meth:`inverse` and
    :meth:`fold_into` are exact. During estimation only the running ``mu`` and ``phi`` apply (no
    rotation, which is computed once when the statistics freeze); a training run estimates them
    all before its first step, so its head only ever learns the full map.

    Args:
        dim: feature width ``D``; targets are ``[..., D]``.
        estimate_steps: updates that feed the statistics before they freeze.
        eps: floor of ``phi``.
    """

    class Params(PluginParams):
        estimate_steps: int = Field(100, gt=0)
        eps: float = Field(1e-6, gt=0.0)

    def __init__(self, *, dim: int, estimate_steps: int = 100, eps: float = 1e-6):
        super().__init__(dim=dim, estimate_steps=estimate_steps)
        self.eps = eps
        f64 = torch.float64
        self.register_buffer("count", torch.zeros((), dtype=f64))
        self.register_buffer("total", torch.zeros(dim, dtype=f64))
        self.register_buffer("total_outer", torch.zeros(dim, dim, dtype=f64))
        # Set when the statistics freeze: y' = (y - mu) @ rotation.T / phi.
        self.register_buffer("rotation", torch.eye(dim, dtype=f64))
        self.register_buffer("phi", torch.ones((), dtype=f64))
        self.register_buffer("solved", torch.zeros((), dtype=torch.bool))

    def update(self, targets: Tensor) -> None:
        if self.frozen:
            return
        flat = targets.detach().reshape(-1, self.dim).to(self.total.device, torch.float64)
        self.count += flat.shape[0]
        self.total += flat.sum(0)
        self.total_outer += flat.T @ flat
        self.updates += 1
        if self.frozen:
            self._solve()

    def mean_and_covariance(self) -> tuple[Tensor, Tensor]:
        """``mu [D]`` and ``Sigma [D, D]`` (float64) of the targets seen so far."""
        if float(self.count) == 0:
            return torch.zeros_like(self.total), torch.eye(self.dim, dtype=torch.float64)
        mean = self.total / self.count
        return mean, self.total_outer / self.count - torch.outer(mean, mean)

    def _solve(self) -> None:
        _, covariance = self.mean_and_covariance()
        eigenvalues, eigenvectors = torch.linalg.eigh(covariance)
        eigenvalues = eigenvalues.clamp_min(0.0)
        spread = sylvester_hadamard(self.dim) if _is_power_of_two(self.dim) else None
        if spread is None:
            spread = equalizing_rotation(eigenvalues)
        self.rotation.copy_(spread.to(eigenvectors) @ eigenvectors.T)
        self.phi.copy_(eigenvalues.mean().sqrt().clamp_min(self.eps))
        self.solved.fill_(True)

    def _map(self) -> tuple[Tensor, Tensor, Tensor]:
        """``mu``, the rotation and ``phi`` in force now (float64)."""
        mean, covariance = self.mean_and_covariance()
        if bool(self.solved):
            return mean, self.rotation, self.phi
        phi = covariance.diagonal().mean().clamp_min(0.0).sqrt().clamp_min(self.eps)
        return mean, torch.eye(self.dim, dtype=torch.float64, device=mean.device), phi

    def forward(self, targets: Tensor) -> Tensor:
        mean, rotation, phi = (t.to(targets.device, targets.dtype) for t in self._map())
        return (targets - mean) @ rotation.T / phi

    def inverse(self, normalized: Tensor) -> Tensor:
        mean, rotation, phi = (t.to(normalized.device, normalized.dtype) for t in self._map())
        return (normalized * phi) @ rotation + mean

    def fold_into(self, linear: nn.Linear) -> nn.Linear:
        """``W' = phi R^T W``, ``b' = phi R^T b + mu`` where ``R`` is the full rotation."""
        mean, rotation, phi = self._map()
        folded = copy.deepcopy(linear)
        with torch.no_grad():
            back = (phi * rotation.T).to(linear.weight.device)
            bias = linear.bias.double() if linear.bias is not None else torch.zeros_like(mean)
            new_bias = back @ bias.to(back.device) + mean.to(back.device)
            folded.weight.copy_(back @ linear.weight.double())
            if folded.bias is None:
                folded.bias = nn.Parameter(new_bias.to(linear.weight.dtype))
            else:
                folded.bias.copy_(new_bias)
        return folded


def _is_power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def sylvester_hadamard(n: int) -> Tensor:
    """The orthonormal Hadamard matrix ``[n, n]``, entries ``+-1/sqrt(n)``; ``n`` a power of 2."""
    if not _is_power_of_two(n):
        raise ValueError(f"Sylvester's construction needs a power of two, got {n}")
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h / math.sqrt(n)


def equalizing_rotation(eigenvalues: Tensor) -> Tensor:
    """An orthogonal ``R [D, D]`` with ``diag(R diag(lambda) R^T) = mean(lambda)`` everywhere.

    Bendel & Mickey (1978): while some diagonal entry ``a_ii`` is below the mean and some ``a_jj``
    above it, a Givens rotation in the ``(i, j)`` plane sets ``a_ii`` to the mean exactly (the
    trace is kept); at most ``D - 1`` rotations of ``O(D)`` work each.
    """
    a = torch.diag(eigenvalues.double().cpu())
    rotation = torch.eye(a.shape[0], dtype=torch.float64)
    target = float(a.diagonal().mean())
    tol = 1e-10 * max(abs(target), 1e-30)
    while True:
        diag = a.diagonal()
        low = torch.nonzero(diag < target - tol).flatten()
        high = torch.nonzero(diag > target + tol).flatten()
        if len(low) == 0 or len(high) == 0:
            return rotation
        i, j = int(low[0]), int(high[0])
        aii, ajj, aij = float(a[i, i]), float(a[j, j]), float(a[i, j])
        # tan(theta) solves (ajj - t) x^2 + 2 aij x + (aii - t) = 0; the form avoids cancellation.
        disc = math.sqrt(aij * aij + (ajj - target) * (target - aii))
        x = (target - aii) / (aij + disc) if aij >= 0 else (disc - aij) / (ajj - target)
        c = 1.0 / math.sqrt(1.0 + x * x)
        _rotate_rows(a, i, j, c, c * x)
        _rotate_rows(a.T, i, j, c, c * x)  # a.T is a view: this rotates the columns
        _rotate_rows(rotation, i, j, c, c * x)


def _rotate_rows(m: Tensor, i: int, j: int, c: float, s: float) -> None:
    row_i, row_j = m[i].clone(), m[j].clone()
    m[i] = c * row_i + s * row_j
    m[j] = -s * row_i + c * row_j
