"""A tiny SAM 2 for tests: transformers' real ``Sam2Model`` at a 64-pixel input (Hiera stages of
one or two blocks, 32-channel FPN and decoder), and its ``save_pretrained`` folder."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from transformers import Sam2Config, Sam2Model

SIDE = 64
# The Hiera's global-attention block must not open a pooling stage (its window is halved).
# Weights are drawn 10x wider than transformers' default (initializer_range 0.02), so that the
# random model's mask logits are of order 1 and of both signs: comparisons at 1e-5 then mean
# something, and its masks have boxes.
WIDE = 0.2
TINY_SAM2_CONFIG = {
    "initializer_range": WIDE,
    "vision_config": {
        "initializer_range": WIDE,
        "backbone_config": {
            "model_type": "sam2_hiera_det_model",
            "initializer_range": WIDE,
            "hidden_size": 16,
            "image_size": [SIDE, SIDE],
            "blocks_per_stage": [1, 1, 2, 1],
            "embed_dim_per_stage": [16, 32, 64, 128],
            "num_attention_heads_per_stage": [1, 1, 2, 2],
            "window_size_per_stage": [4, 4, 4, 2],
            "global_attention_blocks": [3],
            "window_positional_embedding_background_size": [2, 2],
        },
        "backbone_channel_list": [128, 64, 32, 16],
        "backbone_feature_sizes": [[SIDE // 4] * 2, [SIDE // 8] * 2, [SIDE // 16] * 2],
        "fpn_hidden_size": 32,
    },
    "prompt_encoder_config": {
        "hidden_size": 32,
        "image_size": SIDE,
        "patch_size": 16,
        "mask_input_channels": 4,
    },
    "mask_decoder_config": {
        "hidden_size": 32,
        "mlp_dim": 64,
        "num_attention_heads": 2,
        "iou_head_hidden_dim": 32,
    },
}
PROCESSOR_STATS = {"image_mean": [0.5, 0.4, 0.3], "image_std": [0.2, 0.25, 0.3]}


def tiny_sam2(seed: int = 0) -> Sam2Model:
    """The tiny SAM 2, its random weights drawn from ``seed``."""
    torch.manual_seed(seed)
    return Sam2Model(Sam2Config(**TINY_SAM2_CONFIG)).eval()


def write_tiny_sam2(folder: Path, seed: int = 0) -> Sam2Model:
    """``save_pretrained`` of :func:`tiny_sam2` into ``folder``, with a processor file holding
    :data:`PROCESSOR_STATS`; the model written."""
    model = tiny_sam2(seed)
    model.save_pretrained(folder)
    (folder / "preprocessor_config.json").write_text(json.dumps(PROCESSOR_STATS))
    return model
