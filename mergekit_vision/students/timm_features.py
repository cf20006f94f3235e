"""Any timm convolutional or efficient backbone as the student, through timm's feature extractor.

The backbone is ``timm.create_model(model, features_only=True)``: the feature maps of its stages,
each at its own stride. An efficient backbone's last stage is far too coarse for SAM's mask
decoder, which reads a 64 x 64 grid at 1024 px (stride 16; the toy SAM's 16 x 16 at 128 px,
stride 8), so a top-down feature pyramid (Lin et al., "Feature Pyramid Networks for Object
Detection", CVPR 2017, arXiv 1612.03144) fuses every level from ``stride`` down into one grid at
``stride``: a 1 x 1 lateral convolution per level, each coarser level upsampled and added. A few
ConvNeXt blocks (Liu et al., "A ConvNet for the 2020s", CVPR 2022, arXiv 2201.03545; timm's
``ConvNeXtBlock``) then mix the fused grid; they are this student's blocks (what ``blocks=``
indexes and what a CLIP head copies), and their output is the student's ``tokens``. SAM's neck
(1 x 1 conv, LayerNorm2d, 3 x 3 conv, LayerNorm2d, as segment_anything's ``ImageEncoderViT``)
maps the tokens to ``out_chans``: the ``feature_map`` SAM's decoder reads. The backbone's state
dict is timm's own layout, so its weights load from, and back into, timm's feature extractor.

Small SAMs are built the same way: MobileSAM distils SAM's image encoder into a small backbone
whose embedding SAM's own decoder reads (Zhang et al., "Faster Segment Anything", arXiv
2306.14289).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.nn.functional as F
from pydantic import Field, PositiveInt, model_validator
from segment_anything.modeling.common import LayerNorm2d
from timm.data import resolve_model_data_config
from timm.models.convnext import ConvNeXtBlock
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mergekit_vision.contracts import (
    STUDENTS,
    Student,
    StudentFeatures,
    Teacher,
    block_indices,
    resize_and_normalize,
)
from mergekit_vision.registry import PluginParams, TeacherName
from mergekit_vision.students.timm_sources import TimmWeightSources, load_sources, weights_file
from mergekit_vision.teachers.timm import timm_state_dict_from_checkpoint, timm_weights
from mergekit_vision.weights import load_strict

# create_model arguments the student sets itself.
_OWNED_KWARGS = ("pretrained", "features_only", "out_indices", "num_classes", "checkpoint_path")


class GridConvNeXtBlock(nn.Module):
    """timm's ConvNeXt block on a token grid ``[B, h, w, C]`` (shape kept); timm's block takes
    ``[B, C, h, w]``, and heads hand the student's last block grids (as for the ViT students)."""

    def __init__(self, dim: int):
        super().__init__()
        self.block = ConvNeXtBlock(dim)

    def forward(self, x: Tensor) -> Tensor:
        return self.block(x.permute(0, 3, 1, 2)).permute(0, 2, 3, 1)


class FeaturePyramidFusion(nn.Module):
    """Top-down FPN fusion of feature maps, finest first, into one ``[B, C, h, w]`` at the
    finest map's grid (Lin et al., arXiv 1612.03144, without the per-level outputs)."""

    def __init__(self, *, in_channels: Sequence[int], out_channels: int):
        super().__init__()
        self.laterals = nn.ModuleList(nn.Conv2d(c, out_channels, 1) for c in in_channels)

    def forward(self, levels: Sequence[Tensor]) -> Tensor:
        fused = self.laterals[-1](levels[-1])
        for lateral, level in zip(self.laterals[-2::-1], levels[-2::-1], strict=True):
            # sizes, not a factor of 2: an odd grid (40 px at stride 16: 3, not 2.5) rounds up
            fused = lateral(level) + F.interpolate(
                fused, size=level.shape[-2:], mode="bilinear", align_corners=False
            )
        return fused


@STUDENTS.register("timm_features")
class TimmFeaturesStudent(TimmWeightSources, Student):
    """A timm convolutional backbone (e.g. ``mobilenetv4_conv_small``), FPN-fused at a fine
    stride."""

    class Params(PluginParams):
        """``model`` is a timm architecture with a feature extractor (``features_only``);
        ``model_kwargs`` go to ``timm.create_model``. Every level at ``stride`` or coarser is
        fused into a grid of width ``embed_dim`` at ``stride`` (the student's patch size), mixed
        by ``num_blocks`` ConvNeXt blocks, and SAM's neck maps it to ``out_chans``.
        ``native_size`` is the side the student is meant to run at (a convolutional backbone has
        no position table; export reads it). The backbone starts from random weights, a timm
        ``checkpoint`` file, ``pretrained`` timm weights (a tag of ``model`` or
        ``hf-hub:org/name``) or ``init_from`` a ``timm`` teacher of the same ``model``; at most
        one of the three."""

        model: str
        model_kwargs: dict[str, Any] = Field(default_factory=dict)
        stride: PositiveInt = 16
        embed_dim: PositiveInt = 256
        num_blocks: int = Field(1, ge=1)
        out_chans: PositiveInt = 256
        native_size: PositiveInt = 1024
        init_from: TeacherName | None = None
        checkpoint: Path | None = None
        pretrained: str | None = None
        mean: tuple[float, float, float] | None = None
        std: tuple[float, float, float] | None = None

        @model_validator(mode="after")
        def _check(self) -> TimmFeaturesStudent.Params:
            if not timm.is_model(self.model):
                raise ValueError(f"unknown timm model {self.model!r}")
            owned = sorted(set(self.model_kwargs) & set(_OWNED_KWARGS))
            if owned:
                raise ValueError(
                    f"model_kwargs may not set {', '.join(owned)} (set by timm_features)"
                )
            if self.native_size % self.stride:
                raise ValueError("native_size must be a multiple of stride")
            given = [self.init_from, self.checkpoint, self.pretrained]
            if sum(value is not None for value in given) > 1:
                raise ValueError(
                    "give one of init_from, checkpoint and pretrained, not both (one would "
                    "overwrite the other)"
                )
            if self.pretrained is not None:
                timm_weights(self.model, self.pretrained)  # an unknown tag fails here
            return self

    def __init__(
        self,
        *,
        backbone: nn.Module,
        stride: int,
        embed_dim: int,
        num_blocks: int,
        out_chans: int,
        native_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        """
        Args:
            backbone: a timm feature extractor (``features_only=True``) returning its levels
                finest first, with ``feature_info``.
            stride: the finest level fused, in pixels; the student's ``patch_size``.
            embed_dim: width ``C`` of the fused grid (the tokens).
            num_blocks: ConvNeXt blocks over the fused grid.
            out_chans: channels of the neck's output feature map.
            native_size: the side the student is meant to run at.
            mean, std: input normalization in [0, 1] units.
        """
        super().__init__()
        reductions = [int(r) for r in backbone.feature_info.reduction()]
        if stride not in reductions:
            raise ValueError(
                f"timm_features stride {stride}: {type(backbone).__name__}'s feature levels are "
                f"at strides {reductions}; set stride to one of them"
            )
        self.first_level = reductions.index(stride)
        self.backbone = backbone
        channels = backbone.feature_info.channels()[self.first_level :]
        self.fusion = FeaturePyramidFusion(in_channels=channels, out_channels=embed_dim)
        self.blocks = nn.ModuleList(GridConvNeXtBlock(embed_dim) for _ in range(num_blocks))
        self.neck = nn.Sequential(
            nn.Conv2d(embed_dim, out_chans, 1, bias=False),
            LayerNorm2d(out_chans),
            nn.Conv2d(out_chans, out_chans, 3, padding=1, bias=False),
            LayerNorm2d(out_chans),
        )
        self.embed_dim = embed_dim
        self.out_channels = out_chans
        self.patch_size = stride
        self.native_size = native_size
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]
        # Recompute each block's activations in backward (set by the recipe's performance spec).
        self.activation_checkpointing = False

    @classmethod
    def build(cls, params: Params, *, teachers: dict[str, Teacher]) -> TimmFeaturesStudent:
        backbone = timm.create_model(
            params.model, pretrained=False, features_only=True, **params.model_kwargs
        )
        weights, data = weights_file(params, resolve_model_data_config(backbone))
        student = cls(
            backbone=backbone,
            stride=params.stride,
            embed_dim=params.embed_dim,
            num_blocks=params.num_blocks,
            out_chans=params.out_chans,
            native_size=params.native_size,
            mean=params.mean or data["mean"],
            std=params.std or data["std"],
        )
        load_sources(
            params,
            weights,
            teachers=teachers,
            load=student.load_backbone_weights,
            kind="timm_features",
        )
        return student

    def load_backbone_weights(self, checkpoint: Mapping[str, Any], *, source_name: str) -> None:
        """Load timm weights of the same architecture (the classifier model's or the feature
        extractor's; weights the extractor lacks, such as the classifier, are dropped)."""
        weights = timm_state_dict_from_checkpoint(checkpoint, self.backbone)
        own = self.backbone.state_dict()
        load_strict(
            self.backbone,
            {k: v for k, v in weights.items() if k in own},
            what=f"cannot initialise the timm_features student from {source_name} (do model "
            "and model_kwargs match its architecture?)",
        )

    def forward(
        self,
        images: Tensor,
        *,
        return_intermediates: bool = False,
        blocks: Sequence[int] | None = None,
    ) -> StudentFeatures:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], ``H`` and ``W`` multiples of ``patch_size``.
            return_intermediates: also return every block's output.
            blocks: the blocks whose outputs ``blocks`` returns (None: ``returned_blocks``).

        Returns:
            tokens ``[B, H/p, W/p, C]`` (the last block's output), feature_map
            ``[B, out_channels, H/p, W/p]``, ``num_blocks`` intermediates ``[B, H/p, W/p, C]``
            when requested, and the asked blocks' outputs ``[B, H/p, W/p, C]`` by index.
        """
        height, width = self.image_sides(images)
        pixels = resize_and_normalize(images, size=None, mean=self.pixel_mean, std=self.pixel_std)
        levels = self.backbone(pixels)[self.first_level :]
        x = self.fusion(levels).permute(0, 2, 3, 1)
        kept = block_indices(
            self.returned_blocks if blocks is None else blocks,
            depth=len(self.blocks),
            what="timm_features blocks",
        )
        intermediates: list[Tensor] = []
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks):
            x = self._run_block(block, x)
            if return_intermediates:
                intermediates.append(x)
            if index in kept:
                outputs[index] = x
        return StudentFeatures(
            tokens=x,
            feature_map=self.neck(x.permute(0, 3, 1, 2)),
            image_size=int(height),
            intermediates=intermediates,
            blocks=outputs,
        )

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def last_block(self) -> nn.Module:
        return self.blocks[-1]
