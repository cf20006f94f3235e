"""The transformers teacher: an ``AutoModel`` vision model from a local ``save_pretrained`` folder.

Targets follow AM-RADIO (Ranzinger et al., CVPR 2024, arXiv 2312.06709): the ``summary`` vector
(the vision tower's pooled output: DINOv2's class token, SigLIP's attention-pooled embedding) and
the ``spatial`` patch features. A model with a text tower (SigLIP, Zhai et al., "Sigmoid Loss for
Language Image Pre-Training", ICCV 2023, arXiv 2303.15343; CLIP) also gives ``image_embedding``,
its L2-normalized embedding in the shared image-text space, and :meth:`HfTeacher.encode_text`, so
the evaluation suite uses it as a zero-shot classifier like the open_clip teacher (and, through
SigLIP's pooling head, :meth:`HfTeacher.dense_embeddings` for zero-shot segmentation). DINOv2 (Oquab
et al., arXiv 2304.07193) is the reference vision-only model.

SigLIP 2 (Tschannen et al., arXiv 2502.14786) comes in two forms: its fixed-resolution
checkpoints are SigLIP models (``model_type: siglip``); its NaFlex ones are ``Siglip2Model``,
whose vision tower reads patchified pixels with their grid and is configured by a patch count
instead of an image size; both are served, text tower included. DINOv3 (Simeoni et al., arXiv
2508.10104; ``DINOv3ViTModel``) is served like DINOv2: its class token is the ``summary``, and its
register tokens are dropped from the ``spatial`` map with the class token.

The model is a local ``save_pretrained`` folder, or a Hub repository (``pretrained``, with a
``revision``) whose snapshot huggingface_hub keeps in its cache (docs/weights.md); either folder is
read with ``local_files_only=True``.
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import Tensor, nn
from transformers import AutoConfig, AutoModel, AutoTokenizer
from transformers.models.siglip.modeling_siglip import SiglipMultiheadAttentionPoolingHead
from transformers.models.siglip2.modeling_siglip2 import Siglip2MultiheadAttentionPoolingHead

from mergekit_vision.contracts import TEACHERS, Prompts, TargetSpec, Teacher
from mergekit_vision.hub import (
    WeightsName,
    check_repo_id,
    resolve,
    snapshot_config_fields,
    snapshot_names,
)
from mergekit_vision.registry import PluginParams

PROCESSOR_FILE = "preprocessor_config.json"


class HfParams(PluginParams):
    """Where the model is, and how images and texts reach it.

    ``path`` is a ``save_pretrained`` folder (``config.json``, weights, optionally
    ``preprocessor_config.json`` and tokenizer files); ``pretrained`` a Hub repository id
    ("facebook/dinov2-large") holding one, at ``revision`` (a branch, tag or commit; default
    main). ``config`` (a transformers config dict with ``model_type``) builds random weights for
    dry runs and tests only. ``mean``/``std`` and
    ``image_size`` override the folder's image processor and config. ``text_padding`` and
    ``text_length`` say how class prompts are tokenised (SigLIP was trained on texts padded to
    64 tokens: ``max_length``).
    """

    path: Path | None = None
    pretrained: str | None = None
    revision: str | None = None
    config: dict[str, Any] | None = None
    image_size: int | None = Field(None, ge=8)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    text_padding: Literal["max_length", "longest"] = "max_length"
    text_length: int | None = Field(None, ge=1, description="default: the text tower's maximum")

    @model_validator(mode="after")
    def _check(self) -> HfParams:
        if self.config is not None and "model_type" not in self.config:
            raise ValueError("config needs a 'model_type' (e.g. 'dinov2', 'siglip')")
        # a revision alone is let through: dry runs and loaded runs drop an uncached 'pretrained'
        if self.pretrained is not None:
            if self.path is not None:
                raise ValueError("give path (a local folder) or pretrained (a repo id), not both")
            check_repo_id(self.pretrained)
        return self


# The attention-pooling heads whose value path gives MaskCLIP's per-patch embeddings.
ATTENTION_POOLING_HEADS = (
    SiglipMultiheadAttentionPoolingHead,
    Siglip2MultiheadAttentionPoolingHead,
)


def _vision_config(config: Any) -> Any:
    return getattr(config, "vision_config", None) or config


def _native_size(vision_config: Any) -> int:
    """The side the tower was trained at: its ``image_size``, or for a tower configured by its
    patch count (SigLIP 2's NaFlex ``num_patches``) the square of that many patches."""
    size = getattr(vision_config, "image_size", None)
    if size is None:
        return int(vision_config.patch_size) * math.isqrt(int(vision_config.num_patches))
    return int(size[0] if isinstance(size, list | tuple) else size)


def _takes(method: Any, name: str) -> bool:
    return callable(method) and name in inspect.signature(method).parameters


def _patchify(pixels: Tensor, patch: int) -> Tensor:
    """``[B, 3, H, W]`` -> ``[B, h*w, p*p*3]``, rows of patches, each patch ``(p, p, 3)``
    flattened: the layout ``Siglip2ImageProcessor`` hands a NaFlex tower."""
    batch, channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    grid = pixels[:, :, : rows * patch, : cols * patch]
    grid = grid.reshape(batch, channels, rows, patch, cols, patch).permute(0, 2, 4, 3, 5, 1)
    return grid.reshape(batch, rows * cols, patch * patch * channels)


def _pooled(output: Any) -> Tensor:
    """transformers returns features as a tensor or (since v5) inside a ModelOutput."""
    return output if isinstance(output, Tensor) else output.pooler_output


def _interpolation(method: Any, resized: bool) -> dict[str, bool]:
    """``{"interpolate_pos_encoding": True}`` for a resized input when ``method`` takes it."""
    takes = resized and _takes(method, "interpolate_pos_encoding")
    return {"interpolate_pos_encoding": True} if takes else {}


def _processor_stats(path: Path | None) -> dict[str, Any]:
    file = None if path is None else path / PROCESSOR_FILE
    return json.loads(file.read_text()) if file is not None and file.is_file() else {}


@TEACHERS.register("hf")
class HfTeacher(Teacher):
    """A transformers vision model (e.g. DINOv2, SigLIP): summary, spatial features, texts."""

    Params = HfParams

    def __init__(
        self,
        *,
        model: nn.Module,
        input_size: int,
        patch_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        tokenizer: Any = None,
        text_padding: str = "max_length",
        text_length: int | None = None,
    ):
        """
        Args:
            model: a transformers model: a vision model, or one with ``vision_model`` and
                ``get_image_features``/``get_text_features`` (a CLIP-like model).
            input_size: the side images are resized to.
            patch_size: the vision tower's patch size.
            mean, std: input normalization in [0, 1] units.
            tokenizer: the model's tokenizer (texts -> ``input_ids``), for the text tower.
            text_padding, text_length: how texts are padded.
        """
        super().__init__()
        self.model = model.eval()
        self.vision = getattr(model, "vision_model", model)
        self.input_size, self.patch_size = int(input_size), int(patch_size)
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.tokenizer, self.text_padding, self.text_length = tokenizer, text_padding, text_length
        self.has_text = callable(getattr(model, "get_text_features", None))
        vision_config = _vision_config(model.config)
        # Towers that resample their position table only on request (SigLIP, CLIP) are asked to
        # when the input size differs from the trained one; DINOv2 always resamples.
        resized = self.input_size != _native_size(vision_config)
        # A NaFlex tower (SigLIP 2, Tschannen et al. 2025, arXiv 2502.14786) reads patchified
        # pixels with their grid (spatial_shapes) and resizes its position table to that grid.
        self.patchified = _takes(self.vision.forward, "spatial_shapes")
        self._vision_kwargs = _interpolation(self.vision.forward, resized)
        self._image_kwargs = _interpolation(getattr(model, "get_image_features", None), resized)
        self.width = int(vision_config.hidden_size)
        self.embed_dim = self.width
        if self.has_text:
            self.embed_dim = int(getattr(model.config, "projection_dim", None) or self.width)

    @classmethod
    def build(cls, params: HfParams, *, allow_random_init: bool = False) -> HfTeacher:
        names = cls.weight_names(params)
        folder = resolve(names["pretrained"]) if names else params.path
        if folder is not None:
            model = AutoModel.from_pretrained(str(folder), local_files_only=True)
        elif allow_random_init and params.config is not None:
            config = dict(params.config)
            model = AutoModel.from_config(AutoConfig.for_model(config.pop("model_type"), **config))
            warnings.warn("hf teacher has random weights", stacklevel=2)
        else:
            raise ValueError(
                "hf teacher needs 'path', a local save_pretrained folder, or 'pretrained', a Hub "
                "repo id; random weights (from 'config') are only for tests and dry runs "
                "(allow_random_init)"
            )
        vision_config = _vision_config(model.config)
        stats = _processor_stats(folder)
        mean = params.mean or stats.get("image_mean")
        std = params.std or stats.get("image_std")
        if mean is None or std is None:
            if not allow_random_init:
                raise ValueError(
                    f"hf teacher: no image mean/std: give 'mean' and 'std' or a {PROCESSOR_FILE}"
                )
            mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
        tokenizer = None
        if folder is not None and callable(getattr(model, "get_text_features", None)):
            tokenizer = AutoTokenizer.from_pretrained(str(folder), local_files_only=True)
        teacher = cls(
            model=model,
            input_size=params.image_size or _native_size(vision_config),
            patch_size=int(vision_config.patch_size),
            mean=mean,
            std=std,
            tokenizer=tokenizer,
            text_padding=params.text_padding,
            text_length=params.text_length,
        )
        return teacher.freeze()

    @classmethod
    def checkpoint_fields(cls, params: HfParams) -> dict[str, Path | None]:
        return snapshot_config_fields(cls.weight_names(params), "path", params.path)

    @classmethod
    def weight_names(cls, params: HfParams) -> dict[str, WeightsName]:
        return snapshot_names(params.pretrained, params.revision, "transformers model")

    def target_specs(self) -> dict[str, TargetSpec]:
        grid = self.input_size // self.patch_size
        specs = {
            "summary": TargetSpec(("B", self.width), "the vision tower's pooled output"),
            "spatial": TargetSpec(("B", self.width, grid, grid), "final patch features"),
        }
        if self.has_text:
            specs["image_embedding"] = TargetSpec(
                ("B", self.embed_dim), "L2-normalized image embedding in the image-text space"
            )
        return specs

    def component_names(self) -> list[str]:
        return ["model", "vision"] + (["text"] if self.has_text else [])

    def component(self, name: str) -> nn.Module:
        if name == "model":
            return self.model
        if name == "vision":
            return self.vision
        if name == "text" and self.has_text:
            return self.model.text_model
        return super().component(name)

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], resized to ``input_size`` here.
            targets: any of ``summary``, ``spatial`` and (with a text tower) ``image_embedding``.
            prompts: unused.

        Returns:
            ``summary`` ``[B, C]``, ``spatial`` ``[B, C, h, w]``, ``image_embedding`` ``[B, D]``.
        """
        known = self.target_specs()
        unknown = sorted(set(targets) - set(known))
        if unknown:
            raise ValueError(f"hf teacher has no target {unknown}; it has {', '.join(known)}")
        pixels = self.prepare(images)
        out: dict[str, Tensor] = {}
        if "summary" in targets or "spatial" in targets:
            vision = self.vision(**self._vision_inputs(pixels), **self._vision_kwargs)
            out["summary"] = vision.pooler_output
            out["spatial"] = self._grid(vision.last_hidden_state, pixels.shape[-1])
        if "image_embedding" in targets:
            inputs = self._vision_inputs(pixels)
            features = self.model.get_image_features(**inputs, **self._image_kwargs)
            embedding = _pooled(features)
            out["image_embedding"] = F.normalize(embedding, dim=-1)
        return {name: out[name] for name in targets}

    def _vision_inputs(self, pixels: Tensor) -> dict[str, Tensor]:
        """The vision tower's inputs for normalized ``pixels`` ``[B, 3, S, S]``."""
        if not self.patchified:
            return {"pixel_values": pixels}
        patches = _patchify(pixels, self.patch_size)
        grid = pixels.shape[-1] // self.patch_size
        return {
            "pixel_values": patches,
            "pixel_attention_mask": patches.new_ones(patches.shape[:2], dtype=torch.long),
            "spatial_shapes": torch.tensor([[grid, grid]] * len(pixels), device=pixels.device),
        }

    def _grid(self, hidden: Tensor, side: int) -> Tensor:
        """``[B, P + h*w, C]`` -> ``[B, C, h, w]``: prefix tokens (class, registers) dropped."""
        grid = side // self.patch_size
        patches = hidden[:, hidden.shape[1] - grid * grid :]
        return patches.transpose(1, 2).reshape(hidden.shape[0], -1, grid, grid)

    @torch.no_grad()
    def dense_embeddings(self, images: Tensor) -> Tensor:
        """Per-patch embeddings ``[B, h, w, D]`` (L2-normalized) for dense zero-shot labels.

        For SigLIP's (and SigLIP 2's) attention-pooling head, MaskCLIP's recipe (Zhou et al.,
        ECCV 2022): the probe's attention mixes patches, so each patch keeps only its own value
        path through the pooling attention (value and output projections), then the head's
        LayerNorm + MLP. That is exactly what the head gives when it pools a single patch.
        """
        head = getattr(self.vision, "head", None)
        if not isinstance(head, ATTENTION_POOLING_HEADS):
            raise NotImplementedError(
                "dense embeddings need a SigLIP attention-pooling head; this model has none"
            )
        pixels = self.prepare(images)
        inputs = self._vision_inputs(pixels)
        hidden = self.vision(**inputs, **self._vision_kwargs).last_hidden_state
        attention, width = head.attention, hidden.shape[-1]
        values = F.linear(
            hidden, attention.in_proj_weight[2 * width :], attention.in_proj_bias[2 * width :]
        )
        pooled = attention.out_proj(values)
        patches = pooled + head.mlp(head.layernorm(pooled))
        grid = pixels.shape[-1] // self.patch_size
        return F.normalize(patches, dim=-1).reshape(images.shape[0], grid, grid, -1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """L2-normalized text embeddings ``[T, D]`` (class prompts for zero-shot labels)."""
        if not self.has_text or self.tokenizer is None:
            raise ValueError("this hf teacher has no text tower and tokenizer to encode texts")
        length = self.text_length or getattr(
            self.model.config.text_config, "max_position_embeddings", None
        )
        tokens = self.tokenizer(
            texts,
            padding=self.text_padding,
            max_length=length,
            truncation=True,
            return_tensors="pt",
        )
        device = next(self.model.parameters()).device
        embedded = self.model.get_text_features(input_ids=tokens["input_ids"].to(device))
        return F.normalize(_pooled(embedded), dim=-1)
