"""An outside package's teacher, installed with pip, is found by entry point and used in a run."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.contracts import TEACHERS
from mergekit_vision.registry import UnknownPluginError

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "examples" / "vmerge-mean-color-teacher"
RECIPE = ROOT / "tests" / "recipes" / "outside_teacher.yaml"


@pytest.fixture
def installed_plugin(tmp_path, monkeypatch):
    site = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(site),
            str(EXAMPLE),
        ],
        check=True,
    )
    monkeypatch.syspath_prepend(str(site))
    TEACHERS.reset_entry_points()
    yield site
    monkeypatch.undo()
    sys.modules.pop("vmerge_mean_color", None)
    TEACHERS.reset_entry_points()


def test_unknown_before_install():
    TEACHERS.reset_entry_points()
    with pytest.raises(UnknownPluginError, match="mean_color"):
        TEACHERS.get("mean_color")


def test_outside_teacher_runs_in_a_recipe(installed_plugin, tmp_path, capsys):
    entry = TEACHERS.entry("mean_color")
    assert entry.source == "vmerge-mean-color-teacher"
    assert main(["plugins", "teachers"]) == 0
    assert "vmerge-mean-color-teacher" in capsys.readouterr().out

    out = tmp_path / "run"
    assert main(["run", str(RECIPE), "--output", str(out)]) == 0
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]
    assert {m["stage"] for m in metrics} == {"probe", "distill"}
    assert metrics[-1]["loss/colors"] < metrics[0]["loss/colors"]
    assert (out / "checkpoints" / "last" / "model.safetensors").is_file()
