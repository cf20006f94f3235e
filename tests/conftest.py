"""Shared fixtures: tiny real-class teachers saved in their official checkpoint formats."""

from __future__ import annotations

from pathlib import Path

import open_clip
import pytest
import torch
import yaml

from mergekit_vision.teachers.open_clip import register_model_cfg
from mergekit_vision.teachers.sam import build_sam_model

ROOT = Path(__file__).resolve().parents[1]
TINY_RECIPE = ROOT / "tests" / "recipes" / "tiny_sam_clip.yaml"


@pytest.fixture(scope="session")
def tiny_checkpoints(tmp_path_factory) -> dict[str, Path]:
    """``sam_tiny.pth`` (SAM's plain state-dict format) and ``clip_tiny.bin`` (open_clip's)."""
    recipe = yaml.safe_load(TINY_RECIPE.read_text())
    sam_params = dict(recipe["teachers"]["sam"]["params"])
    folder = tmp_path_factory.mktemp("checkpoints")
    torch.manual_seed(0)
    sam = build_sam_model(
        encoder_embed_dim=sam_params["encoder_embed_dim"],
        encoder_depth=sam_params["encoder_depth"],
        encoder_num_heads=sam_params["encoder_num_heads"],
        encoder_global_attn_indexes=tuple(sam_params["encoder_global_attn_indexes"]),
        image_size=sam_params["image_size"],
        patch_size=sam_params["patch_size"],
        window_size=sam_params["window_size"],
        prompt_embed_dim=sam_params["prompt_embed_dim"],
        decoder_mlp_dim=sam_params["decoder_mlp_dim"],
        decoder_num_heads=sam_params["decoder_num_heads"],
        mask_in_chans=sam_params["mask_in_chans"],
    )
    torch.save(sam.state_dict(), folder / "sam_tiny.pth")
    cfg = recipe["teachers"]["clip"]["params"]["model_cfg"]
    clip = open_clip.create_model(register_model_cfg(cfg), pretrained=None)
    torch.save(clip.state_dict(), folder / "clip_tiny.bin")
    return {"sam": folder / "sam_tiny.pth", "clip": folder / "clip_tiny.bin"}


@pytest.fixture
def tiny_recipe_args(tiny_checkpoints) -> list[str]:
    """``vmerge run`` arguments for the tiny recipe with its checkpoints filled in."""
    return [
        str(TINY_RECIPE),
        "--set",
        f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set",
        f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
    ]
