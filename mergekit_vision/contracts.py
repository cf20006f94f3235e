"""The contracts every plugin fulfils: teachers, students, heads and losses.

Conventions shared by all of them:
- Images are float tensors ``[B, 3, H, W]`` in ``[0, 1]``, RGB. Each model normalizes with its own
  mean/std; nothing upstream normalizes for it.
- Prompts are in pixel coordinates of the image as given to the model (see :class:`Prompts`).
- Plugins are built by a classmethod ``build(params, ...)`` from their validated ``Params``; the
  ``nn.Module`` constructors themselves take explicit keyword arguments, never a config object.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mergekit_vision.hub import WeightsName
from mergekit_vision.registry import PluginParams, Registry


@dataclass(frozen=True)
class TargetSpec:
    """One named output a teacher produces and a head must reproduce.

    ``shape`` names the dimensions, e.g. ``("B", 768)`` or ``("B", "N", "h", "w")``; feature
    vectors are ``[B, D]`` and feature maps ``[B, C, h, w]``, so the feature axis is 1;
    ``needs_prompts`` says the target is only defined for given prompts (SAM's mask logits).
    """

    shape: tuple[str | int, ...]
    description: str = ""
    needs_prompts: bool = False


@dataclass(frozen=True)
class Prompts:
    """Prompts for promptable segmentation: ``B`` images, ``Np`` point and ``Nb`` box prompts each.

    Coordinates are pixels ``(x, y)`` of the image as handed to the model, whose side is
    ``image_size``. Outputs follow the order: all point prompts, then all box prompts.

    Args:
        points: ``[B, Np, P, 2]`` float, ``P`` clicks per prompt, or None.
        point_labels: ``[B, Np, P]`` int (1 foreground, 0 background), or None.
        boxes: ``[B, Nb, 4]`` float ``(x0, y0, x1, y1)``, or None.
        image_size: side length in pixels of the (square) image the coordinates refer to.
    """

    image_size: int
    points: Tensor | None = None
    point_labels: Tensor | None = None
    boxes: Tensor | None = None

    @property
    def batch_size(self) -> int:
        ref = self.points if self.points is not None else self.boxes
        return 0 if ref is None else int(ref.shape[0])

    @property
    def count(self) -> int:
        """Prompts per image (points and boxes together)."""
        n = 0 if self.points is None else int(self.points.shape[1])
        return n + (0 if self.boxes is None else int(self.boxes.shape[1]))

    def to(self, device: torch.device | str) -> Prompts:
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Prompts(
            self.image_size, move(self.points), move(self.point_labels), move(self.boxes)
        )

    def select(self, index: int) -> Prompts:
        """The prompts of image ``index`` only, keeping a batch dimension of 1."""
        pick = lambda t: None if t is None else t[index : index + 1]  # noqa: E731
        return Prompts(
            self.image_size, pick(self.points), pick(self.point_labels), pick(self.boxes)
        )


def resize_and_normalize(
    images: Tensor, *, size: int | None, mean: Sequence[float], std: Sequence[float]
) -> Tensor:
    """``[B, 3, H, W]`` in [0, 1] -> ``[B, 3, size, size]`` normalized (``None`` keeps H, W)."""
    if size is not None and tuple(images.shape[-2:]) != (size, size):
        images = F.interpolate(images, size=(size, size), mode="bilinear", antialias=True)
    mean_t = torch.tensor(mean, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device, dtype=images.dtype).view(1, 3, 1, 1)
    return (images - mean_t) / std_t


class Teacher(nn.Module, ABC):
    """A frozen foundation model that produces named distillation targets.

    Subclasses set ``pixel_mean``/``pixel_std`` (in [0, 1] units) and ``input_size`` (the side the
    teacher resizes every image to; ``None`` runs at the size given), declare their targets in
    :meth:`target_specs`, and build from a local checkpoint in :meth:`build`.
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    input_size: int | None = None

    @classmethod
    @abstractmethod
    def build(cls, params: Any, *, allow_random_init: bool = False) -> Teacher:
        """Build from validated params; random weights only when ``allow_random_init``."""

    @classmethod
    def checkpoint_fields(cls, params: Any) -> dict[str, Path | None]:
        """Recipe fields (relative to ``params``) that name files this teacher reads; a field
        naming weights by hub name or tag maps to its file in the local cache, None if absent."""
        return {}

    @classmethod
    def weight_names(cls, params: Any) -> dict[str, WeightsName]:
        """Recipe fields (relative to ``params``) that name weights by hub name or tag, which
        ``vmerge fetch`` downloads and :func:`mergekit_vision.hub.resolve` finds."""
        return {}

    @abstractmethod
    def target_specs(self) -> dict[str, TargetSpec]:
        """The named targets :meth:`forward` can produce."""

    @abstractmethod
    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """Compute the requested targets for ``images`` ``[B, 3, H, W]`` in [0, 1]."""

    def component(self, name: str) -> nn.Module:
        """A named sub-module other plugins may initialise from (e.g. ``"mask_decoder"``)."""
        available = ", ".join(self.component_names()) or "(none)"
        raise KeyError(f"{type(self).__name__} has no component {name!r}; it has: {available}")

    def component_names(self) -> list[str]:
        return []

    def prepare(self, images: Tensor) -> Tensor:
        return resize_and_normalize(
            images, size=self.input_size, mean=self.pixel_mean, std=self.pixel_std
        )

    def freeze(self) -> Teacher:
        self.requires_grad_(False)
        return self.eval()

    def train(self, mode: bool = True) -> Teacher:
        # A teacher never leaves eval mode: its dropout and norms must stay deterministic.
        return super().train(False)


TEACHERS: Registry[Teacher] = Registry("teachers")


@dataclass
class StudentFeatures:
    """What a student backbone returns.

    Args:
        tokens: ``[B, h, w, C]`` output of the last transformer block (before any neck).
        feature_map: ``[B, C_out, h', w']`` the backbone's final feature map (e.g. ViT-Det's
            neck), at ``Student.feature_stride`` (the tokens' grid for a plain ViT); what a head
            reads unless it names a level.
        intermediates: ``[B, h, w, C]`` per-block outputs, when requested.
        image_size: side in pixels of the input images.
        blocks: ``[B, h, w, C]`` outputs of the blocks asked for by index (``blocks=`` of
            :meth:`Student.forward`), keyed by that index (0 is the first block).
        levels: ``[B, C_l, H/s, W/s]`` maps of a multi-scale (hierarchical) backbone, keyed
            ``"stride<s>"`` by their stride ``s`` in input pixels (SAM 2's Hiera: ``stride4``,
            ``stride8``, ``stride16``, the last also being ``feature_map``); the names are
            ``Student.level_names``. Empty for a single-scale backbone.
    """

    tokens: Tensor
    feature_map: Tensor
    image_size: int
    intermediates: list[Tensor] = field(default_factory=list)
    blocks: dict[int, Tensor] = field(default_factory=dict)
    levels: dict[str, Tensor] = field(default_factory=dict)

    def level(self, name: str | None) -> Tensor:
        """The map level ``name`` of :attr:`levels`; ``feature_map`` for None."""
        if name is None:
            return self.feature_map
        if name not in self.levels:
            raise ValueError(
                f"the student returned no feature level {name!r}; its levels: "
                f"{', '.join(self.levels) or '(none: a single-scale backbone)'}"
            )
        return self.levels[name]


class Student(nn.Module, ABC):
    """The backbone being trained; accepts square inputs of any multiple of ``patch_size``.

    ``returned_blocks`` are the blocks whose outputs every forward returns unless the call names
    its own (the merged model sets them to what its heads read, so callers that never ask, such
    as evaluation and export, hand every head its blocks). ``level_names`` are the multi-scale
    maps every forward returns in ``StudentFeatures.levels`` (none for a single-scale backbone).
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    pixel_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)
    pixel_std: tuple[float, float, float] = (1.0, 1.0, 1.0)
    embed_dim: int
    out_channels: int
    patch_size: int
    native_size: int
    returned_blocks: tuple[int, ...] = ()
    level_names: tuple[str, ...] = ()

    @property
    def feature_stride(self) -> int:
        """Input pixels per cell of ``feature_map`` (a plain ViT's: its patch size)."""
        return self.patch_size

    @classmethod
    @abstractmethod
    def build(cls, params: Any, *, teachers: dict[str, Teacher]) -> Student:
        """Build (and initialise from a teacher, if the params say so)."""

    @classmethod
    def weight_names(cls, params: Any) -> dict[str, WeightsName]:
        """Recipe fields (relative to ``params``) that name weights by hub name or tag."""
        return {}

    def image_sides(self, images: Tensor, *, why: str = "") -> tuple[int, int]:
        """``images``' height and width, refused unless both are multiples of ``patch_size``
        (the student's grid); ``why`` ends the message with what needs it."""
        height, width = images.shape[-2:]
        if height % self.patch_size or width % self.patch_size:
            raise ValueError(
                f"image size {height}x{width} is not a multiple of patch_size "
                f"{self.patch_size}{why}"
            )
        return height, width

    @abstractmethod
    def forward(
        self,
        images: Tensor,
        *,
        return_intermediates: bool = False,
        blocks: Sequence[int] | None = None,
    ) -> StudentFeatures:
        """``images`` ``[B, 3, H, W]`` in [0, 1] (normalized inside); ``blocks``: the indices
        (into :meth:`transformer_blocks`) whose outputs ``features.blocks`` returns, None for
        ``returned_blocks``; other blocks' outputs are not kept."""

    @abstractmethod
    def last_block(self) -> nn.Module:
        """The last transformer block (heads may initialise from it)."""

    def transformer_blocks(self) -> list[nn.Module]:
        """The transformer blocks in order: what block indices (``blocks=``) count."""
        return list(getattr(self, "blocks", ()))

    def shard_units(self) -> list[nn.Module]:
        """Sub-modules FSDP2 shards as one unit each (the transformer blocks, which the forward
        must call as ``module(x)``); the rest of the student is one more unit."""
        return self.transformer_blocks()


def block_indices(indices: Sequence[int], *, depth: int, what: str) -> tuple[int, ...]:
    """``indices`` into ``depth`` blocks (negative ones count from the end) as non-negative,
    sorted and unique; a clear error naming ``what`` asked for one out of range."""
    wrong = [i for i in indices if not -depth <= i < depth]
    if wrong:
        raise ValueError(
            f"{what}: block(s) {wrong} out of range; the student has {depth} blocks "
            f"(indices 0..{depth - 1}, or -{depth}..-1 from the end)"
        )
    return tuple(sorted({i % depth for i in indices}))


def require_levels(student: Student, names: Sequence[str], *, what: str) -> None:
    """A clear error unless ``student`` returns every feature level in ``names``."""
    missing = [name for name in names if name not in student.level_names]
    if missing:
        raise ValueError(
            f"{what} reads the student's feature levels {list(names)}, but "
            f"{type(student).__name__} lacks {missing} (its levels: "
            f"{', '.join(student.level_names) or 'none, a single-scale backbone'}); use a "
            "multi-scale student such as sam2_hiera"
        )


STUDENTS: Registry[Student] = Registry("students")


class Head(nn.Module, ABC):
    """Maps student features to one teacher's targets (named like the teacher's targets).

    ``student_blocks`` names the student blocks whose outputs the head reads from
    ``features.blocks`` (non-negative indices); the training step asks the student for them.
    A head reads ``features.feature_map``; ``student_levels`` names the multi-scale maps it
    reads from ``features.levels`` besides (checked at build with :func:`require_levels`).
    """

    Params: ClassVar[type[PluginParams]] = PluginParams
    student_blocks: tuple[int, ...] = ()
    student_levels: tuple[str, ...] = ()

    @classmethod
    @abstractmethod
    def build(cls, params: Any, *, student: Student, teachers: dict[str, Teacher]) -> Head:
        """Build against the student's output shape and the teachers' target shapes."""

    @abstractmethod
    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """Predictions keyed by target name."""


HEADS: Registry[Head] = Registry("heads")


class Loss(nn.Module, ABC):
    """A distillation loss between a head's prediction and a teacher's target."""

    Params: ClassVar[type[PluginParams]] = PluginParams

    @classmethod
    def build(cls, params: Any) -> Loss:
        return cls(**params.model_dump())

    @abstractmethod
    def forward(self, prediction: Tensor, target: Tensor) -> Tensor:
        """A scalar loss (mean over the batch)."""


LOSSES: Registry[Loss] = Registry("losses")


def recipe_teacher(teachers: dict[str, Teacher], name: str, *, field: str) -> Teacher:
    """``teachers[name]``, or an error saying that ``field`` (e.g. ``"vitdet init_from"``) names
    no teacher of the recipe, and which it has."""
    if name not in teachers:
        raise ValueError(
            f"{field} {name!r} is not a teacher of this recipe; "
            f"teachers: {', '.join(sorted(teachers)) or '(none)'}"
        )
    return teachers[name]
