"""One reader for every weights file and one strict load for every adapter: errors name the file,
what was loaded, each key that does not fit, and what to do."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from mergekit_vision.weights import (
    REPLACE_FILE,
    STATE_DICT,
    WeightsFileError,
    load_strict,
    read_weights,
)


def test_loads_fitting_weights():
    model = nn.Linear(3, 2)
    weights = {"weight": torch.ones(2, 3), "bias": torch.zeros(2)}
    load_strict(model, weights, what="linear from a test")
    assert torch.equal(model.weight, torch.ones(2, 3))


def test_error_names_what_and_every_kind_of_key_and_loads_nothing():
    model = nn.Linear(3, 2)
    before = model.weight.clone()
    weights = {"weight": torch.ones(2, 4), "scale": torch.ones(1)}
    described = []
    with pytest.raises(ValueError) as error:
        load_strict(
            model,
            weights,
            what="x.pth does not fit 'linear'",
            describe=lambda w: described.append(w) or "it looks like a scaled linear",
        )
    assert str(error.value) == (
        "x.pth does not fit 'linear': shape of weight: file (2, 4), model (2, 3); "
        "unexpected scale; missing bias. it looks like a scaled linear."
    )
    assert described == [weights] and torch.equal(model.weight, before)


class RunsAShellCommand:
    """What a tampered pickle holds: unpickling it would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_pickle_that_would_run_code_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "train_state.pt"
    torch.save({"step": 3, "hook": RunsAShellCommand(marker)}, path)
    with pytest.raises(WeightsFileError) as error:
        read_weights(path, what="training state", expected="a training state", remedy="retrain")
    message = str(error.value)
    assert message.startswith(f"cannot read training state {path}: ")
    assert "weights-only loader refused it: it asks to import posix.system" in message
    assert message.endswith("Expected a training state. To fix: retrain.")
    assert error.value.path == path and not marker.exists()


def written(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize(
    ("name", "cut", "reason"),
    [
        ("model.safetensors", 0.5, "it is truncated or not a safetensors file (Error while"),
        ("model.safetensors", 0.0, "the file is empty (0 bytes)"),
        ("sam.pth", 0.5, "it is truncated or not a PyTorch file ("),
        ("sam.pth", 0.0, "the file is empty (0 bytes)"),
    ],
)
def test_truncated_files_name_the_file_and_say_what_to_do(tmp_path, name, cut, reason):
    whole = tmp_path / f"whole-{name}"
    weights = {"weight": torch.ones(64, 64)}
    if name.endswith(".safetensors"):
        save_file(weights, str(whole))
    else:
        torch.save(weights, whole)
    data = whole.read_bytes()
    path = written(tmp_path / name, data[: int(len(data) * cut)])
    with pytest.raises(WeightsFileError) as error:
        read_weights(path, what="SAM checkpoint")
    assert str(error.value).startswith(f"cannot read SAM checkpoint {path}: {reason}")
    assert str(error.value).endswith(f"Expected {STATE_DICT}. To fix: {REPLACE_FILE}.")
    assert read_weights(whole, what="SAM checkpoint").keys() == {"weight"}


def test_text_files_lists_and_absent_files(tmp_path):
    text = written(tmp_path / "notes.pth", b"these are not weights")
    with pytest.raises(WeightsFileError, match="truncated or not a PyTorch file"):
        read_weights(text, what="student checkpoint")
    listed = tmp_path / "list.pt"
    torch.save([torch.ones(2)], listed)
    with pytest.raises(WeightsFileError, match=r"list\.pt: it holds a list, not a dict"):
        read_weights(listed, what="student checkpoint")
    with pytest.raises(FileNotFoundError, match="student checkpoint not found: .*absent.pt"):
        read_weights(tmp_path / "absent.pt", what="student checkpoint")


def test_weights_that_do_not_fit_name_the_file_they_came_from(tmp_path):
    path = tmp_path / "x.pth"
    with pytest.raises(WeightsFileError) as error:
        load_strict(
            nn.Linear(3, 2),
            {"weight": torch.ones(2, 3)},
            what="linear weights do not fit",
            path=path,
            expected="a linear layer's weights",
            remedy="train it again",
        )
    assert str(error.value) == (
        f"{path}: linear weights do not fit: missing bias. Expected a linear layer's weights. "
        "To fix: train it again."
    )
