"""`vmerge plot`: one PNG whose lines carry exactly the numbers of the runs' metrics.jsonl."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.engine.run_folder import read_metrics
from mergekit_vision.tools.plot import plot_runs

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def lines_by_label(figure, title: str) -> dict[str, tuple[list, list]]:
    (ax,) = [ax for ax in figure.axes if ax.get_title() == title]
    return {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines}


def series(run: Path, key: str, stage: str | None = None) -> tuple[list, list]:
    records = [m for m in read_metrics(run) if key in m and stage in (None, m["stage"])]
    return [m["step"] for m in records], [m[key] for m in records]


def test_plot_of_a_trained_run(tiny_recipe_args, tmp_path):
    run = tmp_path / "run"
    short = ["--set", "stages.0.steps=2", "--set", "stages.1.steps=3"]
    assert main(["run", *tiny_recipe_args, *short, "--output", str(run)]) == 0
    output = tmp_path / "plots" / "curves.png"
    assert main(["plot", str(run), "--output", str(output)]) == 0
    assert output.read_bytes().startswith(PNG_SIGNATURE)

    figure = plot_runs([run])
    clip = lines_by_label(figure, "loss: clip")
    assert set(clip) == {"run head_probing", "run multitask_distillation"}
    for stage in ("head_probing", "multitask_distillation"):
        assert clip[f"run {stage}"] == series(run, "loss/clip", stage)
    sam = lines_by_label(figure, "loss: sam")
    assert sam == {"run multitask_distillation": series(run, "loss/sam", "multitask_distillation")}
    assert lines_by_label(figure, "learning rate") == {"run": series(run, "lr")}
    assert len(series(run, "lr")[0]) == 5
    assert "evaluation: merged model" not in [ax.get_title() for ax in figure.axes]


def write_run(folder: Path, records: list[dict], merged: dict | None = None) -> Path:
    folder.mkdir(parents=True)
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    if merged is not None:
        (folder / "eval.json").write_text(json.dumps({"models": {"merged": merged}}))
    return folder


def test_runs_are_overlaid_with_held_out_losses_and_evaluation(tmp_path):
    a = write_run(
        tmp_path / "a",
        [
            {"step": 1, "stage": "s", "loss/t": 1.0, "lr": 0.1},
            {"step": 2, "stage": "s", "loss/t": None, "lr": 0.1, "nonfinite_steps": 1},
            {"step": 3, "stage": "s", "loss/t": 0.5, "lr": 0.1, "heldout/t": 0.7},
        ],
        merged={"top1": 0.25, "miou": 0.5, "by_resolution": {"64": {"top1": 0.2}}},
    )
    b = write_run(
        tmp_path / "b",
        [{"step": 1, "stage": "s", "loss/t": 2.0, "lr": 0.2}],
        merged={"top1": 0.75},
    )
    figure = plot_runs([a, b])
    lines = lines_by_label(figure, "loss: t")
    assert set(lines) == {"a s", "a s held-out", "b s"}
    steps, losses = lines["a s"]
    assert steps == [1, 2, 3] and losses[0] == 1.0 and math.isnan(losses[1]) and losses[2] == 0.5
    assert lines["a s held-out"] == ([3], [0.7])
    assert lines["b s"] == ([1], [2.0])
    (ax,) = [ax for ax in figure.axes if ax.get_title() == "evaluation: merged model"]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["top1", "miou"]
    heights = {c.get_label(): [bar.get_height() for bar in c] for c in ax.containers}
    assert heights["a"] == [0.25, 0.5]
    assert heights["b"][0] == 0.75 and math.isnan(heights["b"][1])

    assert main(["plot", str(a), str(b)]) == 0  # default: curves.png in the working folder
    assert Path("curves.png").read_bytes().startswith(PNG_SIGNATURE)


def test_a_folder_without_metrics_is_a_clear_error(tmp_path, capsys):
    assert main(["plot", str(tmp_path)]) == 2
    assert "holds no metrics.jsonl" in capsys.readouterr().err


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default output of several runs lands in the working folder
