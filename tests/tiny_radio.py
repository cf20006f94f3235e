"""A tiny C-RADIO for tests: transformers' real ``RadioModel`` (CPE patch generator, two class and
two register tokens, three blocks 32 wide) with an 8-pixel patch and a 64-pixel position table,
and its ``save_pretrained`` folder."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import RadioModel

from mergekit_vision.students.radio import radio_config

TINY_RADIO_CONFIG = {
    "hidden_size": 32,
    "num_hidden_layers": 3,
    "num_attention_heads": 2,
    "patch_size": 8,
    "image_size": 32,
    "max_img_size": 64,
    "num_cls_tokens": 2,
    "num_registers": 2,
    "summary_idxs": [0, 1],
}


def tiny_radio(seed: int = 0, **overrides) -> RadioModel:
    """The tiny C-RADIO, its random weights drawn from ``seed``; the position table and tokens
    are drawn 10x wider than transformers' default, so that resampling them matters."""
    torch.manual_seed(seed)
    model = RadioModel(radio_config({**TINY_RADIO_CONFIG, **overrides})).eval()
    with torch.no_grad():
        model.embeddings.position_embedding.normal_(std=0.2)
        model.embeddings.cls_register_token.normal_(std=0.2)
    return model


def write_tiny_radio(folder: Path, seed: int = 0) -> RadioModel:
    """``save_pretrained`` of :func:`tiny_radio` into ``folder``; the model written."""
    model = tiny_radio(seed)
    model.save_pretrained(folder)
    return model
