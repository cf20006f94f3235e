"""Reading weight files the same way everywhere, and loading them strictly.

Every checkpoint, training state and weights file is read by :func:`read_weights`: safetensors,
or ``torch.load(weights_only=True)``, so nothing in a file is ever executed. Whatever goes wrong
(a pickle the weights-only loader refuses, a truncated or malformed file, weights that do not fit
the model) becomes one :class:`WeightsFileError` that names the file, what it should hold and
what to do, which the CLI prints without a traceback.
"""

from __future__ import annotations

import pickle
import re
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from mergekit_vision.errors import WeightsFileError

STATE_DICT = "a state dict (tensor names to tensors) saved as .safetensors or with torch.save"
REPLACE_FILE = "replace it with an intact copy (a download or copy may have been cut short)"


def read_weights(
    path: Path | str, *, what: str, expected: str = STATE_DICT, remedy: str = REPLACE_FILE
) -> dict[str, Any]:
    """A ``.safetensors`` file, or a ``torch.save`` file loaded with ``weights_only=True``.

    Args:
        path: the file.
        what: what the file is, for messages (e.g. ``"SAM checkpoint"``, ``"training state"``).
        expected: what it should hold, for messages.
        remedy: what the user can do when the file is damaged.

    Raises:
        FileNotFoundError: ``"{what} not found: {path}"``.
        WeightsFileError: the file is empty, truncated, malformed, refused by the weights-only
            loader, or holds something other than a dict.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")

    def fail(reason: str) -> WeightsFileError:
        problem = f"cannot read {what} {path}: {reason}"
        return WeightsFileError(path, problem=problem, expected=expected, remedy=remedy)

    if path.stat().st_size == 0:
        raise fail("the file is empty (0 bytes)")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch and safetensors raise many types for a bad file
        raise fail(_why_unreadable(error, safetensors=path.suffix == ".safetensors")) from error
    if not isinstance(loaded, Mapping):
        raise fail(f"it holds a {type(loaded).__name__}, not a dict")
    return dict(loaded)


def _why_unreadable(error: Exception, *, safetensors: bool) -> str:
    """The library's error as a reason a user can act on (its first sentence kept as evidence)."""
    if isinstance(error, pickle.UnpicklingError):
        wanted = re.search(r"GLOBAL (\S+)", str(error))
        asks = f"it asks to import {wanted.group(1)}, which" if wanted else "it holds objects that"
        return (
            f"PyTorch's weights-only loader refused it: {asks} no weights file needs, so it was "
            "altered or written by other code (nothing in it was run)"
        )
    first = str(error).split(". ")[0].strip() or type(error).__name__
    if safetensors:
        return f"it is truncated or not a safetensors file ({first})"
    if isinstance(error, EOFError):
        return "it ends before its data does (truncated)"
    return f"it is truncated or not a PyTorch file ({first})"


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
    path: Path | None = None,
    expected: str = STATE_DICT,
    remedy: str = "load it into the architecture it was saved from",
) -> None:
    """Load converted weights into ``model`` strictly, or say what does not fit.

    Args:
        model: the module to load into.
        state_dict: its weights, already converted to its layout.
        what: what was being loaded into what, the error's opening words (e.g. ``"SAM
            checkpoint sam.pth does not fit variant 'vit_b'"``).
        describe: what the weights look like instead (e.g. which variant), added to the error;
            called only when something does not fit.
        path: the file the weights were read from, if any: the error is then a
            :class:`WeightsFileError` that names it and ends with ``expected`` and ``remedy``.
        expected: what the file should hold (with ``path``).
        remedy: what the user can do (with ``path``).

    Raises:
        ValueError: ``"{what}: {problems}"`` (mis-shaped, then unexpected, then missing keys),
            followed by ``describe``'s sentence; nothing is loaded then.
    """
    problems = incompatible_keys(model, state_dict)
    if not problems:
        model.load_state_dict(state_dict, strict=True)
        return
    described = f". {describe(state_dict)}." if describe is not None else ""
    if path is None:
        raise ValueError(f"{what}: {problems}{described}")
    named = what if str(path) in what else f"{path}: {what}"
    problem = f"{named}: {problems}{described.removesuffix('.')}"
    raise WeightsFileError(path, problem=problem, expected=expected, remedy=remedy)


def check_loading_info(
    folder: Path,
    info: Mapping[str, Any],
    *,
    what: str,
    built_for: str,
    expected: str,
    remedy: str,
    shown: int = 4,
) -> None:
    """Refuse a transformers model whose ``from_pretrained`` left weights random.

    Asked with ``output_loading_info=True, ignore_mismatched_sizes=True``, ``from_pretrained``
    fills weights absent from a ``save_pretrained`` folder, or mis-shaped for its config, with
    random ones and reports them in ``info``; a model meant to start from the folder must not.

    Args:
        folder: the ``save_pretrained`` folder.
        info: ``from_pretrained``'s loading info (``missing_keys``; ``mismatched_keys`` as
            ``(key, shape in the file, shape built)``).
        what: the error's opening words (e.g. ``"SAM 2 folder f: its weights do not fit its
            config.json"``).
        built_for: what the built shapes follow (e.g. ``"config.json"``).
        expected: what the folder should hold.
        remedy: what the user can do.
        shown: keys of each kind named in the error.

    Raises:
        WeightsFileError: ``"{what} ({key} is (..) in the file, (..) for {built_for}; {key} is
            missing; {m} mis-shaped, {n} missing in all)"``, mis-shaped keys first.
    """
    missing, mismatched = info["missing_keys"], info["mismatched_keys"]
    if not missing and not mismatched:
        return
    problems = [
        f"{key} is {tuple(saved)} in the file, {tuple(built)} for {built_for}"
        for key, saved, built in sorted(mismatched)[:shown]
    ] + [f"{key} is missing" for key in sorted(missing)[:shown]]
    problem = (
        f"{what} ({'; '.join(problems)}; {len(mismatched)} mis-shaped, "
        f"{len(missing)} missing in all)"
    )
    raise WeightsFileError(folder, problem=problem, expected=expected, remedy=remedy)
