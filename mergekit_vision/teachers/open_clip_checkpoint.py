"""Reading open_clip checkpoints: released files and training checkpoints into a ``CLIP``, with
errors that say which built-in model the weights would fit; and where open_clip keeps the weights
a tag or an ``hf-hub:`` name points to."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import open_clip
from open_clip.constants import HF_CONFIG_NAME, HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME
from open_clip.model import resize_pos_embed, resize_text_pos_embed
from open_clip.pretrained import get_pretrained_cfg
from torch import Tensor, nn

from mergekit_vision.hub import HF_HUB_PREFIX, HubFile, WeightsName, parse_hf_hub
from mergekit_vision.weights import load_strict, read_weights

CUSTOM_PREFIX = "mergekit-custom-"  # names of architectures registered from a recipe's model_cfg


def open_clip_weights(model: str, pretrained: str, *, field: str = "pretrained") -> WeightsName:
    """Where open_clip keeps ``model``'s weights named ``pretrained``: a tag of the model
    (``"datacomp_xl_s13b_b90k"``, open_clip's own table gives its Hub repository) or
    ``"hf-hub:org/name[@revision]"`` (with ``open_clip_config.json`` beside the weights).
    Safetensors first, as open_clip's ``download_pretrained_from_hf`` prefers them.

    Raises:
        ValueError: an unknown tag, a tag without a Hub location, or a malformed Hub name.
    """
    what = f"open_clip {model} weights"
    if pretrained.startswith(HF_HUB_PREFIX):
        repo_id, revision = parse_hf_hub(pretrained)
        files = (HF_SAFE_WEIGHTS_NAME, HF_WEIGHTS_NAME)
        source = HubFile(repo_id, files, revision, companions=(HF_CONFIG_NAME,))
        return WeightsName(field=field, name=pretrained, what=what, source=source)
    hub = get_pretrained_cfg(model, pretrained).get("hf_hub", "")
    if not hub:
        tags = open_clip.list_pretrained_tags_by_model(model)
        known = f"its tags: {', '.join(tags)}" if tags else "it has no tags"
        raise ValueError(
            f"open_clip model {model!r} has no tag {pretrained!r} on the Hub ({known}); "
            "give a tag, an hf-hub: name or a local checkpoint"
        )
    # open_clip's table: 'org/name/' means the default file, 'org/name/file.bin' another one
    repo_id, filename = os.path.split(hub)
    filename = filename or HF_WEIGHTS_NAME
    if filename == HF_WEIGHTS_NAME:
        files: tuple[str, ...] = (HF_SAFE_WEIGHTS_NAME, filename)
    elif filename.endswith((".bin", ".pth")):
        files = (filename[: -len(".bin")] + ".safetensors", filename)
    else:
        files = (filename,)
    return WeightsName(field=field, name=pretrained, what=what, source=HubFile(repo_id, files))


def hub_preprocess(weights_file: Path) -> dict[str, tuple[float, ...]]:
    """The mean/std of the ``open_clip_config.json`` beside weights from an ``hf-hub:`` name (its
    ``preprocess_cfg``, as ``open_clip.create_model("hf-hub:...")`` reads it); {} without one."""
    config = weights_file.parent / HF_CONFIG_NAME
    if not config.is_file():
        return {}
    preprocess = json.loads(config.read_text()).get("preprocess_cfg", {})
    return {k: tuple(preprocess[k]) for k in ("mean", "std") if k in preprocess}


def builtin_models() -> list[str]:
    """open_clip's own model names (not the custom ones registered here)."""
    return [m for m in open_clip.list_models() if not m.startswith(CUSTOM_PREFIX)]


def open_clip_state_dict_from_checkpoint(checkpoint: Mapping[str, object]) -> dict[str, Tensor]:
    """open_clip's released or training checkpoints -> a plain ``CLIP`` state dict.

    Accepts a plain state dict (``open_clip_pytorch_model.bin``, ``open_clip_model.safetensors``)
    and a training checkpoint ``{"state_dict": ..., "epoch": ...}`` whose keys carry DDP's
    ``module.`` prefix.
    """
    if isinstance(checkpoint.get("state_dict"), Mapping):
        checkpoint = checkpoint["state_dict"]
    if not all(isinstance(v, Tensor) for v in checkpoint.values()):
        raise ValueError("not a state dict: some values are not tensors")
    return {k.removeprefix("module."): v for k, v in checkpoint.items()}


def describe_open_clip_checkpoint(weights: Mapping[str, Tensor]) -> str:
    """Which built-in open_clip models the weights fit, for error messages."""
    if "visual.conv1.weight" not in weights or "visual.proj" not in weights:
        return "it does not look like an open_clip ViT checkpoint (no visual.conv1 / visual.proj)"
    width, _, patch, _ = weights["visual.conv1.weight"].shape
    embed_dim = int(weights["visual.proj"].shape[1])
    blocks = r"visual\.transformer\.resblocks\.(\d+)\."
    layers = len({m.group(1) for k in weights if (m := re.match(blocks, k))})
    found = (width, layers, patch, embed_dim)
    matches = [
        name
        for name in builtin_models()
        if _vision_sizes(open_clip.get_model_config(name)) == found
    ]
    sizes = f"vision width {width}, {layers} layers, patch {patch}, embed_dim {embed_dim}"
    if not matches:
        return f"it holds a ViT with {sizes}, like no built-in open_clip model"
    return f"it holds a ViT with {sizes}, like open_clip {', '.join(matches[:4])}"


def _vision_sizes(config: Mapping[str, Any]) -> tuple[Any, ...]:
    vision = config.get("vision_cfg", {})
    keys = ("width", "layers", "patch_size")
    return (*(vision.get(k) for k in keys), config.get("embed_dim"))


def load_open_clip_checkpoint(clip: nn.Module, path: Path, *, model: str) -> None:
    """Load an open_clip checkpoint file into ``clip`` strictly, with errors that help."""
    raw = read_weights(path, what="open_clip checkpoint")
    try:
        weights = open_clip_state_dict_from_checkpoint(raw)
    except ValueError as error:
        raise ValueError(f"open_clip checkpoint {path} is not a state dict: {error}") from error
    _fit_position_tables(weights, clip)
    load_strict(
        clip,
        weights,
        what=f"open_clip checkpoint {path} does not fit model {model!r}",
        describe=describe_open_clip_checkpoint,
        path=path,
        expected=f"an open_clip checkpoint of model {model!r}",
        remedy="set the teacher's model (or model_cfg) to the checkpoint's, or point its "
        "checkpoint at a file of this model",
    )


def _fit_position_tables(weights: dict[str, Tensor], clip: nn.Module) -> None:
    """Resize position tables to another image size or context length, as open_clip does.

    Only tables of the model's width are touched: other widths mean another model, which the
    strict key check reports better than open_clip's resizers would (they assert on width).
    """
    own = clip.state_dict()
    for key, resize in (
        ("visual.positional_embedding", resize_pos_embed),
        ("positional_embedding", resize_text_pos_embed),
    ):
        if key in weights and key in own and weights[key].shape[-1] == own[key].shape[-1]:
            resize(weights, clip)
