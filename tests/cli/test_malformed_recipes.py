"""Malformed recipes as a user meets them: ``vmerge validate`` and ``vmerge run`` exit 2 with the
problem list (dotted path, YAML line, what was expected), never a traceback, before any work."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mergekit_vision.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
TINY = ROOT / "tests" / "recipes" / "tiny_sam_clip.yaml"


def tiny_with(tmp_path: Path, **changes) -> Path:
    data = yaml.safe_load(TINY.read_text())
    data.update(changes)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def refused(argv: list[str], capsys) -> str:
    """The error output of a command that must exit 2 without a traceback."""
    assert main(argv) == 2
    captured = capsys.readouterr()
    assert "Traceback" not in captured.out + captured.err
    return captured.err


def line_of(path: Path, prefix: str) -> int:
    lines = path.read_text(errors="replace").splitlines()
    return next(i for i, line in enumerate(lines, 1) if line.startswith(prefix))


@pytest.mark.parametrize("command", ["validate", "run"])
def test_stages_given_as_a_scalar(command, tmp_path, capsys):
    path = tiny_with(tmp_path, stages=3)
    out = tmp_path / "run"
    argv = [command, str(path), *(["--output", str(out)] if command == "run" else [])]
    err = refused(argv, capsys)
    assert f"stages (line {line_of(path, 'stages:')}): Input should be a valid list (got 3)" in err
    assert not out.exists()


def test_a_file_with_bytes_that_are_not_utf8(tmp_path, capsys):
    path = tmp_path / "latin1.yaml"
    text = TINY.read_text().replace("name: tiny_sam_clip", "name: café")
    path.write_bytes(text.encode("latin-1"))
    err = refused(["validate", str(path)], capsys)
    assert f"(line {line_of(path, 'name:')}): the file is not UTF-8 text: byte 0xe9" in err
    assert "save the recipe with UTF-8 encoding" in err


@pytest.mark.parametrize("command", ["validate", "run"])
def test_a_seed_beyond_what_torch_takes(command, tmp_path, capsys):
    path = tiny_with(tmp_path, seed=2**70)
    out = tmp_path / "run"
    argv = [command, str(path), *(["--output", str(out)] if command == "run" else [])]
    err = refused(argv, capsys)
    assert f"seed (line {line_of(path, 'seed:')}): Input should be less than or equal to" in err
    assert not out.exists()


@pytest.mark.parametrize(
    ("override", "path", "expected"),
    [
        ("seed=-1", "seed", "greater than or equal to 0"),
        ("tasks.clip.batch_size=0", "tasks.clip.batch_size", "greater than or equal to 1"),
        ("tasks.clip.batch_size=10000000", "tasks.clip.batch_size", "less than or equal to"),
        ("tasks.clip.resolution=[]", "tasks.clip.resolution", "a list of at least one"),
        ("tasks.sam.resolution=0", "tasks.sam.resolution", "must lie in [8, 16384] px (got 0)"),
        ("tasks.clip.num_workers=100000", "tasks.clip.num_workers", "less than or equal to"),
        ("tasks.clip.weight=.inf", "tasks.clip.weight", "finite number"),
        ("stages.0.lr=.nan", "stages.0.lr", "finite number"),
        ("stages.0.steps=0", "stages.0.steps", "greater than or equal to 1"),
        ("stages.0.steps=99999999999", "stages.0.steps", "less than or equal to"),
        ("stages.1.lr_mult.backbone=-1", "stages.1.lr_mult.backbone", "greater than or equal"),
        ("stages.1.resolution={clip: [64, 7]}", "stages.1.resolution.clip", "(got 7 in the list)"),
        ("optimizer.betas=[1.5, 0.9]", "optimizer.betas.0", "less than 1"),
        ("optimizer.eps=-1", "optimizer.eps", "greater than or equal to 0"),
        ("schedule.min_lr_ratio=2", "schedule.min_lr_ratio", "less than or equal to 1"),
        (
            "tasks.sam.prompts={points_per_image: 0, boxes_per_image: 0}",
            "tasks.sam.prompts",
            "no prompts",
        ),
        (
            "tasks.clip.data.params.num_samples=1180591620717411303424",
            "tasks.clip.data.params.num_samples",
            "out of range: numbers in a recipe fit in 64 bits",
        ),
        (
            "heads.clip_head.params.num_blocks=.nan",
            "heads.clip_head.params.num_blocks",
            "finite number",
        ),
    ],
)
def test_numbers_outside_what_their_code_takes(override, path, expected, capsys):
    err = refused(["validate", str(TINY), "--set", override], capsys)
    problem = next(line for line in err.splitlines() if line.startswith(f"  - {path} "))
    assert expected in problem


def test_params_a_plugin_fails_to_check_are_reported_at_their_path(capsys):
    # vitdet computes ``native_size % patch_size`` in its check; a 0 must not escape as a crash
    err = refused(["validate", str(TINY), "--set", "student.params.patch_size=0"], capsys)
    assert "  - student.params" in err


def test_a_dotted_or_numeric_name_with_invalid_params_is_reported(tmp_path, capsys):
    data = yaml.safe_load(TINY.read_text())
    data["teachers"]["a.b"] = {"type": "nope"}
    data["teachers"][7] = {"type": "sam", "params": {"typo": 1}}
    data["tasks"]["clip"]["teacher"] = "missing"
    path = tmp_path / "names.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    err = refused(["validate", str(path)], capsys)
    assert "teachers.a.b.type" in err and "unknown teachers plugin 'nope'" in err
    assert "teachers.7.params.typo" in err
    assert "unknown teacher 'missing'; defined: sam, clip, a.b, 7" in err


# The "billion laughs": 9 levels of 9 aliases, 9**9 strings from a few hundred bytes.
BOMB = "\n".join(
    ['a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]']
    + [
        f"{n}: &{n} [{', '.join(['*' + p] * 9)}]"
        for p, n in zip("abcdefgh", "bcdefghi", strict=True)
    ]
    + ["name: bomb"]
)

# Run in a fresh process so that its peak memory is this command's alone; the plugins are
# imported first (by validating a good recipe) so that the measured growth is the bomb's.
MEASURE = """
import json, resource, sys, time
from mergekit_vision.cli.main import main
main(["validate", sys.argv[1]])
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start = time.perf_counter()
code = main(["validate", sys.argv[2]])
seconds = time.perf_counter() - start
grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before
print(json.dumps({"code": code, "seconds": seconds, "grown_kib": grown}))
"""


def test_a_yaml_alias_bomb_is_refused_quickly_in_little_memory(tmp_path):
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text(BOMB)
    assert bomb.stat().st_size < 500
    done = subprocess.run(
        [sys.executable, "-c", MEASURE, str(TINY), str(bomb)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert "Traceback" not in done.stderr, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["code"] == 2
    assert result["seconds"] < 5
    assert result["grown_kib"] * 1024 < 500e6  # ru_maxrss is in KiB on Linux
    assert "expands to more than 100,000 values through YAML aliases" in done.stderr


def test_an_alias_bomb_in_a_set_value_is_refused(capsys):
    value = "{" + ", ".join(BOMB.splitlines()[:-1]) + "}"  # the same, as one flow mapping
    err = refused(["validate", str(TINY), "--set", f"name={value}"], capsys)
    assert "expands to more than 100,000 values" in err


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("a: &a [*a]\nname: x\n", "the alias *a is inside the value its anchor &a names"),
        ("name: " + "[" * 2000 + "]" * 2000 + "\n", "values nest more than 64 levels deep"),
        ("seed: " + "1" * 5000 + "\n", "an integer of 5000 digits"),
    ],
    ids=["recursive-alias", "deep-nesting", "long-integer"],
)
def test_other_documents_that_would_exhaust_the_reader(text, expected, tmp_path, capsys):
    path = tmp_path / "odd.yaml"
    path.write_text(text)
    err = refused(["validate", str(path)], capsys)
    assert "(line 1): " + expected in err


def test_aliases_within_the_bound_work_and_each_place_keeps_its_own_copy(tmp_path, capsys):
    data = yaml.safe_load(TINY.read_text())
    tasks = data["tasks"]
    tasks["sam"]["data"] = tasks["clip"]["data"]  # one object: dumped as an anchor and an alias
    path = tmp_path / "shared.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    assert "&id001" in path.read_text() and "*id001" in path.read_text()
    override = "tasks.sam.data.params.num_samples=5"
    assert main(["validate", str(path), "--set", override]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["tasks"]["sam"]["data"]["params"]["num_samples"] == 5
    assert printed["tasks"]["clip"]["data"]["params"]["num_samples"] == 8


@pytest.mark.parametrize(
    "argv",
    [["compare", str(TINY), "--no-such-option"], ["run"], ["no-such-command"]],
)
def test_command_line_mistakes_are_usage_errors_not_tracebacks(argv, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "Error:" in err and "Usage: vmerge" in err and "Traceback" not in err
