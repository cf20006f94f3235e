"""AM-RADIO's adaptor head: per teacher, one MLP for the summary vector and one for the features."""

from __future__ import annotations

from typing import Literal

import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn

from mergekit_vision.contracts import HEADS, Head, Prompts, Student, StudentFeatures, Teacher
from mergekit_vision.heads.clip_head import target_spec, target_width
from mergekit_vision.registry import PluginParams, TeacherName


class AdaptorMLP(nn.Module):
    """RADIO's adaptor MLP: Linear, LayerNorm, GELU, then ``depth - 1`` more such blocks and a
    final Linear. Works on the last dimension of any ``[..., C]`` input."""

    def __init__(self, *, in_dim: int, hidden_dim: int, out_dim: int, depth: int = 2):
        """
        Args:
            in_dim: input width ``C``.
            hidden_dim: hidden width.
            out_dim: output width ``D``.
            depth: number of Linear layers (>= 1; 1 is a plain linear probe).
        """
        super().__init__()
        layers: list[nn.Module] = []
        width = in_dim
        for _ in range(depth - 1):
            layers += [nn.Linear(width, hidden_dim), nn.LayerNorm(hidden_dim), nn.GELU()]
            width = hidden_dim
        layers.append(nn.Linear(width, out_dim))
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def spatial_target_shape(
    teachers: dict[str, Teacher], teacher: str, target: str
) -> tuple[int, tuple[int, int] | None]:
    """``(C, (h, w))`` of a teacher's ``[B, C, h, w]`` target; ``(h, w)`` is None unless fixed."""
    shape = target_spec(teachers, teacher, target).shape
    if len(shape) != 4 or not isinstance(shape[1], int):
        raise ValueError(
            f"spatial target {target!r} of teacher {teacher!r} has shape {shape}; "
            "expected (B, C, h, w) with a fixed C"
        )
    height, width = shape[2], shape[3]
    grid = (height, width) if isinstance(height, int) and isinstance(width, int) else None
    return shape[1], grid


def resize_to_grid(maps: Tensor, grid: tuple[int, int] | None) -> Tensor:
    """``[B, C, h, w]`` resized bilinearly to ``grid`` (None, or already there: unchanged)."""
    if grid is None or tuple(maps.shape[-2:]) == grid:
        return maps
    # Shrinking (a ResNet CLIP's 2 x 2 map from a 16 x 16 student) filters first, so every
    # student token contributes instead of the few that bilinear sampling would hit.
    shrink = any(o < i for o, i in zip(grid, maps.shape[-2:], strict=True))
    return F.interpolate(maps, size=grid, mode="bilinear", align_corners=False, antialias=shrink)


@HEADS.register("adaptor")
class AdaptorHead(Head):
    """AM-RADIO's per-teacher adaptor (Ranzinger et al., "AM-RADIO: Agglomerative Vision
    Foundation Model -- Reduce All Domains Into One", CVPR 2024, arXiv 2312.06709).

    A summary MLP maps the student's summary (a class token, or the pooled patch tokens for a
    student without one) to the teacher's summary vector; a spatial MLP maps every patch token to
    the teacher's feature vector, and the map is optionally resized (bilinearly, low-pass filtered
    when it shrinks) to the teacher's fixed token grid, as RADIO matches the student's features to
    a teacher's resolution. Either side may be left out (``None``) for a teacher with only one
    kind of target.
    """

    class Params(PluginParams):
        teacher: TeacherName
        summary_target: str | None = "summary"
        spatial_target: str | None = "spatial"
        hidden_dim: int | None = Field(None, gt=0, description="default: the student's width")
        depth: int = Field(2, ge=1, description="Linear layers per MLP")
        summary_source: Literal["cls", "mean", "max"] = "mean"
        summary_token: int = Field(0, ge=0, description="which prefix token, for 'cls'")
        upsample: bool = True

        @model_validator(mode="after")
        def _at_least_one_side(self) -> AdaptorHead.Params:
            if self.summary_target is None and self.spatial_target is None:
                raise ValueError("give summary_target, spatial_target or both")
            return self

    def __init__(
        self,
        *,
        embed_dim: int,
        hidden_dim: int,
        depth: int = 2,
        summary_target: str | None = None,
        summary_dim: int | None = None,
        spatial_target: str | None = None,
        spatial_dim: int | None = None,
        output_grid: tuple[int, int] | None = None,
        summary_source: Literal["cls", "mean", "max"] = "mean",
        summary_token: int = 0,
    ):
        """
        Args:
            embed_dim: the student's token width ``C``.
            hidden_dim: the MLPs' hidden width.
            depth: Linear layers per MLP.
            summary_target, summary_dim: the teacher's summary target and its width ``D``.
            spatial_target, spatial_dim: the teacher's feature-map target and its channels.
            output_grid: ``(h, w)`` the feature map is resized to; None keeps the student's grid.
            summary_source: the student summary: a prefix token, or mean/max over patch tokens.
            summary_token: which prefix token for ``"cls"``.
        """
        super().__init__()
        mlp = dict(in_dim=embed_dim, hidden_dim=hidden_dim, depth=depth)
        self.summary_target, self.spatial_target = summary_target, spatial_target
        self.summary_mlp = None if summary_dim is None else AdaptorMLP(out_dim=summary_dim, **mlp)
        self.spatial_mlp = None if spatial_dim is None else AdaptorMLP(out_dim=spatial_dim, **mlp)
        self.output_grid = output_grid
        self.summary_source, self.summary_token = summary_source, summary_token

    @classmethod
    def build(
        cls, params: Params, *, student: Student, teachers: dict[str, Teacher]
    ) -> AdaptorHead:
        summary_dim = spatial_dim = grid = None
        if params.summary_target is not None:
            summary_dim = target_width(teachers, params.teacher, params.summary_target)
        if params.spatial_target is not None:
            spatial_dim, grid = spatial_target_shape(
                teachers, params.teacher, params.spatial_target
            )
            grid = grid if params.upsample else None
        prefix = int(getattr(student, "num_prefix_tokens", 0))
        if params.summary_source == "cls" and params.summary_token >= prefix:
            raise ValueError(
                f"summary_source 'cls' needs prefix token {params.summary_token}, but the "
                f"student has {prefix} prefix token(s); use 'mean' or 'max'"
            )
        return cls(
            embed_dim=student.embed_dim,
            hidden_dim=params.hidden_dim or student.embed_dim,
            depth=params.depth,
            summary_target=params.summary_target,
            summary_dim=summary_dim,
            spatial_target=params.spatial_target,
            spatial_dim=spatial_dim,
            output_grid=grid,
            summary_source=params.summary_source,
            summary_token=params.summary_token,
        )

    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: the student's output; ``tokens`` is ``[B, h, w, C]`` (and
                ``prefix_tokens`` ``[B, P, C]`` for ``summary_source="cls"``).
            prompts: unused.

        Returns:
            ``{summary_target: [B, D], spatial_target: [B, C_t, h_t, w_t]}`` (those configured).
        """
        out: dict[str, Tensor] = {}
        if self.summary_mlp is not None and self.summary_target is not None:
            out[self.summary_target] = self.summary_mlp(self._summary(features))
        if self.spatial_mlp is not None and self.spatial_target is not None:
            out[self.spatial_target] = self.spatial_features(features)
        return out

    def spatial_features(self, features: StudentFeatures) -> Tensor:
        """``[B, C_t, h, w]`` the per-token MLP output, resized to ``output_grid`` if set."""
        assert self.spatial_mlp is not None, "this adaptor has no spatial MLP"
        maps = self.spatial_mlp(features.tokens).permute(0, 3, 1, 2)
        return resize_to_grid(maps, self.output_grid)

    def _summary(self, features: StudentFeatures) -> Tensor:
        if self.summary_source == "cls":
            prefix = getattr(features, "prefix_tokens", None)
            if prefix is None or prefix.shape[1] <= self.summary_token:
                raise ValueError("the student's features carry no prefix token to summarise")
            return prefix[:, self.summary_token]
        tokens = features.tokens.flatten(1, 2)
        return tokens.mean(dim=1) if self.summary_source == "mean" else tokens.amax(dim=1)
