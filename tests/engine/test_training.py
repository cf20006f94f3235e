"""End-to-end training through the CLI on tiny real-class teachers (Sam, open_clip CLIP)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergekit_vision.cli.main import main


def read_metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def mean(values: list[float]) -> float:
    return sum(values) / len(values)


@pytest.fixture(scope="module")
def full_run(tmp_path_factory, tiny_checkpoints) -> Path:
    out = tmp_path_factory.mktemp("full") / "run"
    args = [
        str(Path(__file__).resolve().parents[1] / "recipes" / "tiny_sam_clip.yaml"),
        "--set", f"teachers.sam.params.checkpoint={tiny_checkpoints['sam']}",
        "--set", f"teachers.clip.params.checkpoint={tiny_checkpoints['clip']}",
    ]  # fmt: skip
    assert main(["run", *args, "--output", str(out)]) == 0
    return out


def test_stage_one_then_two_lower_both_task_losses(full_run):
    metrics = read_metrics(full_run)
    assert [m["step"] for m in metrics] == list(range(1, 19))
    probing = [m for m in metrics if m["stage"] == "head_probing"]
    distill = [m for m in metrics if m["stage"] == "multitask_distillation"]
    assert len(probing) == 8 and len(distill) == 10
    assert all("loss/sam" not in m for m in probing)  # stage I runs the CLIP task only
    clip = [m["loss/clip"] for m in metrics]
    sam = [m["loss/sam"] for m in distill]
    assert mean(clip[-3:]) < 0.8 * mean(clip[:3])
    assert mean(sam[-3:]) < mean(sam[:3])
    # the stage II LR multiplier reaches the optimiser: the first group is the backbone
    assert distill[0]["lr"] == pytest.approx(1e-3 * 0.3)


def test_run_folder_layout(full_run):
    assert (full_run / "recipe.resolved.yaml").is_file()
    checkpoints = sorted(p.name for p in (full_run / "checkpoints").iterdir())
    # every 4 steps, keep 2, plus the final step and "last"
    assert checkpoints == ["last", "step-16", "step-18"]
    last = full_run / "checkpoints" / "last"
    assert {p.name for p in last.iterdir()} == {
        "model.safetensors",
        "train_state.pt",
        "recipe.resolved.yaml",
    }


def test_resume_gives_the_same_metrics(full_run, tiny_recipe_args, tmp_path):
    out = tmp_path / "interrupted"
    assert main(["run", *tiny_recipe_args, "--output", str(out), "--max-steps", "11"]) == 0
    assert len(read_metrics(out)) == 11
    assert main(["run", *tiny_recipe_args, "--output", str(out), "--resume"]) == 0
    resumed, straight = read_metrics(out), read_metrics(full_run)
    assert [m["step"] for m in resumed] == [m["step"] for m in straight]
    for a, b in zip(resumed, straight, strict=True):
        for key in ("loss/clip", "loss/sam", "lr"):
            if key in b:
                assert a[key] == pytest.approx(b[key], rel=1e-5, abs=1e-7), (a["step"], key)


def test_a_second_run_into_the_same_folder_is_refused(full_run, tiny_recipe_args, capsys):
    assert main(["run", *tiny_recipe_args, "--output", str(full_run)]) == 2
    assert "--resume" in capsys.readouterr().err


def test_malformed_checkpoint_stops_with_the_field_named(tiny_recipe_args, tmp_path, capsys):
    bad = tmp_path / "bad.pth"
    bad.write_bytes(b"not a checkpoint")
    args = [*tiny_recipe_args, "--set", f"teachers.sam.params.checkpoint={bad}"]
    assert main(["run", *args, "--output", str(tmp_path / "run")]) == 2
    err = capsys.readouterr().err
    assert "teachers.sam" in err and str(bad) in err
    assert "Traceback" not in err
