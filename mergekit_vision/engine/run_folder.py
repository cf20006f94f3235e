"""Checkpoints: weights as safetensors, training state beside them, written atomically.

Layout of ``<run>/checkpoints/step-<N>/`` (and the same in ``last/``):
- ``model.safetensors``: the merged model (student backbone and heads);
- ``train_state.pt``: optimiser, LR schedule, replay state, stream positions, step counters, RNG;
- ``recipe.resolved.yaml``: the recipe that produced it.
Each folder is written under a temporary name and renamed into place, so a crash never leaves
a half-written checkpoint. Everything loads with ``weights_only=True`` or safetensors.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

MODEL_FILE = "model.safetensors"
STATE_FILE = "train_state.pt"
RECIPE_FILE = "recipe.resolved.yaml"


def save_checkpoint(
    root: Path,
    *,
    step: int,
    model: nn.Module | dict[str, torch.Tensor],
    state: dict[str, Any],
    recipe_yaml: str,
    keep: int,
) -> Path:
    """Write ``root/step-<step>`` and refresh ``root/last``; prune old step folders.

    ``model`` is the module or its full state dict (gathered from shards under FSDP): a checkpoint
    never depends on how many processes wrote it.
    """
    root.mkdir(parents=True, exist_ok=True)
    tmp = root / f".tmp-step-{step}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    weights = model.state_dict() if isinstance(model, nn.Module) else model
    tensors = {k: v.detach().contiguous().cpu() for k, v in weights.items()}
    save_file(tensors, str(tmp / MODEL_FILE), metadata={"step": str(step)})
    torch.save(state, tmp / STATE_FILE)
    (tmp / RECIPE_FILE).write_text(recipe_yaml)
    final = root / f"step-{step}"
    _replace_dir(tmp, final)
    last_tmp = root / ".tmp-last"
    shutil.rmtree(last_tmp, ignore_errors=True)
    shutil.copytree(final, last_tmp)
    _replace_dir(last_tmp, root / "last")
    _prune(root, keep)
    return final


def _replace_dir(src: Path, dst: Path) -> None:
    """Move ``src`` to ``dst``; the old ``dst`` survives as ``dst.old`` until the move is done."""
    old = dst.with_name(dst.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if dst.exists():
        os.replace(dst, old)
    os.replace(src, dst)
    shutil.rmtree(old, ignore_errors=True)


def _prune(root: Path, keep: int) -> None:
    steps = sorted(
        (p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()),
        key=lambda p: int(p.name[5:]),
    )
    for old in steps[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def find_last(root: Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (``last``, or ``last.old`` after a crash)."""
    for name in ("last", "last.old"):
        candidate = root / name
        if (candidate / STATE_FILE).is_file() and (candidate / MODEL_FILE).is_file():
            return candidate
    return None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """(model state dict, training state) of one checkpoint folder."""
    weights = load_file(str(path / MODEL_FILE))
    state = torch.load(path / STATE_FILE, map_location="cpu", weights_only=True)
    return weights, state
