"""A tiny Depth Anything for tests: transformers' real ``DepthAnythingForDepthEstimation`` with a
two-block, 32-wide DINOv2 backbone at a 28-pixel input, and its ``save_pretrained`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import DepthAnythingConfig, DepthAnythingForDepthEstimation

SIDE = 28
PROCESSOR_FILE = "preprocessor_config.json"
# 10x transformers' default initializer_range: the random model's depths are then of order 1 and
# vary over the image, instead of the near-zero maps the default draws give after the final ReLU.
WIDE = 0.2
TINY_DEPTH_CONFIG = {
    "model_type": "depth_anything",
    "initializer_range": WIDE,
    "patch_size": 7,
    "backbone_config": {
        "model_type": "dinov2",
        "initializer_range": WIDE,
        "image_size": SIDE,
        "patch_size": 7,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "out_indices": [1, 2],
        "reshape_hidden_states": False,
    },
    "reassemble_hidden_size": 32,
    "reassemble_factors": [2, 1],
    "neck_hidden_sizes": [16, 32],
    "fusion_hidden_size": 16,
    "head_hidden_size": 8,
}
PROCESSOR_STATS = {
    "image_mean": [0.485, 0.456, 0.406],
    "image_std": [0.229, 0.224, 0.225],
    "size": {"height": SIDE, "width": SIDE},
}


def tiny_depth_anything(seed: int = 0) -> DepthAnythingForDepthEstimation:
    """The tiny Depth Anything, its random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    config = dict(TINY_DEPTH_CONFIG)
    config.pop("model_type")
    return DepthAnythingForDepthEstimation(DepthAnythingConfig(**config)).eval()


def write_tiny_depth(folder: Path, seed: int = 0) -> DepthAnythingForDepthEstimation:
    """``save_pretrained`` of :func:`tiny_depth_anything` into ``folder``, with a processor file
    holding :data:`PROCESSOR_STATS`; the model written."""
    model = tiny_depth_anything(seed)
    model.save_pretrained(folder)
    (folder / PROCESSOR_FILE).write_text(json.dumps(PROCESSOR_STATS))
    return model
