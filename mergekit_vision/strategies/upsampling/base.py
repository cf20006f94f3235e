"""The teacher-upsampler contract: a task's dense target at a finer grid than its teacher's.

A teacher with a fixed input side gives a student trained at a higher resolution a coarse map
(a 16 x 16 grid at 224 px whatever the student sees). A task's ``teacher_upsampler`` replaces
the plain teacher call with one that produces its ``[B, D, h, w]`` target on a finer grid
``[B, D, f h, f w]``; the dense losses compare the student's map on that grid (a head whose
map keeps the student's grid, e.g. ``adaptor`` with ``upsample: false``, loses no detail). An
upsampler with weights of its own (``fit_steps > 0``) fits them before the first training step
(the engine's calibration pass, as the target normalizers estimate theirs), then freezes.

Upsamplers know the teacher only as a function ``teacher(images [N, 3, S, S] in [0, 1]) ->
[N, D, h, w]`` (the task's target), so this layer imports no model.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from mergekit_vision.registry import PluginParams, Registry

TeacherMap = Callable[[Tensor], Tensor]


class TeacherUpsampler(nn.Module):
    """Args of every upsampler: ``dim`` (the target's channels ``D``) and ``grid`` (the teacher's
    ``(h, w)``, None when it follows the input)."""

    Params: ClassVar[type[PluginParams]] = PluginParams

    def __init__(self, *, dim: int, grid: tuple[int, int] | None):
        super().__init__()
        self.dim, self.grid = dim, grid
        self.fit_steps = 0  # calibration batches its weights need; 0: none
        self.register_buffer("fitted_steps", torch.zeros((), dtype=torch.long))

    @classmethod
    def build(
        cls, params: Any, *, dim: int, grid: tuple[int, int] | None, seed: int
    ) -> TeacherUpsampler:
        """Build from validated params; ``seed`` initialises any weights (the global RNG is
        left alone, so building one changes no other module's initialisation)."""
        raise NotImplementedError

    def check_side(self, side: int) -> None:
        """Raise ValueError if images of ``side`` px cannot be upsampled (checked at build)."""

    @property
    def fitted(self) -> bool:
        return int(self.fitted_steps) >= self.fit_steps

    def forward(self, images: Tensor, *, teacher: TeacherMap) -> Tensor:
        """The target for ``images`` ``[B, 3, R, R]`` in [0, 1], on the finer grid
        ``[B, D, H, W]``."""
        raise NotImplementedError

    def fit_step(self, images: Tensor, *, teacher: TeacherMap, generator: torch.Generator) -> float:
        """One update of the weights from ``images`` (every rank's: the weights stay equal);
        returns the step's loss. Only upsamplers with ``fit_steps > 0`` implement it."""
        raise NotImplementedError


UPSAMPLING: Registry[TeacherUpsampler] = Registry("upsampling")
