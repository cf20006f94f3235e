"""SAM's ViT-Det image encoder as the student backbone, at any input resolution.

The student *is* a ``segment_anything`` :class:`ImageEncoderViT` (windowed attention with a few
global blocks, decomposed relative position bias, absolute position embedding, conv neck), so its
state dict has exactly the layout of SAM's ``image_encoder`` and exports back with a plain
``load_state_dict``. What it adds is variable resolution: the absolute position embedding is
resampled to the actual token grid (bicubic, as timm's ``resample_abs_pos_embed``: the
``antialias=True`` convention of :mod:`mergekit_vision.sam.positions`), and the
global blocks' relative position tables are resampled by segment_anything's own ``get_rel_pos``
at run time (it linearly interpolates whenever ``2 * max(q, k) - 1`` differs from the table
length); windowed blocks pad the grid to a multiple of the window, so any grid works.

Besides SAM's released sizes (``vit_b``, ``vit_l``, ``vit_h``) it offers two small students SAM
never shipped: ``vit_s`` (width 384, 6 heads) and ``vit_ti`` (width 192, 3 heads), both 12 blocks.
The widths and heads are DeiT's ViT-S and ViT-Ti (Touvron et al., "Training data-efficient image
transformers & distillation through attention", ICML 2021, arXiv 2012.12877, which fixed the head
width at 64); the global blocks are ViT-Det's for a 12-block ViT, [2, 5, 8, 11] (Li et al., arXiv
2203.16527), as in SAM's ``vit_b``. EfficientSAM's small SAMs are ViT-S and ViT-Ti encoders that
learn SAM's image features (Xiong et al., "EfficientSAM", CVPR 2024, arXiv 2312.00863:
EfficientSAM-S and -Ti). No SAM weights exist at these widths, so they start from random weights
(or their own checkpoint) and learn by distillation; ``init_from`` a SAM teacher of another width
is refused with a clear error.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import Any, Literal

import torch
from pydantic import Field, PositiveInt, model_validator
from segment_anything.modeling.image_encoder import ImageEncoderViT
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from mergekit_vision.contracts import (
    STUDENTS,
    Student,
    StudentFeatures,
    Teacher,
    block_indices,
    recipe_teacher,
    resize_and_normalize,
)
from mergekit_vision.hub import Sha256, WeightsName, cached
from mergekit_vision.registry import PluginParams, TeacherName
from mergekit_vision.sam.positions import resample_encoder_positions, resample_pos_embed
from mergekit_vision.sam.releases import check_sam_weights, sam_release, sam_weights_file
from mergekit_vision.sam.variants import (
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    SAM_VARIANTS,
    SamEncoderSizes,
    SamVariant,
)
from mergekit_vision.students.vitdet_attention import ViTDetBlock
from mergekit_vision.weights import load_strict, read_weights

_SAM_PREFIX = "image_encoder."

SmallVariant = Literal["vit_s", "vit_ti"]
"""ViT-Det sizes with no SAM release: students trained by distillation (see the module's doc)."""

SMALL_VARIANTS: Mapping[SmallVariant, SamEncoderSizes] = MappingProxyType(
    {
        "vit_s": SamEncoderSizes(384, 12, 6, (2, 5, 8, 11)),  # DeiT-S, EfficientSAM-S
        "vit_ti": SamEncoderSizes(192, 12, 3, (2, 5, 8, 11)),  # DeiT-Ti, EfficientSAM-Ti
    }
)


def vitdet_state_dict_from_sam_encoder(
    state_dict: Mapping[str, Tensor],
    *,
    native_size: int,
    patch_size: int,
    global_attn_indexes: Sequence[int] = (),
) -> dict[str, Tensor]:
    """Convert a SAM image-encoder state dict into a :class:`ViTDetStudent` state dict.

    Accepts the encoder's own state dict or a whole ``Sam`` one (keys ``image_encoder.*`` are
    taken, the rest dropped). When the student's native grid differs from the source's, the
    absolute position embedding is resampled, and so are the relative position tables of the
    given global blocks (windowed blocks' tables depend on the window only).

    Args:
        state_dict: SAM image-encoder (or whole SAM) parameters.
        native_size: the student's native input side in pixels.
        patch_size: the student's patch size; must equal the source's.
        global_attn_indexes: the student's global-attention block indexes.

    Returns:
        A new dict; the input is not modified.
    """
    if any(key.startswith(_SAM_PREFIX) for key in state_dict):
        state_dict = {
            key[len(_SAM_PREFIX) :]: value
            for key, value in state_dict.items()
            if key.startswith(_SAM_PREFIX)
        }
    proj = state_dict.get("patch_embed.proj.weight")
    if proj is None:
        raise ValueError("not a SAM image-encoder state dict: no 'patch_embed.proj.weight'")
    if proj.shape[-1] != patch_size:
        raise ValueError(
            f"source patch size {proj.shape[-1]} != student patch_size {patch_size}; "
            "patch embeddings are not resampled"
        )
    return resample_encoder_positions(
        state_dict,
        grid=native_size // patch_size,
        global_attn_indexes=global_attn_indexes,
        antialias=True,
    )


@STUDENTS.register("vitdet")
class ViTDetStudent(ImageEncoderViT, Student):
    """SAM's ViT-Det image encoder (Li et al. 2022, arXiv 2203.16527), at any input size."""

    pixel_mean = SAM_PIXEL_MEAN
    pixel_std = SAM_PIXEL_STD

    class Params(PluginParams):
        """Sizes default to ``variant``'s (SAM's ``vit_b``/``vit_l``/``vit_h``, or the small
        ``vit_s``/``vit_ti``, which have no SAM weights). The backbone starts from a teacher's
        image encoder (``init_from``, same width and depth only), a local ``checkpoint`` (SAM's,
        or this student's own), or ``pretrained``, an official SAM release by name (``vit_b``: its
        image encoder, SHA-256 checked, see docs/weights.md); at most one of them, else random
        weights. ``sha256`` is the weights file's expected SHA-256 (a release's official one by
        default)."""

        variant: Literal[SamVariant, SmallVariant, "custom"] = "vit_b"
        # sizes are positive: a 0 would only surface as a division by zero while building
        embed_dim: PositiveInt | None = None
        depth: PositiveInt | None = None
        num_heads: PositiveInt | None = None
        global_attn_indexes: tuple[int, ...] | None = None
        patch_size: PositiveInt = 16
        window_size: PositiveInt = 14
        out_chans: PositiveInt = 256
        native_size: PositiveInt = 1024
        init_from: TeacherName | None = None
        checkpoint: Path | None = None
        pretrained: SamVariant | None = None
        sha256: Sha256 | None = None
        attention: Literal["sdpa", "original"] = Field(
            "sdpa",
            description="'sdpa': scaled_dot_product_attention with the relative position bias "
            "as its mask, no projections on window padding; 'original': segment_anything's "
            "Block.forward (same function and weights)",
        )

        @model_validator(mode="after")
        def _check(self) -> ViTDetStudent.Params:
            arch = self.architecture()  # raises for an incomplete custom variant
            if arch["embed_dim"] % arch["num_heads"]:
                raise ValueError("embed_dim must be a multiple of num_heads")
            if any(not 0 <= i < arch["depth"] for i in arch["global_attn_indexes"]):
                raise ValueError(f"global_attn_indexes must lie in [0, {arch['depth']})")
            if self.native_size % self.patch_size:
                raise ValueError("native_size must be a multiple of patch_size")
            if self.variant in SMALL_VARIANTS and self.pretrained is not None:
                raise ValueError(
                    f"variant {self.variant!r} has no SAM release (SAM ships vit_b, vit_l and "
                    "vit_h); drop pretrained to start from random weights and distil, or give "
                    "this student's own checkpoint"
                )
            check_sam_weights(self.variant, checkpoint=self.checkpoint, pretrained=self.pretrained)
            if self.init_from is not None and (self.checkpoint, self.pretrained) != (None, None):
                raise ValueError(
                    "give one of init_from, checkpoint and pretrained, not both (one would "
                    "overwrite the other)"
                )
            return self

        def architecture(self) -> dict[str, Any]:
            """The resolved constructor arguments of :class:`ViTDetStudent`."""
            overrides = (self.embed_dim, self.depth, self.num_heads, self.global_attn_indexes)
            if self.variant == "custom":
                if any(value is None for value in overrides):
                    raise ValueError(
                        "variant 'custom' needs embed_dim, depth, num_heads, global_attn_indexes"
                    )
                preset = overrides
            elif self.variant in SMALL_VARIANTS:
                preset = SMALL_VARIANTS[self.variant]
            else:
                preset = SAM_VARIANTS[self.variant]
            embed_dim, depth, num_heads, global_idx = (
                given if given is not None else default
                for given, default in zip(overrides, preset, strict=True)
            )
            return dict(
                embed_dim=embed_dim,
                depth=depth,
                num_heads=num_heads,
                global_attn_indexes=tuple(global_idx),
                patch_size=self.patch_size,
                window_size=self.window_size,
                out_chans=self.out_chans,
                native_size=self.native_size,
                attention=self.attention,
            )

    def __init__(
        self,
        *,
        embed_dim: int,
        depth: int,
        num_heads: int,
        global_attn_indexes: Sequence[int],
        patch_size: int = 16,
        window_size: int = 14,
        out_chans: int = 256,
        native_size: int = 1024,
        attention: Literal["sdpa", "original"] = "sdpa",
    ) -> None:
        """
        Args:
            embed_dim: token width ``C``.
            depth: number of transformer blocks.
            num_heads: attention heads per block.
            global_attn_indexes: blocks with global attention; the others use windows.
            patch_size: patch side in pixels (the token stride).
            window_size: window side in tokens of the windowed blocks.
            out_chans: channels of the neck's output feature map.
            native_size: input side the position embeddings are defined for.
            attention: how blocks run (see ``Params.attention``); weights are the same.
        """
        super().__init__(
            img_size=native_size,
            patch_size=patch_size,
            embed_dim=embed_dim,
            depth=depth,
            num_heads=num_heads,
            mlp_ratio=4.0,
            out_chans=out_chans,
            qkv_bias=True,
            norm_layer=partial(nn.LayerNorm, eps=1e-6),
            use_abs_pos=True,
            use_rel_pos=True,
            rel_pos_zero_init=True,
            window_size=window_size,
            global_attn_indexes=tuple(global_attn_indexes),
        )
        self.embed_dim = embed_dim
        self.out_channels = out_chans
        self.patch_size = patch_size
        self.native_size = native_size
        self.global_attn_indexes = tuple(global_attn_indexes)
        for block in self.blocks:
            ViTDetBlock.adopt(block, attention)
        # Recompute each block's activations in backward (set by the recipe's performance spec).
        self.activation_checkpointing = False

    @classmethod
    def build(cls, params: Params, *, teachers: dict[str, Teacher]) -> ViTDetStudent:
        weights = sam_weights_file(  # first: a refused file stops the build before any model
            checkpoint=params.checkpoint, pretrained=params.pretrained, sha256=params.sha256
        )
        student = cls(**params.architecture())
        if params.init_from is not None:
            teacher = recipe_teacher(teachers, params.init_from, field="vitdet init_from")
            encoder = teacher.component("image_encoder")
            student.load_sam_encoder(encoder.state_dict(), source=f"teacher {params.init_from!r}")
        if weights is not None:
            state = read_weights(weights, what="student checkpoint")
            student.load_sam_encoder(state, source=str(weights))
        return student

    @classmethod
    def checkpoint_fields(cls, params: Params) -> dict[str, Path | None]:
        """Recipe fields that name files this student reads (a release: its cached file)."""
        if params.pretrained is not None:
            return {"pretrained": cached(cls.weight_names(params)["pretrained"])}
        return {"checkpoint": params.checkpoint}

    @classmethod
    def weight_names(cls, params: Params) -> dict[str, WeightsName]:
        if params.pretrained is None:
            return {}
        return {"pretrained": sam_release(params.pretrained, sha256=params.sha256)}

    def load_sam_encoder(self, state_dict: Mapping[str, Tensor], *, source: str) -> None:
        """Load SAM image-encoder (or whole SAM, or own) weights, resampled to this student."""
        converted = vitdet_state_dict_from_sam_encoder(
            state_dict,
            native_size=self.native_size,
            patch_size=self.patch_size,
            global_attn_indexes=self.global_attn_indexes,
        )
        self._check_source_sizes(converted, source=source)
        load_strict(
            self,
            converted,
            what=f"cannot initialise the vitdet student from {source} (do variant and overrides "
            "match its architecture?)",
        )

    def _check_source_sizes(self, state_dict: Mapping[str, Tensor], *, source: str) -> None:
        """Refuse weights of another width or depth up front: no conversion maps a 768-wide SAM
        encoder onto a 384-wide ``vit_s``, and a list of mis-shaped keys would not say so."""
        width = int(state_dict["patch_embed.proj.weight"].shape[0])
        depth = len({key.split(".")[1] for key in state_dict if key.startswith("blocks.")})
        if (width, depth) == (self.embed_dim, len(self.blocks)):
            return
        raise ValueError(
            f"cannot initialise the vitdet student from {source}: its image encoder is {width} "
            f"wide with {depth} blocks, the student {self.embed_dim} wide with "
            f"{len(self.blocks)} blocks (do variant and overrides match its architecture?). "
            "SAM's weights fit only a student of their own width and depth; a smaller student "
            "(vit_s, vit_ti) starts from random weights: drop init_from and train it by "
            "distillation (recipes/sam_clip_tiny_small.yaml does)"
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
            tokens ``[B, H/p, W/p, C]``, feature_map ``[B, out_channels, H/p, W/p]``,
            ``depth`` intermediates ``[B, H/p, W/p, C]`` when requested, and the asked blocks'
            outputs ``[B, H/p, W/p, C]`` by index.
        """
        height, width = self.image_sides(images)
        images = resize_and_normalize(images, size=None, mean=self.pixel_mean, std=self.pixel_std)
        x = self.patch_embed(images)
        x = x + resample_pos_embed(self.pos_embed, x.shape[1:3], antialias=True)
        kept = block_indices(
            self.returned_blocks if blocks is None else blocks,
            depth=len(self.blocks),
            what="vitdet blocks",
        )
        intermediates: list[Tensor] = []
        outputs: dict[int, Tensor] = {}
        for index, block in enumerate(self.blocks):
            x = self._run_block(block, x)
            if return_intermediates:
                intermediates.append(x)
            if index in kept:
                outputs[index] = x
        feature_map = self.neck(x.permute(0, 3, 1, 2))
        return StudentFeatures(
            tokens=x,
            feature_map=feature_map,
            image_size=int(height),
            intermediates=intermediates,
            blocks=outputs,
        )

    @property
    def attention(self) -> str:
        """How the blocks run (``Params.attention``); settable, e.g. to compare both."""
        return self.blocks[0].attention if len(self.blocks) else "original"

    @attention.setter
    def attention(self, value: str) -> None:
        for block in self.blocks:
            block.attention = value

    def _run_block(self, block: nn.Module, x: Tensor) -> Tensor:
        if self.activation_checkpointing and torch.is_grad_enabled():
            return checkpoint(block, x, use_reentrant=False)
        return block(x)

    def last_block(self) -> nn.Module:
        return self.blocks[-1]
