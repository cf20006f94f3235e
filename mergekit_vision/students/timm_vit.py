"""Any timm Vision Transformer as the student backbone, at any input size.

The backbone is a timm ViT built with ``dynamic_img_size=True``: its absolute position table is
resampled to each input's token grid, so one model trains and runs at several resolutions (the
AM-RADIO student is such a ViT, Ranzinger et al., CVPR 2024, arXiv 2312.06709; the ViT itself is
Dosovitskiy et al., ICLR 2021, arXiv 2010.11929). Its state dict is timm's own layout, so the
trained backbone loads back into ``timm.create_model(name, **model_kwargs)`` with a plain
``load_state_dict``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import timm
import torch
from pydantic import Field, model_validator
from timm.data import resolve_model_data_config
from torch import Tensor, nn

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
_OWNED_KWARGS = ("pretrained", "img_size", "dynamic_img_size", "num_classes", "checkpoint_path")


@dataclass
class TokenStudentFeatures(StudentFeatures):
    """:class:`StudentFeatures` plus the ViT's prefix tokens.

    Args:
        prefix_tokens: ``[B, P, C]`` the class (and register) tokens after the final norm; heads
            may read their summary from them (AM-RADIO's per-teacher class tokens).
    """

    prefix_tokens: Tensor | None = None


class GridBlock(nn.Module):
    """A timm transformer block applied to a token grid ``[B, h, w, C]`` (shape kept).

    timm's blocks take token sequences ``[B, N, C]``; heads that copy the student's last block
    (SAM-CLIP's CLIP head) hand it grids, as for the ViT-Det student.
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        batch, height, width, channels = x.shape
        return self.block(x.reshape(batch, height * width, channels)).reshape(x.shape)


@STUDENTS.register("timm_vit")
class TimmViTStudent(TimmWeightSources, Student):
    """Any timm ViT (e.g. ``vit_base_patch16_224``) as the backbone, with variable input size."""

    class Params(PluginParams):
        """``model_kwargs`` go to ``timm.create_model`` (``depth``, ``embed_dim``, ``num_heads``,
        ``reg_tokens``, ...); ``native_size`` is the side the position table is defined for;
        ``init_from`` names a ``timm`` teacher of the same architecture whose weights start the
        backbone; ``checkpoint`` is a timm checkpoint file; ``pretrained`` names timm weights as
        the timm teacher does (a tag of ``model`` or ``hf-hub:org/name``; at most one of the
        three)."""

        model: str
        model_kwargs: dict[str, Any] = Field(default_factory=dict)
        native_size: int = Field(224, ge=8)
        init_from: TeacherName | None = None
        checkpoint: Path | None = None
        pretrained: str | None = None
        mean: tuple[float, float, float] | None = None
        std: tuple[float, float, float] | None = None

        @model_validator(mode="after")
        def _check(self) -> TimmViTStudent.Params:
            if not timm.is_model(self.model):
                raise ValueError(f"unknown timm model {self.model!r}")
            owned = sorted(set(self.model_kwargs) & set(_OWNED_KWARGS))
            if owned:
                raise ValueError(f"model_kwargs may not set {', '.join(owned)} (set by timm_vit)")
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
        model: nn.Module,
        native_size: int,
        mean: Sequence[float],
        std: Sequence[float],
    ):
        """
        Args:
            model: a timm ViT built with ``dynamic_img_size=True`` and no classifier.
            native_size: the input side its position table was built for.
            mean, std: input normalization in [0, 1] units.
        """
        super().__init__()
        for needed in ("patch_embed", "blocks", "forward_intermediates", "num_prefix_tokens"):
            if not hasattr(model, needed):
                raise ValueError(
                    f"timm model {type(model).__name__} is not a plain ViT (no {needed})"
                )
        self.model = model
        self.native_size = int(native_size)
        self.patch_size = int(model.patch_embed.patch_size[0])
        self.embed_dim = int(model.embed_dim)
        self.out_channels = self.embed_dim
        self.num_prefix_tokens = int(model.num_prefix_tokens)
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]

    @classmethod
    def build(cls, params: Params, *, teachers: dict[str, Teacher]) -> TimmViTStudent:
        model = timm.create_model(
            params.model,
            pretrained=False,
            num_classes=0,
            img_size=params.native_size,
            dynamic_img_size=True,
            **params.model_kwargs,
        )
        weights, data = weights_file(params, resolve_model_data_config(model))
        student = cls(
            model=model,
            native_size=params.native_size,
            mean=params.mean or data["mean"],
            std=params.std or data["std"],
        )
        load_sources(
            params, weights, teachers=teachers, load=student.load_timm_weights, kind="timm_vit"
        )
        return student

    def load_timm_weights(self, checkpoint: Mapping[str, Any], *, source_name: str) -> None:
        """Load timm weights (any grid; classifier weights dropped) into the backbone."""
        weights = timm_state_dict_from_checkpoint(checkpoint, self.model)
        weights = {k: v for k, v in weights.items() if not k.startswith("head.")}
        load_strict(
            self.model,
            weights,
            what=f"cannot initialise the timm_vit student from {source_name} (do model and "
            "model_kwargs match its architecture?)",
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
            tokens ``[B, H/p, W/p, C]`` (after the final norm), feature_map
            ``[B, C, H/p, W/p]`` (the same tokens, NCHW), prefix_tokens ``[B, P, C]``,
            ``depth`` intermediates ``[B, H/p, W/p, C]`` when requested, and the asked blocks'
            outputs ``[B, H/p, W/p, C]`` (before the final norm) by index.
        """
        height, width = self.image_sides(images)
        pixels = resize_and_normalize(images, size=None, mean=self.pixel_mean, std=self.pixel_std)
        kept = block_indices(
            self.returned_blocks if blocks is None else blocks,
            depth=len(self.model.blocks),
            what="timm_vit blocks",
        )
        intermediates: list[Tensor] = []
        outputs: dict[int, Tensor] = {}
        if return_intermediates or kept:
            # timm keeps every block's output, or only those of ``indices`` (in block order)
            final, maps = self.model.forward_intermediates(
                pixels, indices=None if return_intermediates else list(kept), output_fmt="NCHW"
            )
            grids = [m.permute(0, 2, 3, 1) for m in maps]
            if return_intermediates:
                intermediates, outputs = grids, {i: grids[i] for i in kept}
            else:
                outputs = dict(zip(kept, grids, strict=True))
        else:
            final = self.model.forward_features(pixels)
        grid = (height // self.patch_size, width // self.patch_size)
        tokens = final[:, self.num_prefix_tokens :].reshape(final.shape[0], *grid, -1)
        # Each output owns its storage: FSDP2 hooks a sharded module's outputs, and an in-place op
        # on an output that is a view would drop that hook (and the gradient all-gather) silently.
        return TokenStudentFeatures(
            tokens=tokens.clone(),
            feature_map=tokens.permute(0, 3, 1, 2).clone(memory_format=torch.contiguous_format),
            image_size=int(height),
            intermediates=list(intermediates),
            blocks=outputs,
            prefix_tokens=final[:, : self.num_prefix_tokens].clone(),
        )

    def last_block(self) -> nn.Module:
        return GridBlock(self.model.blocks[-1])

    def transformer_blocks(self) -> list[nn.Module]:
        return list(self.model.blocks)
