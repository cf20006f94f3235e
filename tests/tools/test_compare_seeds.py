"""Folding a compare grid over its seed axis: means and standard deviations by hand."""

from __future__ import annotations

import csv

import pytest

from mergekit_vision.tools.compare_seeds import over_seeds, setting, write_seed_tables


def row(variant, clip, sam, dino=None):
    return {"variant": variant, "clip_retention": clip, "sam_retention": sam,
            "dino_retention": dino, "step_time_s": 1.0}  # fmt: skip


@pytest.mark.parametrize(
    ("variant", "expected"),
    [
        ("seed=1,technique=ladder", "technique=ladder"),
        ("technique=ladder,seed=2,conflict=sum", "technique=ladder,conflict=sum"),
        ("seed=0", "recipe"),
        ("technique=none", None),
        ("myseed=3", None),
    ],
)
def test_the_setting_is_the_variant_without_its_seed(variant, expected):
    assert setting(variant) == expected


def test_each_setting_gets_the_mean_and_spread_of_its_seeds(tmp_path):
    rows = [
        row("seed=0,technique=none", 1.0, 0.9, 0.5),
        row("seed=0,technique=ladder", 0.8, 1.0, None),
        row("seed=1,technique=none", 0.8, 0.7, 0.7),
        row("seed=2,technique=none", 0.9, 0.8, 0.6),
    ]
    none, ladder = over_seeds(rows)
    assert none["variant"] == "technique=none" and none["seeds"] == 3
    assert none["clip_retention"] == pytest.approx(0.9)
    assert none["clip_retention_sd"] == pytest.approx(0.1)  # sample sd of 1.0, 0.8, 0.9
    assert none["dino_retention"] == pytest.approx(0.6)
    assert ladder["seeds"] == 1 and ladder["sam_retention"] == 1.0
    assert ladder["sam_retention_sd"] is None and "dino_retention" not in ladder

    write_seed_tables(rows, tmp_path)
    table = (tmp_path / "compare_seeds.md").read_text().splitlines()
    assert table[2].startswith("| technique=none | 3 | 0.900 ± 0.100 | 0.800 ± 0.100 |")
    assert "| technique=ladder | 1 | 0.800 | 1.000 | - |" in table[3]
    assert len(list(csv.DictReader((tmp_path / "compare_seeds.csv").open()))) == 2
    assert (tmp_path / "pareto_seeds.png").stat().st_size > 5000


def test_a_grid_without_seeds_writes_no_seed_tables(tmp_path):
    assert write_seed_tables([row("technique=none", 1.0, 1.0)], tmp_path) == []
    assert not (tmp_path / "compare_seeds.md").exists()
