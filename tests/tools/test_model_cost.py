"""``vmerge profile``: parameters and FLOPs of the merged model vs the teachers, per task."""

from __future__ import annotations

import json

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.tools.model_cost import profile_recipe

from ..conftest import TINY_RECIPE


@pytest.fixture(scope="module")
def profiled(tiny_checkpoints):
    overrides = [f"teachers.{n}.params.checkpoint={p}" for n, p in tiny_checkpoints.items()]
    return profile_recipe(TINY_RECIPE, overrides=overrides)


def test_every_task_resolution_is_profiled(profiled):
    rows = [(row["task"], row["resolution"]) for row in profiled["tasks"]]
    assert rows == [("clip", 64), ("clip", 48), ("sam", 64)]
    assert not profiled["random_weights"]
    for row in profiled["tasks"]:
        assert row["teacher_gflops"] > 0 and row["student_gflops"] > 0 and row["head_gflops"] > 0
        assert row["merged_gflops"] == pytest.approx(row["student_gflops"] + row["head_gflops"])


def test_student_flops_grow_with_resolution(profiled):
    by_size = {row["resolution"]: row["student_gflops"] for row in profiled["tasks"]}
    assert by_size[64] > 1.5 * by_size[48]


def test_only_the_teacher_parts_that_ran_count(profiled):
    # CLIP's image embedding does not run its text tower: fewer parameters used than it holds
    clip = next(row for row in profiled["tasks"] if row["teacher"] == "clip")
    assert 0 < profiled["teachers_used_params_m"] < profiled["teachers_params_m"]
    assert clip["teacher_params_m"] < profiled["teachers_params_m"]


def test_totals_count_the_student_once_per_resolution(profiled):
    rows = profiled["tasks"]
    student = {row["resolution"]: row["student_gflops"] for row in rows}
    merged = sum(student.values()) + sum(row["head_gflops"] for row in rows)
    # each teacher once per side it sees: the CLIP teacher resizes 64 and 48 px to its own side
    sides = {(row["teacher"], row["teacher_side"]): row["teacher_gflops"] for row in rows}
    assert len(sides) == 2
    teachers = sum(sides.values())
    assert profiled["total_gflops"]["merged"] == pytest.approx(merged)
    assert profiled["total_gflops"]["teachers"] == pytest.approx(teachers)
    assert profiled["merged_flops_ratio"] == pytest.approx(merged / teachers)


def test_cli_prints_and_writes_json(tiny_recipe_args, tmp_path, capsys):
    out = tmp_path / "profile.json"
    assert main(["profile", *tiny_recipe_args, "--json", str(out)]) == 0
    saved = json.loads(out.read_text())
    assert [row["task"] for row in saved["tasks"]] == ["clip", "clip", "sam"]
    assert "teachers separately" in capsys.readouterr().out
