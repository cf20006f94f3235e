"""The Segment Anything teacher: segment_anything's own ``Sam``, loaded from an official checkpoint.

Kirillov et al., "Segment Anything", ICCV 2023 (arXiv 2304.02643). Its image embeddings and its
prompted mask logits are the SAM-branch targets of SAM-CLIP (Wang et al., arXiv 2310.15308).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Literal

from pydantic import PositiveInt, model_validator
from segment_anything.modeling import (
    ImageEncoderViT,
    MaskDecoder,
    PromptEncoder,
    Sam,
    TwoWayTransformer,
)
from torch import Tensor, nn

from mergekit_vision.contracts import TEACHERS, Prompts, TargetSpec, Teacher
from mergekit_vision.hub import Sha256, WeightsName, cached
from mergekit_vision.registry import PluginParams
from mergekit_vision.sam.decoding import decode_masks
from mergekit_vision.sam.positions import resample_encoder_positions
from mergekit_vision.sam.releases import check_sam_weights, sam_release, sam_weights_file
from mergekit_vision.sam.variants import (
    RELEASED_SIZES,
    SAM_PIXEL_MEAN,
    SAM_PIXEL_STD,
    SAM_VARIANTS,
    SamEncoderSizes,
    SamVariant,
)
from mergekit_vision.weights import load_strict, read_weights

_ENCODER = "image_encoder."
_POS_EMBED = "image_encoder.pos_embed"
_PATCH_WEIGHT = "image_encoder.patch_embed.proj.weight"
# Sizes every variant shares, passed through to build_sam_model as they are.
_OPEN_SIZES = set(RELEASED_SIZES._fields)
_REL_POS = re.compile(r"image_encoder\.blocks\.(\d+)\.attn\.rel_pos_[hw]")


class SamParams(PluginParams):
    """Architecture and weights of a SAM teacher; encoder sizes default to ``variant``'s.

    Weights are a local ``checkpoint`` file or ``pretrained``, an official release by name
    (``vit_b``, ``vit_l``, ``vit_h``: downloaded once into the cache, see docs/weights.md).
    ``sha256`` is the weights file's expected SHA-256, checked before it is read; a release's
    official digest is the default.
    """

    variant: Literal[SamVariant, "custom"] = "vit_b"
    checkpoint: Path | None = None
    pretrained: SamVariant | None = None
    sha256: Sha256 | None = None
    image_size: PositiveInt = RELEASED_SIZES.image_size
    encoder_embed_dim: PositiveInt | None = None
    encoder_depth: PositiveInt | None = None
    encoder_num_heads: PositiveInt | None = None
    encoder_global_attn_indexes: tuple[int, ...] | None = None
    patch_size: PositiveInt = RELEASED_SIZES.patch_size
    window_size: PositiveInt = RELEASED_SIZES.window_size
    prompt_embed_dim: PositiveInt = RELEASED_SIZES.prompt_embed_dim
    decoder_depth: PositiveInt = RELEASED_SIZES.decoder_depth
    decoder_mlp_dim: PositiveInt = RELEASED_SIZES.decoder_mlp_dim
    decoder_num_heads: PositiveInt = RELEASED_SIZES.decoder_num_heads
    mask_in_chans: PositiveInt = RELEASED_SIZES.mask_in_chans
    multimask_output: bool = False

    @model_validator(mode="after")
    def _check_sizes(self) -> SamParams:
        encoder_fields = (
            "encoder_embed_dim",
            "encoder_depth",
            "encoder_num_heads",
            "encoder_global_attn_indexes",
        )
        missing = [name for name in encoder_fields if getattr(self, name) is None]
        check_sam_weights(self.variant, checkpoint=self.checkpoint, pretrained=self.pretrained)
        if self.variant == "custom" and missing:
            raise ValueError(
                f"variant 'custom' needs the image encoder sizes; missing: {', '.join(missing)} "
                f"(or pick one of {', '.join(SAM_VARIANTS)})"
            )
        embed_dim, depth, heads, global_blocks = self.encoder_sizes()
        if self.image_size % self.patch_size:
            raise ValueError(
                f"image_size {self.image_size} is not a multiple of patch_size {self.patch_size}"
            )
        if embed_dim % heads or self.prompt_embed_dim % self.decoder_num_heads:
            raise ValueError("embedding dims must be multiples of their attention head counts")
        if any(not 0 <= i < depth for i in global_blocks):
            raise ValueError(
                f"encoder_global_attn_indexes {list(global_blocks)} must lie in [0, {depth})"
            )
        return self

    def encoder_sizes(self) -> SamEncoderSizes:
        """(embed dim, depth, heads, global blocks), the variant's unless overridden."""
        default = SAM_VARIANTS.get(self.variant, (None, None, None, None))
        given = (
            self.encoder_embed_dim,
            self.encoder_depth,
            self.encoder_num_heads,
            self.encoder_global_attn_indexes,
        )
        embed_dim, depth, heads, global_blocks = (
            d if g is None else g for g, d in zip(given, default, strict=True)
        )
        return SamEncoderSizes(embed_dim, depth, heads, tuple(global_blocks))


def build_sam_model(
    *,
    encoder_embed_dim: int,
    encoder_depth: int,
    encoder_num_heads: int,
    encoder_global_attn_indexes: Sequence[int],
    image_size: int = RELEASED_SIZES.image_size,
    patch_size: int = RELEASED_SIZES.patch_size,
    window_size: int = RELEASED_SIZES.window_size,
    prompt_embed_dim: int = RELEASED_SIZES.prompt_embed_dim,
    decoder_depth: int = RELEASED_SIZES.decoder_depth,
    decoder_mlp_dim: int = RELEASED_SIZES.decoder_mlp_dim,
    decoder_num_heads: int = RELEASED_SIZES.decoder_num_heads,
    mask_in_chans: int = RELEASED_SIZES.mask_in_chans,
) -> Sam:
    """segment_anything's ``Sam``, assembled as its ``build_sam`` does but with every size open."""
    grid = image_size // patch_size
    encoder = ImageEncoderViT(
        depth=encoder_depth,
        embed_dim=encoder_embed_dim,
        img_size=image_size,
        mlp_ratio=4,
        norm_layer=partial(nn.LayerNorm, eps=1e-6),
        num_heads=encoder_num_heads,
        patch_size=patch_size,
        qkv_bias=True,
        use_rel_pos=True,
        global_attn_indexes=tuple(encoder_global_attn_indexes),
        window_size=window_size,
        out_chans=prompt_embed_dim,
    )
    prompt_encoder = PromptEncoder(
        embed_dim=prompt_embed_dim,
        image_embedding_size=(grid, grid),
        input_image_size=(image_size, image_size),
        mask_in_chans=mask_in_chans,
    )
    transformer = TwoWayTransformer(
        depth=decoder_depth,
        embedding_dim=prompt_embed_dim,
        mlp_dim=decoder_mlp_dim,
        num_heads=decoder_num_heads,
    )
    decoder = MaskDecoder(
        num_multimask_outputs=3,
        transformer=transformer,
        transformer_dim=prompt_embed_dim,
        iou_head_depth=3,
        iou_head_hidden_dim=256,
    )
    return Sam(image_encoder=encoder, prompt_encoder=prompt_encoder, mask_decoder=decoder).eval()


def sam_state_dict_from_checkpoint(
    state_dict: Mapping[str, object],
    *,
    image_size: int,
    patch_size: int,
    global_attn_indexes: Sequence[int] | None = None,
) -> dict[str, Tensor]:
    """An official SAM checkpoint's weights, fitted to an encoder built for ``image_size``.

    Accepts the released layout (``image_encoder.*``, ``prompt_encoder.*``, ``mask_decoder.*``),
    also wrapped in ``{"model": ...}`` or ``{"state_dict": ...}`` and with a ``module.`` prefix.
    At another grid than the checkpoint's, the absolute position embedding is resized bicubically
    (detectron2 ViTDet's convention, without antialiasing: see :mod:`mergekit_vision.sam.positions`)
    and the global-attention blocks' relative position tables linearly: that is what
    segment_anything's ``get_rel_pos`` would do at run time, but the encoder allocates those
    tables at ``2 * grid - 1`` rows, so a strict load needs them resized up front. Windowed
    blocks' tables depend on the window only and stay. ``global_attn_indexes=None`` treats every
    block whose tables have the old grid's length as global.
    """
    weights = _unwrap(state_dict)
    if _POS_EMBED not in weights:
        return weights
    old_grid = int(weights[_POS_EMBED].shape[1])
    new_grid = image_size // patch_size
    if old_grid == new_grid:
        return weights
    if global_attn_indexes is None:
        global_attn_indexes = {
            int(match.group(1))
            for key, table in weights.items()
            if (match := _REL_POS.fullmatch(key)) and table.shape[0] == 2 * old_grid - 1
        }
    return resample_encoder_positions(
        weights,
        grid=new_grid,
        global_attn_indexes=global_attn_indexes,
        antialias=False,
        prefix=_ENCODER,
    )


def _unwrap(state_dict: Mapping[str, object]) -> dict[str, Tensor]:
    for wrapper in ("model", "state_dict"):
        if isinstance(state_dict.get(wrapper), Mapping):
            state_dict = state_dict[wrapper]
    if not all(isinstance(v, Tensor) for v in state_dict.values()):
        raise ValueError("not a state dict: some values are not tensors")
    return {k.removeprefix("module."): v for k, v in state_dict.items()}


def describe_sam_checkpoint(weights: Mapping[str, Tensor]) -> str:
    """Which SAM the weights look like, for error messages."""
    if _PATCH_WEIGHT not in weights:
        return "it does not look like a SAM checkpoint (no image_encoder.patch_embed)"
    embed_dim = int(weights[_PATCH_WEIGHT].shape[0])
    blocks = {
        int(m.group(1)) for k in weights if (m := re.match(r"image_encoder\.blocks\.(\d+)\.", k))
    }
    for name, (dim, depth, _, _) in SAM_VARIANTS.items():
        if (dim, depth) == (embed_dim, len(blocks)):
            return f"it looks like a SAM {name} checkpoint"
    return (
        f"it looks like a custom SAM (encoder_embed_dim={embed_dim}, encoder_depth={len(blocks)})"
    )


def load_sam_checkpoint(sam: Sam, path: Path, *, params: SamParams) -> None:
    """Load an official SAM checkpoint file into ``sam`` strictly, with errors that help."""
    raw = read_weights(path, what="SAM checkpoint")
    try:
        weights = sam_state_dict_from_checkpoint(
            raw,
            image_size=params.image_size,
            patch_size=params.patch_size,
            global_attn_indexes=params.encoder_sizes()[3],
        )
    except ValueError as error:
        raise ValueError(f"SAM checkpoint {path} is not a SAM state dict: {error}") from error
    load_strict(
        sam,
        weights,
        what=f"SAM checkpoint {path} does not fit variant {params.variant!r} "
        f"(encoder sizes {params.encoder_sizes()[:3]})",
        describe=describe_sam_checkpoint,
        path=path,
        expected=f"a segment_anything checkpoint of variant {params.variant!r}",
        remedy="set the teacher's variant (and sizes) to the checkpoint's, or point its "
        "checkpoint at a file of this variant",
    )


@TEACHERS.register("sam")
class SamTeacher(Teacher):
    """Segment Anything (ViT-B/L/H): image embeddings and prompted mask logits."""

    Params = SamParams
    pixel_mean = SAM_PIXEL_MEAN
    pixel_std = SAM_PIXEL_STD

    def __init__(self, *, sam: Sam, image_size: int, multimask_output: bool = False):
        """
        Args:
            sam: segment_anything's model, its encoder built for ``image_size``.
            image_size: side every image is resized to before the encoder.
            multimask_output: produce SAM's 3 ambiguity-aware masks per prompt instead of one.
        """
        super().__init__()
        self.sam = sam
        self.input_size = image_size
        self.multimask_output = multimask_output

    @classmethod
    def build(cls, params: SamParams, *, allow_random_init: bool = False) -> SamTeacher:
        # first: a missing or refused file stops the build before any model is allocated
        weights = sam_weights_file(
            checkpoint=params.checkpoint, pretrained=params.pretrained, sha256=params.sha256
        )
        embed_dim, depth, heads, global_blocks = params.encoder_sizes()
        sam = build_sam_model(
            encoder_embed_dim=embed_dim,
            encoder_depth=depth,
            encoder_num_heads=heads,
            encoder_global_attn_indexes=global_blocks,
            **params.model_dump(include=_OPEN_SIZES),
        )
        if weights is not None:
            load_sam_checkpoint(sam, weights, params=params)
        elif allow_random_init:
            warnings.warn(f"SAM teacher {params.variant} has random weights", stacklevel=2)
        else:
            raise ValueError(
                f"SAM teacher {params.variant!r} needs a checkpoint file or pretrained (a release "
                "such as vit_b); random weights are only for tests and dry runs (allow_random_init)"
            )
        teacher = cls(
            sam=sam, image_size=params.image_size, multimask_output=params.multimask_output
        )
        return teacher.freeze()

    @classmethod
    def checkpoint_fields(cls, params: SamParams) -> dict[str, Path | None]:
        if params.pretrained is not None:
            return {"pretrained": cached(cls.weight_names(params)["pretrained"])}
        return {"checkpoint": params.checkpoint}

    @classmethod
    def weight_names(cls, params: SamParams) -> dict[str, WeightsName]:
        if params.pretrained is None:
            return {}
        return {"pretrained": sam_release(params.pretrained, sha256=params.sha256)}

    def target_specs(self) -> dict[str, TargetSpec]:
        return {
            "image_embeddings": TargetSpec(
                ("B", self.sam.prompt_encoder.embed_dim, "h", "w"), "image encoder output"
            ),
            "mask_logits": TargetSpec(
                ("B", "N", "K", "4h", "4w"),
                "mask decoder logits per prompt (K = 3 with multimask_output, else 1)",
                needs_prompts=True,
            ),
        }

    def component_names(self) -> list[str]:
        return ["image_encoder", "prompt_encoder", "mask_decoder"]

    def component(self, name: str) -> nn.Module:
        if name not in self.component_names():
            return super().component(name)
        return getattr(self.sam, name)

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1].
            targets: names from :meth:`target_specs`.
            prompts: needed for ``mask_logits``; pixels of ``images`` as given.

        Returns:
            ``image_embeddings`` ``[B, C, h, w]`` and/or ``mask_logits`` ``[B, N, K, 4h, 4w]``.
        """
        unknown = sorted(set(targets) - set(self.target_specs()))
        if unknown:
            raise ValueError(
                f"SAM teacher has no target {unknown}; it has {list(self.target_specs())}"
            )
        if "mask_logits" in targets and prompts is None:
            raise ValueError("SAM teacher target 'mask_logits' needs prompts (points or boxes)")
        embeddings = self.sam.image_encoder(self.prepare(images))
        outputs = {"image_embeddings": embeddings} if "image_embeddings" in targets else {}
        if "mask_logits" in targets:
            outputs["mask_logits"], _ = decode_masks(
                prompt_encoder=self.sam.prompt_encoder,
                mask_decoder=self.sam.mask_decoder,
                image_embeddings=embeddings,
                prompts=self._in_encoder_frame(prompts),
                multimask_output=self.multimask_output,
            )
        return outputs

    def _in_encoder_frame(self, prompts: Prompts) -> Prompts:
        """Scale prompt pixels to the resized image, as SAM's ``ResizeLongestSide`` does."""
        if prompts.image_size == self.input_size:
            return prompts
        scale = self.input_size / prompts.image_size
        return Prompts(
            image_size=self.input_size,
            points=None if prompts.points is None else prompts.points * scale,
            point_labels=prompts.point_labels,
            boxes=None if prompts.boxes is None else prompts.boxes * scale,
        )
