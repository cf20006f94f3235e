"""Reading weight files the same way everywhere: safetensors or ``torch.load(weights_only=True)``,
with errors that name the file, and loading them strictly with errors that say what does not fit."""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def load_strict(
    model: nn.Module,
    state_dict: Mapping[str, Tensor],
    *,
    what: str,
    describe: Callable[[Mapping[str, Tensor]], str] | None = None,
) -> None:
    """Load converted weights into ``model`` strictly, or say what does not fit.

    Args:
        model: the module to load into.
        state_dict: its weights, already converted to its layout.
        what: what was being loaded into what, the error's opening words (e.g. ``"SAM
            checkpoint sam.pth does not fit variant 'vit_b'"``).
        describe: what the weights look like instead (e.g. which variant), added to the error;
            called only when something does not fit.

    Raises:
        ValueError: ``"{what}: {problems}"`` (mis-shaped, then unexpected, then missing keys),
            followed by ``describe``'s sentence; nothing is loaded then.
    """
    problems = incompatible_keys(model, state_dict)
    if problems:
        described = f". {describe(state_dict)}." if describe is not None else ""
        raise ValueError(f"{what}: {problems}{described}")
    model.load_state_dict(state_dict, strict=True)
