"""Loading a run folder back: the merged model equals what training saved."""

from __future__ import annotations

import pytest
import torch
from safetensors.torch import load_file

from mergekit_vision.cli.main import main
from mergekit_vision.export.loading import find_checkpoint, load_run


def test_loaded_model_holds_the_checkpoint_weights(tiny_run, tiny_run_dir):
    saved = load_file(str(tiny_run_dir / "checkpoints" / "last" / "model.safetensors"))
    own = tiny_run.model.state_dict()
    assert set(own) == set(saved)
    assert all(torch.equal(own[k], saved[k]) for k in saved)
    assert tiny_run.random_teachers == set()  # both tiny checkpoints exist


def test_missing_teacher_checkpoints_give_random_teachers_but_the_same_model(tiny_run, tmp_path):
    checkpoint = find_checkpoint(tiny_run.run_dir)
    copy = tmp_path / "moved"
    copy.mkdir()
    recipe = (checkpoint / "recipe.resolved.yaml").read_text()
    for name in ("sam_tiny.pth", "clip_tiny.bin"):
        recipe = recipe.replace(name, f"gone-{name}")
    (copy / "recipe.resolved.yaml").write_text(recipe)
    (copy / "model.safetensors").write_bytes((checkpoint / "model.safetensors").read_bytes())
    moved = load_run(copy)  # a checkpoint folder itself is accepted
    assert moved.random_teachers == {"sam", "clip"}
    own, original = moved.model.state_dict(), tiny_run.model.state_dict()
    assert all(torch.equal(own[k], original[k]) for k in original)
    with pytest.raises(FileNotFoundError, match="teacher 'clip'"):
        moved.require_teacher("clip", why="the text tower")


def test_export_cli_user_errors_exit_2(tmp_path, tiny_run_dir, capsys):
    assert main(["export", str(tmp_path), "--format", "sam"]) == 2
    assert "not a run folder" in capsys.readouterr().err
    assert main(["export", str(tiny_run_dir), "--format", "tflite"]) == 2
    assert "formats: sam, open_clip, safetensors, hf, onnx" in capsys.readouterr().err
