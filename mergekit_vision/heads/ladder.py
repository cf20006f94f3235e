"""UNIC's ladder of projectors: one projector per student block read, their outputs summed."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

from pydantic import Field, model_validator
from torch import Tensor, nn

from mergekit_vision.contracts import (
    HEADS,
    Head,
    Prompts,
    Student,
    StudentFeatures,
    Teacher,
    block_indices,
)
from mergekit_vision.heads.adaptor import AdaptorMLP, resize_to_grid, spatial_target_shape
from mergekit_vision.heads.clip_head import target_width
from mergekit_vision.registry import PluginParams, TeacherName


@HEADS.register("ladder")
class LadderHead(Head):
    """UNIC's ladder of projectors (Sariyildiz et al., "UNIC: Universal Classification Models
    via Multi-teacher Distillation", ECCV 2024, arXiv 2408.05088).

    For one teacher, every student block it reads has its own projector (an MLP as AM-RADIO's
    adaptor), and the prediction is the sum of the projections: ``sum_l P_l(z_l)`` for the
    block outputs ``z_l``. The distillation gradient so reaches each read block directly, which
    UNIC found to raise the share of intermediate features in what the student learns. As in
    UNIC's code, a summary and a spatial ladder are separate, every block is read by default and
    the last block's projectors are wider (``last_hidden_dim``). A summary projector reads its
    block's patch tokens pooled (mean or max): a ViT-Det block has no class token. The ladder is
    expendable: dropped with the other heads once the backbone is trained.
    """

    class Params(PluginParams):
        teacher: TeacherName
        summary_target: str | None = "summary"
        spatial_target: str | None = "spatial"
        layers: list[int] | None = Field(
            None,
            min_length=1,
            description="the student blocks read (negative: from the end); default: every "
            "block, as UNIC",
        )
        hidden_dim: int | None = Field(
            None, gt=0, description="projectors' hidden width; default: the student's width"
        )
        last_hidden_dim: int | None = Field(
            None,
            gt=0,
            description="hidden width of the last block's projectors; default: 4 x the "
            "student's width (UNIC: 3072 for a 768-wide ViT-B)",
        )
        depth: int = Field(2, ge=1, description="Linear layers per projector")
        summary_pool: Literal["mean", "max"] = "mean"
        upsample: bool = True

        @model_validator(mode="after")
        def _at_least_one_side(self) -> LadderHead.Params:
            if self.summary_target is None and self.spatial_target is None:
                raise ValueError("give summary_target, spatial_target or both")
            return self

    def __init__(
        self,
        *,
        embed_dim: int,
        blocks: Sequence[int],
        hidden_dims: Sequence[int],
        depth: int = 2,
        summary_target: str | None = None,
        summary_dim: int | None = None,
        spatial_target: str | None = None,
        spatial_dim: int | None = None,
        output_grid: tuple[int, int] | None = None,
        summary_pool: Literal["mean", "max"] = "mean",
    ):
        """
        Args:
            embed_dim: the student's token width ``C``.
            blocks: the student blocks read (non-negative indices), one projector each.
            hidden_dims: each block's projector hidden width (as many as ``blocks``).
            depth: Linear layers per projector.
            summary_target, summary_dim: the teacher's summary target and its width ``D``.
            spatial_target, spatial_dim: the teacher's feature-map target and its channels.
            output_grid: ``(h, w)`` the feature map is resized to; None keeps the student's grid.
            summary_pool: how a block's patch tokens are pooled for the summary.
        """
        super().__init__()
        if len(hidden_dims) != len(blocks) or not blocks:
            raise ValueError("give one hidden width per block read, and at least one block")
        self.student_blocks = tuple(blocks)
        self.summary_target, self.spatial_target = summary_target, spatial_target
        self.output_grid, self.summary_pool = output_grid, summary_pool

        def ladder(out_dim: int | None) -> nn.ModuleList | None:
            if out_dim is None:
                return None
            return nn.ModuleList(
                AdaptorMLP(in_dim=embed_dim, hidden_dim=hidden, out_dim=out_dim, depth=depth)
                for hidden in hidden_dims
            )

        self.summary_projectors = ladder(summary_dim)
        self.spatial_projectors = ladder(spatial_dim)

    @classmethod
    def build(cls, params: Params, *, student: Student, teachers: dict[str, Teacher]) -> LadderHead:
        summary_dim = spatial_dim = grid = None
        if params.summary_target is not None:
            summary_dim = target_width(teachers, params.teacher, params.summary_target)
        if params.spatial_target is not None:
            spatial_dim, grid = spatial_target_shape(
                teachers, params.teacher, params.spatial_target
            )
            grid = grid if params.upsample else None
        depth = len(student.transformer_blocks())
        layers = range(depth) if params.layers is None else params.layers
        blocks = block_indices(layers, depth=depth, what="ladder layers")
        hidden = params.hidden_dim or student.embed_dim
        last = params.last_hidden_dim or 4 * student.embed_dim
        return cls(
            embed_dim=student.embed_dim,
            blocks=blocks,
            hidden_dims=[last if block == depth - 1 else hidden for block in blocks],
            depth=params.depth,
            summary_target=params.summary_target,
            summary_dim=summary_dim,
            spatial_target=params.spatial_target,
            spatial_dim=spatial_dim,
            output_grid=grid,
            summary_pool=params.summary_pool,
        )

    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: the student's output; ``blocks`` holds ``[B, h, w, C]`` for every block
                in ``student_blocks``.
            prompts: unused.

        Returns:
            ``{summary_target: [B, D], spatial_target: [B, C_t, h_t, w_t]}`` (those configured).
        """
        missing = [i for i in self.student_blocks if i not in features.blocks]
        if missing:
            raise ValueError(
                f"the ladder head reads student blocks {list(self.student_blocks)}, but the "
                f"features lack {missing}; call the student with blocks=head.student_blocks "
                "(the training step and a merged model do)"
            )
        grids = [features.blocks[i] for i in self.student_blocks]
        out: dict[str, Tensor] = {}
        if self.summary_projectors is not None and self.summary_target is not None:
            pooled = [self._pool(grid) for grid in grids]
            out[self.summary_target] = _ladder_sum(self.summary_projectors, pooled)
        if self.spatial_projectors is not None and self.spatial_target is not None:
            maps = _ladder_sum(self.spatial_projectors, grids).permute(0, 3, 1, 2)
            out[self.spatial_target] = resize_to_grid(maps, self.output_grid)
        return out

    def _pool(self, grid: Tensor) -> Tensor:
        tokens = grid.flatten(1, 2)
        return tokens.mean(dim=1) if self.summary_pool == "mean" else tokens.amax(dim=1)


def _ladder_sum(projectors: nn.ModuleList, inputs: list[Tensor]) -> Tensor:
    """``sum_l P_l(x_l)``: each input through its own projector, the outputs added."""
    total = projectors[0](inputs[0])
    for projector, x in zip(projectors[1:], inputs[1:], strict=True):
        total = total + projector(x)
    return total
