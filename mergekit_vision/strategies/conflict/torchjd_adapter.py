"""The one bridge between the conflict contract and torchjd's aggregators (Quinton & Rey 2024).

Every torchjd-backed strategy is a :class:`TorchJDStrategy`: it names the optional modules it
needs (checked when the strategy is built, so a recipe fails before training starts), builds its
aggregator in :meth:`TorchJDStrategy.make_aggregator`, and states how the aggregator's output is
scaled.

Scale convention. torchjd's aggregators disagree on scale: PCGrad, ConFIG and GradDrop return a
vector comparable to the *sum* of the rows; UPGrad, DualProj, MGDA, IMTL-G and Aligned-MTL return
a convex-combination-like vector comparable to their *mean*; CAGrad returns ``(1 + c)`` times the
mean for agreeing rows; Nash-MTL's update is scale-free. The engine's default (``sum``) writes the
sum of the task gradients, so every strategy here is rescaled such that two *identical* task
gradients ``g, g`` aggregate to ``2 g``, their sum. Learning rates tuned with ``sum`` then stay
comparable.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from importlib.util import find_spec
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

from mergekit_vision.strategies.conflict.base import ConflictStrategy

if TYPE_CHECKING:
    from torchjd.aggregation import Aggregator


class MissingDependencyError(ImportError):
    """A conflict strategy's optional dependency is not installed."""


class TorchJDStrategy(ConflictStrategy, ABC):
    """Base of the strategies that delegate :meth:`aggregate` to a torchjd aggregator.

    Subclasses set ``required_modules`` (importable names of optional dependencies besides
    torchjd), ``extra`` (the ``mergekit-vision[...]`` extra that installs them) and
    ``output_scale`` (``"sum"`` or ``"mean"``: what the aggregator's output is comparable to),
    and implement :meth:`make_aggregator`. The aggregator is built on first use, and again when
    the number of task rows changes (stateful aggregators such as Nash-MTL depend on it).
    """

    needs_task_gradients: ClassVar[bool] = True
    required_modules: ClassVar[tuple[str, ...]] = ()
    extra: ClassVar[str | None] = None
    output_scale: ClassVar[str] = "mean"

    def __init__(self, **kwargs: Any) -> None:
        super().__init__()
        self.check_dependencies()
        self._aggregator: Aggregator | None = None
        self._num_tasks = 0

    @classmethod
    def build(cls, params: Any) -> ConflictStrategy:
        cls.check_dependencies()
        return super().build(params)

    @classmethod
    def check_dependencies(cls) -> None:
        """Raise :class:`MissingDependencyError` naming the pip extra when a module is missing."""
        name = getattr(cls, "registry_name", cls.__name__)
        if find_spec("torchjd") is None:
            raise MissingDependencyError(
                f"conflict strategy {name!r} needs torchjd: pip install 'torchjd>=0.18'"
            )
        if any(find_spec(module) is None for module in cls.required_modules):
            raise MissingDependencyError(
                f"conflict strategy {name!r} needs {' and '.join(cls.required_modules)}: "
                f"pip install 'mergekit-vision[{cls.extra}]'"
            )

    @abstractmethod
    def make_aggregator(self, *, num_tasks: int) -> Aggregator:
        """The torchjd aggregator for ``num_tasks`` rows."""

    def aggregator(self, *, num_tasks: int) -> Aggregator:
        if self._aggregator is None or self._num_tasks != num_tasks:
            self._aggregator, self._num_tasks = self.make_aggregator(num_tasks=num_tasks), num_tasks
        return self._aggregator

    def aggregate(self, matrix: Tensor) -> Tensor:
        """Args: matrix ``[T, P]``, one flattened shared gradient per task -> update ``[P]``."""
        with torch.no_grad():
            update = self.aggregator(num_tasks=matrix.shape[0])(matrix)
            return update * self.sum_scale(matrix)

    def sum_scale(self, matrix: Tensor) -> float | Tensor:
        """The factor that makes two identical rows aggregate to their sum."""
        return float(matrix.shape[0]) if self.output_scale == "mean" else 1.0
