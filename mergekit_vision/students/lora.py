"""Low-rank adapters (LoRA) on a student's blocks, and their merge back into plain weights.

LoRA (Hu et al., "LoRA: Low-Rank Adaptation of Large Language Models", ICLR 2022, arXiv
2106.09685) freezes a Linear layer's weight ``W [out, in]`` and trains a low-rank update:
``W + (alpha / r) B A`` with ``A [r, in]``, ``B [out, r]``, ``B`` zero at the start so training
begins at the base model. SAM-CLIP (Wang et al., arXiv 2310.15308) suggests such
parameter-efficient training against the forgetting of its first teacher that it measures:
everything the backbone was stays in ``W``.

The update is a weight parametrization (:mod:`torch.nn.utils.parametrize`): every read of
``layer.weight`` gives ``W + s B A``, however a block uses its weights. ViT-Det's fast attention
calls ``F.linear`` on ``attn.qkv.weight`` directly, which a module wrapping the Linear's
``forward`` (peft's LoRA layers, or a hook) would bypass; this is why the project keeps this
small module rather than adding peft as a dependency. What it gives up is LoRA's dropout on the
layer's input, which has no place in weight space. :func:`merge_lora` removes the
parametrizations and leaves the merged weights in place: the state dict then has the base
model's keys and shapes, which every export format reads.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.nn.utils import parametrize

from mergekit_vision.contracts import Student


class LowRankUpdate(nn.Module):
    """The parametrization ``W -> W + (alpha / rank) B A`` of one Linear weight ``[out, in]``."""

    def __init__(self, weight: Tensor, *, rank: int, alpha: float):
        """
        Args:
            weight: the Linear's weight ``[out, in]`` (shape, dtype and device are taken).
            rank: ``r``, the inner width of ``B A``.
            alpha: the update's scale is ``alpha / rank``.
        """
        super().__init__()
        out_features, in_features = weight.shape
        like = dict(dtype=weight.dtype, device=weight.device)
        self.lora_a = nn.Parameter(torch.empty(rank, in_features, **like))
        # A as nn.Linear initialises its weight (and as peft does); B at zero: no change yet
        nn.init.kaiming_uniform_(self.lora_a, a=math.sqrt(5))
        self.lora_b = nn.Parameter(torch.zeros(out_features, rank, **like))
        self.scale = alpha / rank

    def forward(self, weight: Tensor) -> Tensor:
        return weight + self.scale * (self.lora_b @ self.lora_a)


def apply_lora(student: Student, *, rank: int, alpha: float, targets: Sequence[str]) -> list[str]:
    """Freeze all of ``student`` and give the Linear layers named ``targets`` (the last part of
    their module name) in each of its transformer blocks a trainable low-rank update.

    Returns:
        The adapted layers' names relative to the student, e.g. ``blocks.0.attn.qkv``.

    Raises:
        ValueError: a target names no Linear layer of the blocks (the message lists those).
    """
    student.requires_grad_(False)
    prefix = {id(module): name for name, module in student.named_modules()}
    layers = [
        (f"{prefix[id(block)]}.{name}", module)
        for block in student.transformer_blocks()
        for name, module in block.named_modules()
        if isinstance(module, nn.Linear)
    ]
    names = sorted({name.rsplit(".", 1)[-1] for name, _ in layers})
    unknown = sorted(set(targets) - set(names))
    if unknown:
        raise ValueError(
            f"lora targets {unknown} name no Linear layer of the student's blocks; "
            f"its blocks' Linear layers: {', '.join(names) or '(none)'}"
        )
    adapted = []
    for name, module in layers:
        if name.rsplit(".", 1)[-1] in targets:
            update = LowRankUpdate(module.weight, rank=rank, alpha=alpha)
            parametrize.register_parametrization(module, "weight", update)
            adapted.append(name)
    return adapted


def lora_parameters(module: nn.Module) -> list[nn.Parameter]:
    """The ``A`` and ``B`` of every low-rank update under ``module``."""
    updates = [m for m in module.modules() if isinstance(m, LowRankUpdate)]
    return [p for update in updates for p in (update.lora_a, update.lora_b)]


def merge_lora(module: nn.Module) -> int:
    """Fold every low-rank update under ``module`` into its weight (``W <- W + s B A``) and
    remove it, so the layers are plain Linear layers with the base model's state-dict keys.
    The forward is unchanged (up to float rounding). Returns how many were merged; a module
    without updates is left as it is."""
    merged = 0
    for layer in list(module.modules()):
        if not parametrize.is_parametrized(layer, "weight"):
            continue
        if any(isinstance(p, LowRankUpdate) for p in layer.parametrizations["weight"]):
            parametrize.remove_parametrizations(layer, "weight", leave_parametrized=True)
            merged += 1
    return merged
