import json
from pathlib import Path

import pytest
import yaml

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "recipes" / "sam_clip.yaml"


def test_validate_prints_resolved_recipe(capsys):
    assert main(["validate", str(REFERENCE)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["name"] == "sam_clip"
    assert printed["heads"]["clip_head"]["params"]["num_blocks"] == 3


def test_validate_broken_recipe_exits_2_listing_problems(tmp_path, capsys):
    data = yaml.safe_load(REFERENCE.read_text())
    data["tasks"]["clip"]["head"] = "nope"
    data["optimizer"]["typ"] = "sgd"
    path = tmp_path / "broken.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert main(["validate", str(path)]) == 2
    err = capsys.readouterr().err
    assert "2 problem(s)" in err
    assert "tasks.clip.head" in err and "optimizer.typ" in err
    assert "Traceback" not in err


def test_schema_is_json_schema(capsys):
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    assert "teachers" in schema["properties"] and "$defs" in schema


def test_plugins_lists_every_kind(capsys):
    assert main(["plugins"]) == 0
    out = capsys.readouterr().out
    for name in ("sam", "open_clip", "vitdet", "clip_head", "sam_head", "focal_dice", "sum"):
        assert name in out
    assert main(["plugins", "nonsense"]) == 2


def test_run_with_missing_paths_stops_before_work(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    out = tmp_path / "run"
    assert main(["run", str(REFERENCE), "--output", str(out)]) == 2
    err = capsys.readouterr().err
    assert "tasks.sam.data.params.root" in err and "does not exist" in err
    assert "tasks.clip.data.params.urls" in err
    assert "Traceback" not in err
    assert not out.exists()
    assert not (tmp_path / "hf").exists()  # a run that cannot start downloads no weights


@pytest.mark.parametrize(
    ("command", "message"),
    [
        (["toy", "data"], "no 'toy' section to prepare"),
        (["toy", "teachers"], "no 'toy' section to prepare"),
        (["toy", "sam-cost", "--variant", "steps=2"], "no 'toy' section: nothing to time"),
    ],
)
def test_toy_commands_refuse_a_recipe_without_a_toy_section(command, message, capsys):
    assert main([*command[:2], str(REFERENCE), *command[2:]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
