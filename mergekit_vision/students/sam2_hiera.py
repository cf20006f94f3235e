"""SAM 2's Hiera image encoder and its feature pyramid as the student backbone, multi-scale.

SAM 2 (Ravi et al., "SAM 2: Segment Anything in Images and Videos", arXiv 2408.00714) encodes
images with Hiera (Ryali et al., "Hiera: A Hierarchical Vision Transformer without the
Bells-and-Whistles", ICML 2023, arXiv 2306.00989): four stages at strides 4, 8, 16 and 32, then
an FPN neck (Lin et al., arXiv 1612.03144) whose stride-16 level is the image embedding and whose
stride-4 and stride-8 levels feed the mask decoder's upsampling. The student *is* transformers'
``Sam2VisionModel`` (held as ``encoder``), so a trained student loads back into
``Sam2Model.vision_encoder`` with a plain ``load_state_dict``.

Every forward returns the neck's levels in ``StudentFeatures.levels`` (``stride4``, ``stride8``,
``stride16`` for SAM 2's configurations); ``feature_map`` is the coarsest of them (SAM 2's image
embedding before the no-memory embedding that ``Sam2Model`` and the ``sam2_head`` add), and
``tokens`` the last stage's output. Any input side that is a multiple of ``patch_size`` runs: the
position embedding is interpolated to the token grid and windowed blocks pad, as in Hiera's own
forward, whose steps :meth:`Sam2HieraStudent.forward` takes one by one to keep per-block outputs.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from pydantic import model_validator
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint
from transformers import Sam2VisionConfig, Sam2VisionModel

from mergekit_vision.contracts import (
    STUDENTS,
    Student,
    StudentFeatures,
    Teacher,
    block_indices,
    recipe_teacher,
    resize_and_normalize,
)
from mergekit_vision.registry import PluginParams, TeacherName
from mergekit_vision.teachers.sam2 import SAM2_PIXEL_MEAN, SAM2_PIXEL_STD
from mergekit_vision.weights import load_strict


def level_strides(config: Sam2VisionConfig) -> list[int]:
    """Input pixels per cell of each FPN level the encoder returns, finest first."""
    backbone = config.backbone_config
    first, pool = int(backbone.patch_stride[0]), int(backbone.query_stride[0])
    pooled = int(backbone.num_query_pool_stages)
    return [first * pool ** min(stage, pooled) for stage in range(config.num_feature_levels)]


def input_multiple(config: Sam2VisionConfig) -> int:
    """The side every input must be a multiple of: the last stage's stride (the FPN adds each
    level to the next coarser one upsampled 2x) and the first stage's window in pixels (Hiera
    tiles its window position embedding over the grid)."""
    backbone = config.backbone_config
    first, pool = int(backbone.patch_stride[0]), int(backbone.query_stride[0])
    deepest = first * pool ** int(backbone.num_query_pool_stages)
    return math.lcm(deepest, first * int(backbone.window_size_per_stage[0]))


@STUDENTS.register("sam2_hiera")
class Sam2HieraStudent(Student):
    """SAM 2's Hiera + FPN (transformers' Sam2VisionModel): multi-scale levels, any input size."""

    class Params(PluginParams):
        """``init_from`` names a ``sam2`` teacher whose vision encoder (architecture, weights
        and pixel statistics) starts the student; without it ``config`` (``Sam2VisionConfig``
        keyword arguments; none: transformers' default SAM 2.1 Hiera-T) builds a random one."""

        init_from: TeacherName | None = None
        config: dict[str, Any] | None = None

        @model_validator(mode="after")
        def _check(self) -> Sam2HieraStudent.Params:
            if self.init_from is not None and self.config is not None:
                raise ValueError(
                    "give init_from (the teacher's architecture and weights) or config (a random "
                    "student), not both"
                )
            return self

    def __init__(
        self,
        *,
        encoder: Sam2VisionModel,
        native_size: int,
        mean: Sequence[float] = SAM2_PIXEL_MEAN,
        std: Sequence[float] = SAM2_PIXEL_STD,
    ) -> None:
        """
        Args:
            encoder: transformers' SAM 2 vision encoder (Hiera backbone + FPN neck); trained here.
            native_size: the input side the encoder was trained at (SAM 2: 1024).
            mean, std: input normalization in [0, 1] units.
        """
        super().__init__()
        self.encoder = encoder.requires_grad_(True)
        config = encoder.config
        strides = level_strides(config)
        self.level_names = tuple(f"stride{stride}" for stride in strides)
        self._feature_stride = strides[-1]
        self.native_size = int(native_size)
        self.patch_size = input_multiple(config)
        self.embed_dim = int(config.backbone_config.embed_dim_per_stage[-1])
        self.out_channels = int(config.fpn_hidden_size)
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self._stage_ends = set(encoder.backbone.stage_ends)
        # Recompute each block's activations in backward (set by the recipe's performance spec).
        self.activation_checkpointing = False

    @property
    def feature_stride(self) -> int:
        """Input pixels per cell of ``feature_map``: the coarsest level's stride (16)."""
        return self._feature_stride

    @classmethod
    def build(cls, params: Params, *, teachers: dict[str, Teacher]) -> Sam2HieraStudent:
        if params.init_from is None:
            config = Sam2VisionConfig(**_with_backbone_type(params.config or {}))
            native = int(config.backbone_config.image_size[0])
            return cls(encoder=Sam2VisionModel(config), native_size=native)
        teacher = recipe_teacher(teachers, params.init_from, field="sam2_hiera init_from")
        source = _vision_encoder(teacher, name=params.init_from)
        student = cls(
            encoder=Sam2VisionModel(copy.deepcopy(source.config)),
            native_size=int(teacher.input_size or source.config.backbone_config.image_size[0]),
            mean=teacher.pixel_mean,
            std=teacher.pixel_std,
        )
        student.load_encoder(source.state_dict(), source_name=f"teacher {params.init_from!r}")
        return student

    def load_encoder(self, state_dict: Mapping[str, Tensor], *, source_name: str) -> None:
        """Load a ``Sam2VisionModel`` state dict (every key, every shape) into the encoder."""
        load_strict(
            self.encoder,
            dict(state_dict),
            what=f"cannot initialise the sam2_hiera student from {source_name}",
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
            tokens ``[B, H/32, W/32, C]`` (the last stage), levels ``[B, C_out, H/s, W/s]`` by
            ``"stride<s>"``, feature_map the coarsest level ``[B, C_out, H/16, W/16]``, and the
            blocks' outputs ``[B, H/s_b, W/s_b, C_b]`` (at their stage's stride and width).
        """
        height, width = self.image_sides(
            images,
            why=", which the sam2_hiera student needs (its last stage's stride and first window)",
        )
        pixels = resize_and_normalize(images, size=None, mean=self.pixel_mean, std=self.pixel_std)
        backbone = self.encoder.backbone
        x = backbone.patch_embed(pixels)
        x = x + backbone._get_pos_embed(x.shape[1:3])
        kept = block_indices(
            self.returned_blocks if blocks is None else blocks,
            depth=len(backbone.blocks),
            what="sam2_hiera blocks",
        )
        stages: list[Tensor] = []
        intermediates: list[Tensor] = []
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(backbone.blocks):
            x = self._run_block(block, x)
            if index in self._stage_ends:
                stages.append(x)
            if return_intermediates:
                intermediates.append(x)
            if index in kept:
                outputs[index] = x
        pyramid, _ = self.encoder.neck(tuple(stages))  # coarsest first
        levels = pyramid[-len(self.level_names) :][::-1]
        return StudentFeatures(
            tokens=x,
            feature_map=levels[-1],
            image_size=int(height),
            intermediates=intermediates,
            blocks=outputs,
            levels=dict(zip(self.level_names, levels, strict=True)),
        )

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def last_block(self) -> nn.Module:
        block = self.encoder.backbone.blocks[-1]
        if block.dim != block.dim_out:
            raise ValueError(
                "the sam2_hiera student's last stage has a single block, which widens its input "
                f"({block.dim} -> {block.dim_out}), so no block maps its tokens to tokens; give "
                "the last stage two blocks or more (every SAM 2 release has three)"
            )
        return block

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.encoder.backbone.blocks)


def _vision_encoder(teacher: Teacher, *, name: str) -> Sam2VisionModel:
    """``teacher``'s SAM 2 vision encoder, or an error saying which teacher would do."""
    try:
        encoder = teacher.component("vision_encoder")
    except KeyError:
        encoder = None
    if not isinstance(encoder, Sam2VisionModel):
        raise ValueError(
            f"sam2_hiera init_from {name!r}: a {type(teacher).__name__} has no SAM 2 vision "
            "encoder (transformers' Sam2VisionModel); initialise from a 'sam2' teacher, or give "
            "config for a random student"
        )
    return encoder


def _with_backbone_type(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` with its ``backbone_config`` typed as Hiera's (transformers needs the type)."""
    backbone = config.get("backbone_config")
    if isinstance(backbone, dict) and "model_type" not in backbone:
        return {**config, "backbone_config": {"model_type": "sam2_hiera_det_model", **backbone}}
    return config
