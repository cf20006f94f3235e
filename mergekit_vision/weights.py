"""Reading weight files the same way everywhere: safetensors or ``torch.load(weights_only=True)``,
with errors that name the file and say what a strict load would trip on."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import Tensor, nn


def read_checkpoint_file(path: Path, *, what: str) -> Mapping[str, object]:
    """A ``.safetensors`` or ``torch.save`` file (loaded with ``weights_only=True``)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} checkpoint not found: {path}")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise ValueError(f"cannot read {what} checkpoint {path}: {error}") from error
    if not isinstance(loaded, Mapping):
        raise ValueError(f"{what} checkpoint {path} holds a {type(loaded).__name__}, not a dict")
    return loaded


def incompatible_keys(model: nn.Module, weights: Mapping[str, Tensor], *, shown: int = 5) -> str:
    """What a strict load would trip on (missing, unexpected, mis-shaped keys); "" if nothing."""
    expected = model.state_dict()
    # Most telling first: a shape says which size differs, a foreign key what the file holds.
    problems = [
        f"shape of {k}: file {tuple(v.shape)}, model {tuple(expected[k].shape)}"
        for k, v in weights.items()
        if k in expected and v.shape != expected[k].shape
    ]
    problems += [f"unexpected {k}" for k in weights if k not in expected]
    problems += [f"missing {k}" for k in expected if k not in weights]
    more = f"; ... ({len(problems)} in all)" if len(problems) > shown else ""
    return "; ".join(problems[:shown]) + more
