"""What the toy tests share: a small toy world and a SAM small enough to train in a test."""

from __future__ import annotations

from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.teachers.sam import SamParams

WORLD = ToyWorldConfig(image_size=64)
SAM = SamParams(
    variant="custom",
    encoder_embed_dim=32,
    encoder_depth=2,
    encoder_num_heads=2,
    encoder_global_attn_indexes=(1,),
    image_size=64,
    patch_size=8,
    window_size=4,
    prompt_embed_dim=32,
    decoder_mlp_dim=64,
    decoder_num_heads=2,
    mask_in_chans=4,
)
