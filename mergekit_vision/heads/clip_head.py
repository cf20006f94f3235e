"""SAM-CLIP's CLIP head: a few transformer blocks, token pooling, LayerNorm and an MLP."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Literal

import torch
from pydantic import Field
from torch import Tensor, nn

from mergekit_vision.contracts import (
    HEADS,
    Head,
    Prompts,
    Student,
    StudentFeatures,
    TargetSpec,
    Teacher,
    recipe_teacher,
)
from mergekit_vision.registry import PluginParams, TeacherName


def target_spec(teachers: dict[str, Teacher], teacher: str, target: str) -> TargetSpec:
    """``teachers[teacher]``'s declared ``target``, or an error naming the valid choices."""
    specs = recipe_teacher(teachers, teacher, field="head teacher").target_specs()
    if target not in specs:
        raise ValueError(
            f"teacher {teacher!r} has no target {target!r}; its targets: {', '.join(sorted(specs))}"
        )
    return specs[target]


def target_width(teachers: dict[str, Teacher], teacher: str, target: str) -> int:
    """The last dimension of ``teachers[teacher]``'s ``target`` (the width a head must output)."""
    shape = target_spec(teachers, teacher, target).shape
    width = shape[-1] if shape else None
    if not isinstance(width, int):
        raise ValueError(
            f"target {target!r} of teacher {teacher!r} has shape {shape}; "
            "its last dimension must be a fixed int"
        )
    return width


def reinitialise(module: nn.Module) -> nn.Module:
    """Fresh weights for every sub-module of ``module`` (in place).

    Modules with ``reset_parameters`` (Linear, LayerNorm, ...) reset themselves; parameters owned
    directly by other modules are zeroed, which is how SAM initialises its relative position
    tables (``rel_pos_zero_init``).
    """
    for sub in module.modules():
        if hasattr(sub, "reset_parameters"):
            sub.reset_parameters()
        else:
            for parameter in sub.parameters(recurse=False):
                nn.init.zeros_(parameter)
    return module


class ConvBlock(nn.Module):
    """A residual block of two 3 x 3 convolutions over the token grid: ``[B, h, w, C]`` in and out.

    LayerNorm, conv, GELU, conv, added to the input (He et al., "Deep Residual Learning",
    arXiv 1512.03385, with a pre-norm as in ConvNeXt, arXiv 2201.03545).
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.conv1 = nn.Conv2d(dim, dim, 3, padding=1)
        self.act = nn.GELU()
        self.conv2 = nn.Conv2d(dim, dim, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        y = self.norm(x).permute(0, 3, 1, 2)
        y = self.conv2(self.act(self.conv1(y)))
        return x + y.permute(0, 2, 3, 1)


BlockKind = Literal["backbone", "conv"]
"""What a CLIP head's blocks are: copies of the backbone's last block, or :class:`ConvBlock` s."""


def make_blocks(kind: BlockKind, count: int, student: Student) -> list[nn.Module]:
    """``count`` head blocks: copies of the student's last block (``backbone``) or
    :class:`ConvBlock` s of its width (``conv``)."""
    if kind == "conv":
        return [ConvBlock(student.embed_dim) for _ in range(count)]
    return [copy.deepcopy(student.last_block()) for _ in range(count)]


@HEADS.register("clip_head")
class ClipHead(Head):
    """SAM-CLIP's CLIP head (Wang et al., "SAM-CLIP: Merging Vision Foundation Models towards
    Semantic and Spatial Understanding", arXiv 2310.15308).

    ``num_blocks`` transformer blocks of the backbone's kind (initialised from its last block,
    which the paper found trains faster than random init), then max-pooling over tokens (better
    than average pooling in the paper), a LayerNorm and an MLP with two hidden layers into the
    CLIP teacher's embedding space. The same LayerNorm + MLP applied per token gives per-patch
    embeddings (:meth:`dense_embeddings`) for zero-shot segmentation. Outputs are not
    L2-normalized; the cosine loss and zero-shot classifiers normalize.

    ``blocks: conv`` swaps the transformer blocks for residual 3 x 3 convolution blocks
    (:class:`ConvBlock`) over the token grid, a departure from the paper: a convolution's
    locality lets a small head read an object's *shape* from the grid of a backbone that
    was trained for masks, which a few transformer blocks did not learn within the toy
    world's budget (docs/toy-world.md).
    """

    class Params(PluginParams):
        teacher: TeacherName
        target: str = "image_embedding"
        num_blocks: int = Field(3, ge=0)
        blocks: BlockKind = "backbone"
        init_from_last_block: bool = True
        mlp_hidden_dim: int | None = Field(None, gt=0)
        pooling: Literal["max", "mean"] = "max"

    def __init__(
        self,
        *,
        blocks: Sequence[nn.Module],
        embed_dim: int,
        out_dim: int,
        target: str = "image_embedding",
        mlp_hidden_dim: int | None = None,
        pooling: Literal["max", "mean"] = "max",
    ) -> None:
        """
        Args:
            blocks: transformer blocks mapping ``[B, h, w, C]`` to ``[B, h, w, C]``.
            embed_dim: the backbone's token width ``C``.
            out_dim: the teacher's embedding width ``D``.
            target: the teacher target this head reproduces (its output key).
            mlp_hidden_dim: width of the MLP's two hidden layers (default ``C``).
            pooling: how tokens are pooled into one image embedding.
        """
        super().__init__()
        hidden = mlp_hidden_dim or embed_dim
        self.blocks = nn.ModuleList(blocks)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.mlp = nn.Sequential(
            nn.Linear(embed_dim, hidden),
            nn.GELU(),
            nn.Linear(hidden, hidden),
            nn.GELU(),
            nn.Linear(hidden, out_dim),
        )
        self.target = target
        self.pooling = pooling
        self.out_dim = out_dim

    @classmethod
    def build(cls, params: Params, *, student: Student, teachers: dict[str, Teacher]) -> ClipHead:
        out_dim = target_width(teachers, params.teacher, params.target)
        blocks = make_blocks(params.blocks, params.num_blocks, student)
        if params.blocks == "backbone" and not params.init_from_last_block:
            blocks = [reinitialise(block) for block in blocks]
        for block in blocks:
            # The backbone may be frozen (stage I); the head always trains.
            block.requires_grad_(True)
        return cls(
            blocks=blocks,
            embed_dim=student.embed_dim,
            out_dim=out_dim,
            target=params.target,
            mlp_hidden_dim=params.mlp_hidden_dim,
            pooling=params.pooling,
        )

    @property
    def block_kind(self) -> BlockKind:
        """``conv`` when the head's blocks are :class:`ConvBlock` s, else ``backbone``."""
        return "conv" if any(isinstance(block, ConvBlock) for block in self.blocks) else "backbone"

    def forward(
        self, features: StudentFeatures, *, prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            features: the student's output; ``features.tokens`` is ``[B, h, w, C]``.
            prompts: unused.

        Returns:
            ``{target: [B, D]}`` the pooled image embedding.
        """
        return {self.target: self.embed(self.pool(self.encode_tokens(features)))}

    def pool(self, tokens: Tensor, keep: Tensor | None = None) -> Tensor:
        """The head's token pooling: ``[..., h, w, C]`` -> ``[..., C]``, over the tokens where
        ``keep`` (``bool [..., h, w]``) is True, or over all of them. Pooling a region's tokens
        gives that region its own image embedding (``embed(pool(tokens, region))``)."""
        if keep is None:
            keep = tokens.new_ones(tokens.shape[:-1], dtype=torch.bool)
        keep = keep.unsqueeze(-1)
        if self.pooling == "max":
            masked = tokens.masked_fill(~keep, torch.finfo(tokens.dtype).min)
            return masked.flatten(-3, -2).amax(dim=-2)
        total = (tokens * keep).flatten(-3, -2).sum(dim=-2)
        return total / keep.flatten(-3, -2).sum(dim=-2).clamp(min=1)

    def embed(self, pooled: Tensor) -> Tensor:
        """Pooled tokens ``[..., C]`` -> embeddings ``[..., D]`` in the teacher's space."""
        return self.mlp(self.norm(pooled))

    def dense_embeddings(self, features: StudentFeatures) -> Tensor:
        """Per-patch embeddings ``[B, h, w, D]`` in the teacher's space (LN + MLP per token)."""
        return self.embed(self.encode_tokens(features))

    def encode_tokens(self, features: StudentFeatures) -> Tensor:
        """The head's blocks applied to ``features.tokens`` ``[B, h, w, C]`` (shape kept)."""
        x = features.tokens
        for block in self.blocks:
            x = block(x)
        return x
