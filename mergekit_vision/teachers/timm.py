"""The timm teacher: any timm image model (e.g. DINOv2 ViTs) from a local checkpoint.

Its targets are the two AM-RADIO distils from every teacher (Ranzinger et al., "AM-RADIO:
Agglomerative Vision Foundation Model -- Reduce All Domains Into One", CVPR 2024, arXiv
2312.06709): the ``summary`` vector (the class token, or the pooled features, as the model's own
head pools them) and the ``spatial`` feature map. The reference use is DINOv2 (Oquab et al.,
"DINOv2: Learning Robust Visual Features without Supervision", arXiv 2304.07193) through timm's
``vit_*_patch14_dinov2`` models, whose class-token and patch features are the targets RADIO
distils from it.

The model is built with ``pretrained=False`` and loaded from a file: a local ``checkpoint``, or
the file a ``pretrained`` name points to in the Hub cache (a tag of the architecture, as timm's
own table lists it, or ``hf-hub:org/name``; see docs/weights.md). Files come in timm's own
formats: a ``.pth``/``.bin`` or ``.safetensors`` state dict, a training checkpoint
(``{"state_dict": ...}`` or ``{"model": ...}``, EMA weights preferred as timm does), or a released
checkpoint in the architecture's original layout, converted by the architecture's own
``checkpoint_filter_fn`` exactly as timm converts it when it loads pretrained weights (DINOv2's
``dinov2_vits14_pretrain.pth`` included; the position table is resampled to ``img_size``).
"""

from __future__ import annotations

import difflib
import json
import sys
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import timm.models
import torch
import torch.nn.functional as F
from huggingface_hub.constants import CONFIG_NAME, PYTORCH_WEIGHTS_NAME, SAFETENSORS_SINGLE_FILE
from pydantic import Field, model_validator
from timm.data import resolve_model_data_config
from torch import Tensor, nn

from mergekit_vision.contracts import TEACHERS, Prompts, TargetSpec, Teacher
from mergekit_vision.hub import HF_HUB_PREFIX, HubFile, WeightsName, cached, parse_hf_hub, resolve
from mergekit_vision.registry import PluginParams
from mergekit_vision.weights import load_strict, read_weights

TARGETS = ("summary", "spatial")
# create_model arguments the teacher owns: weights come only from ``checkpoint``/``pretrained``.
_RESERVED_KWARGS = ("pretrained", "pretrained_cfg", "pretrained_cfg_overlay", "checkpoint_path")


class TimmParams(PluginParams):
    """Which timm architecture, its weights, and the input it sees.

    ``model_kwargs`` go to ``timm.create_model`` (``img_size``, ``depth``, ``embed_dim``,
    ``num_heads``, ``num_classes``, ``dynamic_img_size``, ...), so a checkpoint trained at another
    size or a tiny test model are both a recipe edit. ``image_size`` is the side every image is
    resized to (default: the model's ``img_size``, else its pretrained config's input size);
    ``mean``/``std`` override the pretrained config's normalization. A ViT whose ``image_size``
    differs from its ``img_size`` has its position table resampled after loading (timm's
    ``set_input_size``), so DINOv2's 518 px checkpoint runs at ``image_size: 224`` directly.
    Weights are a local ``checkpoint`` or ``pretrained``, by name: a pretrained tag of ``model``
    ("lvd142m") or "hf-hub:org/name[@revision]"; its normalization then comes with it.
    """

    model: str
    checkpoint: Path | None = None
    pretrained: str | None = None
    model_kwargs: dict[str, Any] = Field(default_factory=dict)
    image_size: int | None = Field(None, ge=8)
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None
    normalize_summary: bool = False

    @model_validator(mode="after")
    def _check(self) -> TimmParams:
        if not timm.is_model(self.model):
            close = difflib.get_close_matches(self.model, timm.list_models(), n=6, cutoff=0.5)
            raise ValueError(
                f"unknown timm model {self.model!r}; similar: {', '.join(close) or '(none)'}"
            )
        reserved = sorted(set(self.model_kwargs) & set(_RESERVED_KWARGS))
        if reserved:
            raise ValueError(
                f"model_kwargs may not set {', '.join(reserved)}: weights come from 'checkpoint' "
                "or 'pretrained'"
            )
        if self.pretrained is not None:
            if self.checkpoint is not None:
                raise ValueError("give checkpoint (a local file) or pretrained (a name), not both")
            timm_weights(self.model, self.pretrained)  # an unknown tag fails here
        return self


def timm_weights(model: str, pretrained: str, *, field: str = "pretrained") -> WeightsName:
    """Where timm keeps ``model``'s weights named ``pretrained``: a pretrained tag of the
    architecture ("lvd142m", whose Hub repository timm's own table gives) or
    "hf-hub:org/name[@revision]" (timm's Hub layout: ``model.safetensors`` or
    ``pytorch_model.bin`` beside a ``config.json``).

    Raises:
        ValueError: an unknown tag, a tag without a Hub location, or a malformed Hub name.
    """
    filename = None
    if pretrained.startswith(HF_HUB_PREFIX):
        repo_id, revision = parse_hf_hub(pretrained)
    else:
        cfg = _tag_cfg(model, pretrained)
        if not cfg.hf_hub_id:
            raise ValueError(
                f"timm tag {model}.{pretrained} has no Hub location; download {cfg.url or 'it'} "
                "and give the file as checkpoint"
            )
        repo_id, revision = parse_hf_hub(HF_HUB_PREFIX + cfg.hf_hub_id)
        filename = cfg.hf_hub_filename
    files = (filename,) if filename else (SAFETENSORS_SINGLE_FILE, PYTORCH_WEIGHTS_NAME)
    source = HubFile(repo_id, files, revision, companions=(CONFIG_NAME,))
    return WeightsName(field=field, name=pretrained, what=f"timm {model} weights", source=source)


def _tag_cfg(model: str, tag: str) -> Any:
    try:
        cfg = timm.models.get_pretrained_cfg(f"{model}.{tag}")
    except RuntimeError:  # timm's answer to an unknown tag
        cfg = None
    if cfg is None:
        tags = [n.partition(".")[2] for n in timm.list_pretrained(f"{model}.*")]
        raise ValueError(
            f"timm model {model!r} has no pretrained tag {tag!r}; its tags: "
            f"{', '.join(tags) or '(none)'} (or give an hf-hub: name)"
        )
    return cfg


def pretrained_stats(model: str, pretrained: str, weights_file: Path) -> dict[str, Any]:
    """The mean/std that come with weights named ``pretrained``: the tag's pretrained config, or
    the ``pretrained_cfg`` of the Hub repository's ``config.json`` (whose ``architecture`` must be
    ``model``).

    Raises:
        ValueError: the repository holds another architecture.
    """
    if not pretrained.startswith(HF_HUB_PREFIX):
        cfg = _tag_cfg(model, pretrained)
        return {"mean": cfg.mean, "std": cfg.std}
    config_file = weights_file.parent / CONFIG_NAME
    config = json.loads(config_file.read_text()) if config_file.is_file() else {}
    architecture = config.get("architecture")
    if architecture is not None and architecture != model:
        raise ValueError(
            f"{pretrained} holds a {architecture!r}, not model {model!r}; set model: {architecture}"
        )
    stats = config.get("pretrained_cfg", {})
    return {k: tuple(stats[k]) for k in ("mean", "std") if k in stats}


def timm_state_dict_from_checkpoint(
    checkpoint: Mapping[str, Any], model: nn.Module
) -> dict[str, Tensor]:
    """A timm checkpoint (plain, training or released layout) -> ``model``'s state dict.

    Unwraps ``state_dict_ema``/``model_ema``/``state_dict``/``model`` as timm's
    ``load_state_dict`` does, strips DDP's ``module.`` prefix, then applies the architecture
    module's ``checkpoint_filter_fn`` (timm's converter for released weights, which also resamples
    position tables to the model's grid) when the architecture has one.
    """
    for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
        if isinstance(checkpoint.get(key), Mapping):
            checkpoint = checkpoint[key]
            break
    if not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError("not a state dict: some values are not tensors")
    state = {k.removeprefix("module."): v for k, v in checkpoint.items()}
    convert = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    return dict(convert(state, model)) if callable(convert) else state


def load_timm_checkpoint(model: nn.Module, path: Path, *, name: str) -> None:
    """Load a local timm checkpoint into ``model`` strictly, saying what does not fit."""
    raw = read_weights(path, what="timm checkpoint")
    try:
        weights = timm_state_dict_from_checkpoint(raw, model)
    except (ValueError, KeyError, RuntimeError) as error:
        raise ValueError(f"timm checkpoint {path} does not fit {name!r}: {error}") from error
    load_strict(
        model,
        weights,
        what=f"timm checkpoint {path} does not fit model {name!r} with the given model_kwargs",
        path=path,
        expected=f"a timm checkpoint of {name!r}",
        remedy="set the teacher's model and model_kwargs to the checkpoint's, or point its "
        "checkpoint at a file of this model",
    )


@TEACHERS.register("timm")
class TimmTeacher(Teacher):
    """Any timm model (e.g. DINOv2 ViTs): its summary vector and spatial feature map."""

    Params = TimmParams

    def __init__(
        self,
        *,
        model: nn.Module,
        input_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        normalize_summary: bool = False,
    ):
        """
        Args:
            model: a timm model with ``forward_features`` and ``forward_head(pre_logits=True)``.
            input_size: the side images are resized to.
            mean, std: the model's input normalization, in [0, 1] units.
            normalize_summary: L2-normalize the summary target.
        """
        super().__init__()
        self.model = model.eval()
        self.input_size = int(input_size)
        self.pixel_mean = tuple(float(v) for v in mean)  # type: ignore[assignment]
        self.pixel_std = tuple(float(v) for v in std)  # type: ignore[assignment]
        self.normalize_summary = normalize_summary
        self.num_prefix_tokens = int(getattr(model, "num_prefix_tokens", 0))
        with torch.no_grad():
            probe = self._features(torch.zeros(1, 3, self.input_size, self.input_size))
        self.summary_dim = int(probe["summary"].shape[-1])
        self.spatial_shape = tuple(int(s) for s in probe["spatial"].shape[1:])

    @classmethod
    def build(cls, params: TimmParams, *, allow_random_init: bool = False) -> TimmTeacher:
        weights, stats = params.checkpoint, {}
        if params.pretrained is not None:  # first: a missing name stops before any model is built
            weights = resolve(cls.weight_names(params)["pretrained"])
            stats = pretrained_stats(params.model, params.pretrained, weights)
        model = timm.create_model(params.model, pretrained=False, **params.model_kwargs)
        if weights is not None:
            load_timm_checkpoint(model, weights, name=params.model)
        elif allow_random_init:
            warnings.warn(f"timm teacher {params.model} has random weights", stacklevel=2)
        else:
            raise ValueError(
                f"timm teacher {params.model!r} needs a checkpoint (.pth or .safetensors) or "
                "pretrained (a tag or an hf-hub: name); random weights are only for tests and dry "
                "runs (allow_random_init)"
            )
        data = resolve_model_data_config(model)
        _fit_input_size(model, params.image_size)
        size = params.image_size or _model_img_size(model) or int(data["input_size"][-1])
        teacher = cls(
            model=model,
            input_size=size,
            mean=params.mean or stats.get("mean") or data["mean"],
            std=params.std or stats.get("std") or data["std"],
            normalize_summary=params.normalize_summary,
        )
        return teacher.freeze()

    @classmethod
    def checkpoint_fields(cls, params: TimmParams) -> dict[str, Path | None]:
        if params.pretrained is not None:
            return {"pretrained": cached(cls.weight_names(params)["pretrained"])}
        return {"checkpoint": params.checkpoint}

    @classmethod
    def weight_names(cls, params: TimmParams) -> dict[str, WeightsName]:
        if params.pretrained is None:
            return {}
        return {"pretrained": timm_weights(params.model, params.pretrained)}

    def target_specs(self) -> dict[str, TargetSpec]:
        channels, height, width = self.spatial_shape
        return {
            "summary": TargetSpec(("B", self.summary_dim), "class token / pooled features"),
            "spatial": TargetSpec(("B", channels, height, width), "final patch features"),
        }

    def component_names(self) -> list[str]:
        return ["model"]

    def component(self, name: str) -> nn.Module:
        if name == "model":
            return self.model
        return super().component(name)

    def forward(
        self, images: Tensor, *, targets: Sequence[str], prompts: Prompts | None = None
    ) -> dict[str, Tensor]:
        """
        Args:
            images: ``[B, 3, H, W]`` in [0, 1], resized to ``input_size`` here.
            targets: any of ``["summary", "spatial"]``.
            prompts: unused.

        Returns:
            ``{"summary": [B, D], "spatial": [B, C, h, w]}`` (the requested ones).
        """
        unknown = sorted(set(targets) - set(TARGETS))
        if unknown:
            raise ValueError(f"timm teacher has no target {unknown}; it has {', '.join(TARGETS)}")
        out = self._features(self.prepare(images))
        return {name: out[name] for name in targets}

    def _features(self, pixels: Tensor) -> dict[str, Tensor]:
        features = self.model.forward_features(pixels)
        summary = self.model.forward_head(features, pre_logits=True)
        if self.normalize_summary:
            summary = F.normalize(summary, dim=-1)
        return {"summary": summary, "spatial": self._spatial(features, pixels.shape[-2:])}

    def _spatial(self, features: Tensor, image_hw: Sequence[int]) -> Tensor:
        """``forward_features`` output -> ``[B, C, h, w]`` (tokens minus prefix, on their grid)."""
        if features.ndim == 4:  # convolutional models already give NCHW maps
            return features
        patch_embed = getattr(self.model, "patch_embed", None)
        if features.ndim != 3 or patch_embed is None:
            raise ValueError(
                f"timm model gives features of shape {tuple(features.shape)}; the spatial target "
                "needs an NCHW map or tokens of a patch grid"
            )
        grid = patch_embed.dynamic_feat_size(tuple(image_hw))
        patches = features[:, self.num_prefix_tokens :]
        return patches.transpose(1, 2).reshape(features.shape[0], -1, *grid)


def _fit_input_size(model: nn.Module, size: int | None) -> None:
    """Resample a ViT's position table to ``size`` (timm's ``set_input_size``) when it differs."""
    built = _model_img_size(model)
    if size is None or built is None or built == size:
        return
    if not callable(getattr(model, "set_input_size", None)):
        raise ValueError(
            f"image_size {size} differs from the model's img_size {built} and the model cannot "
            "be resized; set model_kwargs.img_size instead"
        )
    model.set_input_size(img_size=size)


def _model_img_size(model: nn.Module) -> int | None:
    size = getattr(getattr(model, "patch_embed", None), "img_size", None)
    if size is None:
        return None
    return int(size[0] if isinstance(size, Sequence) else size)
