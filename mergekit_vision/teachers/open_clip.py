"""The CLIP teacher: an open_clip model built by name (or from a config) and a local checkpoint.

Radford et al., "Learning Transferable Visual Models From Natural Language Supervision", ICML 2021
(arXiv 2103.00020); open_clip's reproductions (Cherti et al., arXiv 2212.07143). Its image
embedding is the CLIP-branch target of SAM-CLIP (Wang et al., arXiv 2310.15308), whose teacher is
open_clip "ViT-L-14" trained on DataComp-1B (tag "datacomp_xl_s13b_b90k"). Its final feature map
(``spatial``: a ViT's patch tokens after the final LayerNorm, a ResNet's last stage before the
attention pool) is the per-location target AM-RADIO distils from CLIP as well (Ranzinger et al.,
arXiv 2312.06709), read through open_clip's own ``forward_intermediates``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import logging
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from copy import deepcopy
from pathlib import Path
from typing import Any

import open_clip
import open_clip.factory
import torch
import torch.nn.functional as F
from open_clip.pretrained import get_pretrained_cfg
from pydantic import model_validator
from torch import Tensor, nn

from mergekit_vision.contracts import TEACHERS, Prompts, TargetSpec, Teacher
from mergekit_vision.hub import HF_HUB_PREFIX, WeightsName, cached, resolve
from mergekit_vision.registry import PluginParams
from mergekit_vision.teachers.open_clip_checkpoint import (
    CUSTOM_PREFIX,
    builtin_models,
    hub_preprocess,
    load_open_clip_checkpoint,
    open_clip_weights,
)

_CONFIG_KEYS = ("embed_dim", "vision_cfg", "text_cfg")
TARGETS = ("image_embedding", "spatial")


class OpenClipParams(PluginParams):
    """Which open_clip model, its weights, and how its embedding is returned.

    ``model`` is an open_clip model name ("ViT-L-14"), or only a label when ``model_cfg`` (an
    open_clip architecture dict: ``embed_dim``, ``vision_cfg``, ``text_cfg``) defines the model.
    Weights are a local ``checkpoint`` file or ``pretrained``, by name: a tag of the model
    ("datacomp_xl_s13b_b90k") or "hf-hub:org/name[@revision]", resolved through the Hub cache
    (docs/weights.md). ``pretrained_tag`` names the tag a local checkpoint was released under;
    a tag (``pretrained``'s or this one) sets the preprocessing (mean/std) and is checked against
    the model's activation (QuickGELU or not).
    """

    model: str
    checkpoint: Path | None = None
    pretrained: str | None = None
    model_cfg: dict[str, Any] | None = None
    pretrained_tag: str | None = None
    image_size: int | None = None
    normalize: bool = True

    @model_validator(mode="after")
    def _check_model(self) -> OpenClipParams:
        if self.model_cfg is not None:
            missing = [k for k in _CONFIG_KEYS if k not in self.model_cfg]
            if missing:
                raise ValueError(f"model_cfg lacks {', '.join(missing)} (needs {_CONFIG_KEYS})")
            if self.tag() is not None:
                raise ValueError("a pretrained tag needs a built-in model name, not a model_cfg")
        elif self.model not in open_clip.list_models():
            raise ValueError(
                f"unknown open_clip model {self.model!r}; give a model_cfg or one of "
                f"{', '.join(_similar_models(self.model))}"
            )
        if self.pretrained_tag is not None and not get_pretrained_cfg(
            self.model, self.pretrained_tag
        ):
            tags = open_clip.list_pretrained_tags_by_model(self.model)
            raise ValueError(
                f"open_clip model {self.model!r} has no tag {self.pretrained_tag!r}; "
                f"its tags: {', '.join(tags) or '(none)'}"
            )
        if self.pretrained is not None:
            if self.checkpoint is not None:
                raise ValueError("give checkpoint (a local file) or pretrained (a name), not both")
            if self.pretrained_tag is not None and self.tag() != self.pretrained_tag:
                raise ValueError(
                    f"pretrained_tag {self.pretrained_tag!r} contradicts pretrained "
                    f"{self.pretrained!r}, a tag itself; drop pretrained_tag"
                )
            open_clip_weights(self.model, self.pretrained)  # an unknown tag fails here
        return self

    def tag(self) -> str | None:
        """The tag the weights were released under: ``pretrained_tag``, or ``pretrained`` when
        it is a tag rather than an ``hf-hub:`` name."""
        if self.pretrained is not None and not self.pretrained.startswith(HF_HUB_PREFIX):
            return self.pretrained
        return self.pretrained_tag


def _similar_models(name: str) -> list[str]:
    return difflib.get_close_matches(name, builtin_models(), n=8, cutoff=0.5) or ["ViT-L-14"]


def register_model_cfg(model_cfg: Mapping[str, Any]) -> str:
    """Register a custom architecture with open_clip under a name derived from its contents."""
    digest = hashlib.sha1(json.dumps(model_cfg, sort_keys=True).encode()).hexdigest()[:12]
    # A neutral name: open_clip picks tokenizers by name substrings such as "siglip".
    name = f"{CUSTOM_PREFIX}{digest}"
    # add_model_config only reads JSON files; the dict registry behind it is the same one.
    open_clip.factory._MODEL_CONFIGS[name] = deepcopy(dict(model_cfg))
    return name


def create_clip(params: OpenClipParams) -> tuple[nn.Module, str]:
    """An untrained open_clip model for ``params`` and the name open_clip knows it by.

    Its preprocessing is the tag's, or that of the ``open_clip_config.json`` an ``hf-hub:`` name
    brought into the cache beside its weights.
    """
    name = params.model if params.model_cfg is None else register_model_cfg(params.model_cfg)
    preprocess: dict[str, Any] = {}
    tag = params.tag()
    if tag is not None:
        tag_cfg = get_pretrained_cfg(params.model, tag)
        model_gelu = bool(open_clip.get_model_config(name).get("quick_gelu", False))
        if bool(tag_cfg.get("quick_gelu", False)) != model_gelu:
            raise ValueError(
                f"open_clip tag {tag!r} was trained "
                f"{'with' if tag_cfg.get('quick_gelu') else 'without'} QuickGELU but model "
                f"{params.model!r} is built {'with' if model_gelu else 'without'} it; use the "
                "model name with (or without) the '-quickgelu' suffix"
            )
        preprocess = {k: tuple(tag_cfg[k]) for k in ("mean", "std") if k in tag_cfg}
    elif params.pretrained is not None:
        weights = cached(OpenClipTeacher.weight_names(params)["pretrained"])
        preprocess = hub_preprocess(weights) if weights is not None else {}
    with _without_random_init_warning():
        clip = open_clip.create_model(
            name,
            pretrained=None,
            force_image_size=params.image_size,
            force_preprocess_cfg=preprocess or None,
        )
    return clip.eval(), name


@contextmanager
def _without_random_init_warning() -> Iterator[None]:
    """open_clip warns that an unloaded model is random; ours is loaded right after."""

    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    logging.root.addFilter(drop)
    try:
        yield
    finally:
        logging.root.removeFilter(drop)


class OpenClipTextEncoder(nn.Module):
    """The text side of an open_clip model: token ids ``[T, L]`` -> embeddings ``[T, D]``.

    It holds the whole model (open_clip's ``CLIP`` keeps its text tower in top-level attributes)
    and runs only its text encoder.
    """

    def __init__(self, *, clip: nn.Module, normalize: bool = True):
        super().__init__()
        self.clip = clip
        self.normalize = normalize

    def forward(self, tokens: Tensor) -> Tensor:
        return self.clip.encode_text(tokens, normalize=self.normalize)


@TEACHERS.register("open_clip")
class OpenClipTeacher(Teacher):
    """An open_clip CLIP (e.g. ViT-L-14 DataComp): its image embedding and final feature map, and
    text embeddings."""

    Params = OpenClipParams

    def __init__(
        self,
        *,
        clip: nn.Module,
        tokenizer: Callable[[list[str]], Tensor],
        embed_dim: int,
        normalize: bool = True,
    ):
        """
        Args:
            clip: an open_clip model (``encode_image``, ``encode_text``, ``visual``).
            tokenizer: open_clip's tokenizer for the model: texts -> ``[T, L]`` token ids.
            embed_dim: the shared image-text embedding width ``D``.
            normalize: L2-normalize the image embedding target.
        """
        super().__init__()
        self.clip = clip
        self.tokenizer = tokenizer
        self._embed_dim = embed_dim
        self.normalize = normalize
        preprocess = clip.visual.preprocess_cfg
        self.pixel_mean = tuple(preprocess["mean"])
        self.pixel_std = tuple(preprocess["std"])
        size = clip.visual.image_size
        self.input_size = int(size[0] if isinstance(size, Sequence) else size)
        self._spatial: tuple[int, int, int] | None = None

    @classmethod
    def build(cls, params: OpenClipParams, *, allow_random_init: bool = False) -> OpenClipTeacher:
        names = cls.weight_names(params)
        weights = resolve(names["pretrained"]) if names else params.checkpoint
        clip, name = create_clip(params)  # after resolving: a Hub config sets its mean/std
        if weights is not None:
            load_open_clip_checkpoint(clip, weights, model=params.model)
        elif allow_random_init:
            warnings.warn(f"open_clip teacher {params.model} has random weights", stacklevel=2)
        else:
            raise ValueError(
                f"open_clip teacher {params.model!r} needs a checkpoint (e.g. "
                "open_clip_pytorch_model.bin) or pretrained (a tag or an hf-hub: name); random "
                "weights are only for tests and dry runs (allow_random_init)"
            )
        teacher = cls(
            clip=clip,
            tokenizer=open_clip.get_tokenizer(name),
            embed_dim=int(open_clip.get_model_config(name)["embed_dim"]),
            normalize=params.normalize,
        )
        return teacher.freeze()

    @classmethod
    def checkpoint_fields(cls, params: OpenClipParams) -> dict[str, Path | None]:
        if params.pretrained is not None:
            return {"pretrained": cached(cls.weight_names(params)["pretrained"])}
        return {"checkpoint": params.checkpoint}

    @classmethod
    def weight_names(cls, params: OpenClipParams) -> dict[str, WeightsName]:
        if params.pretrained is None:
            return {}
        return {"pretrained": open_clip_weights(params.model, params.pretrained)}

    @property
    def embed_dim(self) -> int:
        return self._embed_dim

    def target_specs(self) -> dict[str, TargetSpec]:
        norm = "L2-normalized " if self.normalize else ""
        channels, height, width = self._spatial_shape()
        return {
            "image_embedding": TargetSpec(("B", self.embed_dim), f"{norm}image embedding"),
            "spatial": TargetSpec(("B", channels, height, width), "final feature map"),
        }

    def _spatial_shape(self) -> tuple[int, int, int]:
        """``(C, h, w)`` of the final feature map, from one blank image (the teacher resizes
        every input to its own size, so the grid is fixed)."""
        if self._spatial is None:
            blank = torch.zeros(1, 3, self.input_size, self.input_size)
            with torch.no_grad():
                spatial = self._forward_spatial(blank.to(self._device()))["spatial"]
            self._spatial = tuple(int(s) for s in spatial.shape[1:])
        return self._spatial

    def _device(self) -> torch.device:
        return next(self.clip.parameters()).device

    def _forward_spatial(self, pixels: Tensor) -> dict[str, Tensor]:
        visual = self.clip.visual
        if not hasattr(visual, "forward_intermediates"):
            raise ValueError(
                f"open_clip image tower {type(visual).__name__} has no forward_intermediates, so "
                "its feature map cannot be a target; use the image_embedding target only"
            )
        # Only the last stage: open_clip's ResNet tower drops the stages after the last index
        # asked for (unless stop_early) and would pool an earlier map into the embedding.
        out = visual.forward_intermediates(pixels, indices=1, normalize_intermediates=True)
        return {"image_embedding": out["image_features"], "spatial": out["image_intermediates"][-1]}

    def component_names(self) -> list[str]:
        return ["visual", "text"]

    def component(self, name: str) -> nn.Module:
        if name == "visual":
            return self.clip.visual
        if name == "text":
            return OpenClipTextEncoder(clip=self.clip)
        return super().component(name)

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], resized to the visual tower's size here.
            targets: any of ``["image_embedding", "spatial"]``.
            prompts: unused (CLIP takes none).

        Returns:
            ``{"image_embedding": [B, D], "spatial": [B, C, h, w]}`` (the requested ones).
        """
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise ValueError(
                f"open_clip teacher has no target {unknown}; it has {', '.join(TARGETS)}"
            )
        pixels = self.prepare(images)
        if "spatial" in targets:
            out = self._forward_spatial(pixels)
            if self.normalize:
                out["image_embedding"] = F.normalize(out["image_embedding"], dim=-1)
        else:
            out = {"image_embedding": self.clip.encode_image(pixels, normalize=self.normalize)}
        return {target: out[target] for target in targets}

    @torch.no_grad()
    def dense_embeddings(self, images: Tensor) -> Tensor:
        """Per-patch embeddings ``[B, h, w, D]`` (L2-normalized) for dense zero-shot labels.

        MaskCLIP (Zhou et al., "Extract Free Dense Labels from CLIP", ECCV 2022): the last
        attention (a ViT's last block, a ResNet's attention pool) mixes every location with the
        global query, so each location keeps only its own value path through it (value and
        output projections), then what follows (a ViT's final LayerNorm and projection).
        """
        from open_clip.modified_resnet import ModifiedResNet

        visual = self.clip.visual
        if isinstance(visual, ModifiedResNet):
            return _resnet_dense(visual, self.prepare(images))
        if getattr(visual, "attn_pool", None) is not None or not hasattr(visual, "transformer"):
            raise NotImplementedError(
                "dense embeddings need a plain ViT or a ModifiedResNet image tower"
            )
        tokens = visual._embeds(self.prepare(images))  # [B, 1 + h*w, C]
        blocks = visual.transformer.resblocks
        for block in blocks[:-1]:
            tokens = block(tokens)
        last = blocks[-1]
        width = tokens.shape[-1]
        values = F.linear(
            last.ln_1(tokens[:, 1:]),
            last.attn.in_proj_weight[2 * width :],
            last.attn.in_proj_bias[2 * width :],
        )
        patches = visual.ln_post(last.attn.out_proj(values)) @ visual.proj
        grid = int(round(patches.shape[1] ** 0.5))
        return F.normalize(patches, dim=-1).reshape(images.shape[0], grid, grid, -1)

    def encode_text(self, texts: list[str]) -> Tensor:
        """L2-normalized text embeddings ``[T, D]`` (e.g. class prompts for zero-shot labels)."""
        tokens = self.tokenizer(texts).to(self._device())
        return self.clip.encode_text(tokens, normalize=True)


def _resnet_dense(visual: nn.Module, pixels: Tensor) -> Tensor:
    """MaskCLIP on a ``ModifiedResNet``: each final feature-map location through the attention
    pool's value and output projections (no positional term: it is part of the query-key path).

    Args:
        visual: open_clip's ``ModifiedResNet``.
        pixels: ``[B, 3, R, R]`` prepared images.

    Returns:
        ``[B, h, w, D]`` L2-normalized, ``h = w = R / 32``.
    """
    features = visual.layer4(visual.layer3(visual.layer2(visual.layer1(visual.stem(pixels)))))
    pool = visual.attnpool
    dense = pool.c_proj(pool.v_proj(features.permute(0, 2, 3, 1)))
    return F.normalize(dense, dim=-1)
