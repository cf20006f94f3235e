"""Damaged weights files as a user meets them: every command that reads one prints one message
naming the file, what it should hold and what to do, and exits 2 without a traceback."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file, save_file

from mergekit_vision.cli.main import main
from mergekit_vision.export.sam import export_sam, load_exported_sam
from mergekit_vision.weights import WeightsFileError

TO_FIX = "To fix: use an intact copy of the checkpoint folder"


class RunsAShellCommand:
    """What a tampered pickle holds: unpickling it would run ``touch <marker>``."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def copy_of(run_dir: Path, folder: Path) -> tuple[Path, Path]:
    """A copy of the run (so the shared one stays intact) and its last checkpoint."""
    copy = folder / "run"
    shutil.copytree(run_dir, copy)
    return copy, copy / "checkpoints" / "last"


def truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def one_message(capsys) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    return " ".join(err.split())  # the console wraps long lines


def test_resume_from_a_tampered_training_state_runs_nothing(
    tiny_run_dir, tiny_recipe_args, tmp_path, capsys
):
    run, last = copy_of(tiny_run_dir, tmp_path)
    marker = tmp_path / "ran"
    saved = torch.load(last / "train_state.pt", weights_only=True)
    torch.save({**saved, "hook": RunsAShellCommand(marker)}, last / "train_state.pt")
    args = ["run", *tiny_recipe_args, "--output", str(run), "--resume", "--max-steps", "4"]
    assert main(args) == 2
    message = one_message(capsys)
    assert f"cannot read training state {last / 'train_state.pt'}: " in message
    assert "refused it: it asks to import posix.system" in message
    assert "nothing in it was run" in message and TO_FIX in message
    assert not marker.exists()


@pytest.mark.parametrize("command", ["export", "eval", "predict"])
def test_a_truncated_model_file_in_a_run_folder(tiny_run_dir, tmp_path, capsys, command):
    run, last = copy_of(tiny_run_dir, tmp_path)
    truncate(last / "model.safetensors")
    image = tmp_path / "image.png"
    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(image)
    args = {
        "export": ["export", str(run), "--format", "sam"],
        "eval": ["eval", str(run)],
        "predict": ["predict", str(run), str(image), "--points", "1,1"],
    }[command]
    assert main(args) == 2
    message = one_message(capsys)
    path = last / "model.safetensors"
    assert f"cannot read merged model weights {path}: it is truncated or not a" in message
    assert "Expected the merged model (student and heads)" in message and TO_FIX in message


def test_weights_of_another_model_say_which_keys_and_what_to_do(tiny_run_dir, tmp_path, capsys):
    run, last = copy_of(tiny_run_dir, tmp_path)
    weights = load_file(str(last / "model.safetensors"))
    dropped = sorted(weights)[0]
    save_file({k: v for k, v in weights.items() if k != dropped}, str(last / "model.safetensors"))
    assert main(["export", str(run), "--format", "sam"]) == 2
    message = one_message(capsys)
    assert f"merged model weights {last / 'model.safetensors'} do not fit" in message
    assert f"missing {dropped}" in message and "use the recipe the run was trained with" in message


def test_a_truncated_teacher_checkpoint_stops_the_run_before_training(
    tiny_checkpoints, tiny_recipe_args, tmp_path, capsys
):
    broken = tmp_path / "sam_tiny.pth"
    broken.write_bytes(tiny_checkpoints["sam"].read_bytes()[:1000])
    args = ["run", *tiny_recipe_args, "--set", f"teachers.sam.params.checkpoint={broken}"]
    assert main([*args, "--output", str(tmp_path / "run")]) == 2
    message = one_message(capsys)
    assert f"cannot read SAM checkpoint {broken}: it is truncated or not a PyTorch file" in message
    assert message.startswith("error: teachers.sam")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_a_truncated_sam_export(tiny_run, tmp_path):
    export_sam(tiny_run, tmp_path)
    truncate(tmp_path / "sam.pth")
    with pytest.raises(WeightsFileError, match="cannot read exported SAM weights .*export the run"):
        load_exported_sam(tmp_path)
