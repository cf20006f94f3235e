"""`vmerge compare` on a tiny grid: every variant is trained and evaluated, the tables and the
Pareto plot are written, the teachers are evaluated once for all variants, and a second call
reruns nothing."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.data.toy_world.export import export_all
from mergekit_vision.data.toy_world.world import ToyWorldConfig
from mergekit_vision.eval.reuse import fingerprint, teacher_stamp
from mergekit_vision.recipe.io import load_recipe


@pytest.fixture(scope="module")
def eval_data(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compare_eval")
    export_all(out, config=ToyWorldConfig(image_size=64), num_samples=8, seed=3, num_per_class=1)
    return out


def evaluation_args(data: Path) -> list[str]:
    return [
        "--set", "eval={teachers: [clip, sam], heads: [clip_head, sam_head], "
                 "resolution: 64, calibration_samples: 2, pictures: 0, "
                 "pipeline_grid: 4}",
        "--set", f"eval.classification={{type: image_classes, "
                 f"params: {{root: {data}/image_classes}}}}",
        "--set", f"eval.semantic={{type: voc, params: {{root: {data}/voc}}}}",
        "--set", (f"eval.instances={{type: coco, params: {{images: {data}/coco/images, "
                  f"annotations: {data}/coco/annotations/instances.json}}}}"),
        "--set", "stages.0.steps=1", "--set", "stages.1.steps=2",
    ]  # fmt: skip


def test_compare_runs_each_variant_once_and_reuses_the_teacher_rows(
    eval_data, tiny_recipe_args, tmp_path
):
    recipe, *sets = tiny_recipe_args
    args = ["compare", recipe, *sets, *evaluation_args(eval_data), "--output", str(tmp_path)]
    grid = ["--grid", "replay=fixed_ratio,alternating"]
    assert main([*args, *grid]) == 0

    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["variant"] for r in rows] == ["replay=fixed_ratio", "replay=alternating"]
    for row in rows:
        assert 0 < float(row["clip_retention"]) and 0 < float(row["sam_retention"])
        # an alternating step runs one task: its stage-II steps still count
        assert float(row["step_time_s"]) > 0 and float(row["peak_memory_gib"]) > 0
    assert (tmp_path / "compare.md").read_text().count("\n") == 2 + len(rows)
    assert (tmp_path / "pareto.png").stat().st_size > 5000

    # one teacher evaluation, shared: both variants report the stored teacher rows
    stored = json.loads((tmp_path / "teacher_eval.json").read_text())
    for folder in ("replay_fixed_ratio", "replay_alternating"):
        models = json.loads((tmp_path / folder / "eval.json").read_text())["models"]
        for row in ("clip", "sam", "pipeline"):
            assert models[row] == stored["models"][row]
        assert models["merged"] != models["clip"]

    # resumable: a second call trains and evaluates nothing again
    stamps = {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/eval.json")}
    assert main([*args, *grid]) == 0
    assert {p: p.stat().st_mtime_ns for p in tmp_path.glob("*/eval.json")} == stamps

    # --finished-only trains nothing: a variant not run yet is left out of the table
    wider = ["--grid", "replay=fixed_ratio,alternating,teacher_drop", "--finished-only"]
    with pytest.warns(UserWarning, match="replay=teacher_drop: not finished, left out"):
        assert main([*args, *wider]) == 0
    assert not (tmp_path / "replay_teacher_drop").exists()
    rows = list(csv.DictReader((tmp_path / "compare.csv").open()))
    assert [r["variant"] for r in rows] == ["replay=fixed_ratio", "replay=alternating"]


def test_teacher_fingerprint_follows_what_the_teacher_rows_depend_on(
    eval_data, tiny_recipe_args, tiny_checkpoints
):
    recipe, *sets = tiny_recipe_args
    base = [s for s in sets if s != "--set"] + [
        a for a in evaluation_args(eval_data) if a != "--set"
    ]
    key = fingerprint(load_recipe(recipe, base))
    same = [
        "eval.pictures=3",
        "stages.1.steps=9",
        "eval.points_per_class=1",
        "eval.refined_mask_class=vote",
    ]
    for override in same:  # the merged model's settings do not touch the teacher rows
        assert fingerprint(load_recipe(recipe, [*base, override])) == key, override
    # teachers are measured at every side too (their resolution robustness)
    changes = ["eval.resolution=48", "eval.extra_resolutions=[48]", "seed=3"]
    for override in [*changes, "eval.templates=['a {}.']"]:
        assert fingerprint(load_recipe(recipe, [*base, override])) != key, override
    checkpoint = Path(tiny_checkpoints["sam"])
    checkpoint.write_bytes(checkpoint.read_bytes())  # a retrained teacher: new mtime
    assert fingerprint(load_recipe(recipe, base)) != key


def test_the_fingerprint_sees_a_folder_checkpoint_rewritten(tmp_path):
    folder = tmp_path / "depth_teacher"  # a save_pretrained folder, as the depth teacher loads
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"0" * 8)
    recipe = load_recipe(
        Path(__file__).resolve().parents[2] / "recipes" / "agglomerative_tiny.yaml",
        [f"teachers.depth.params.checkpoint={folder}"],
    )
    key, stamp = fingerprint(recipe), teacher_stamp(recipe, "depth")
    (folder / "model.safetensors").write_bytes(b"1" * 9)  # retrained in place
    assert fingerprint(recipe) != key
    assert teacher_stamp(recipe, "depth") != stamp


def test_the_fingerprint_follows_the_toy_section_that_draws_the_evaluation_scenes():
    toy = Path(__file__).resolve().parents[2] / "recipes" / "sam_clip_tiny.yaml"
    key = fingerprint(load_recipe(toy))
    assert fingerprint(load_recipe(toy, ["stages.1.steps=9"])) == key
    stamp = teacher_stamp(load_recipe(toy), "clip")  # the key of its stored probe features
    for override in ("toy.eval_seed=6", "toy.eval_samples=100"):  # same folders, other scenes
        assert fingerprint(load_recipe(toy, [override])) != key, override
        assert teacher_stamp(load_recipe(toy, [override]), "clip") != stamp, override


@pytest.mark.parametrize(
    ("replay", "conflict", "noop"),
    [
        ("alternating", "pcgrad", True),
        ("{type: proportional, params: {probabilities: {clip: 0.5, sam: 0.5}}}", "upgrad", True),
        ("alternating", "sum", False),
        ("fixed_ratio", "pcgrad", False),
    ],
)
def test_compare_flags_conflict_strategies_a_one_task_replay_makes_no_ops(
    tiny_recipe_args, replay, conflict, noop
):
    from mergekit_vision.tools.compare import conflict_noops

    recipe, *sets = tiny_recipe_args
    overrides = [s for s in sets if s != "--set"]
    spec = replay if replay.startswith("{") else f"{{type: {replay}}}"
    overrides += [f"stages.1.replay={spec}", f"stages.1.conflict={{type: {conflict}}}"]
    found = conflict_noops(load_recipe(recipe, overrides))
    assert bool(found) == noop
    if noop:
        assert "one task per step" in found[0] and conflict in found[0]


def test_a_failing_variant_is_reported_and_the_others_still_run(
    eval_data, tiny_recipe_args, tiny_checkpoints, tmp_path
):
    from mergekit_vision.tools.compare import compare

    recipe, *sets = tiny_recipe_args
    overrides = [s for s in [*sets, *evaluation_args(eval_data)] if s != "--set"]
    key = "teachers.sam.params.checkpoint"
    grid = [f"{key}={tmp_path / 'missing.pth'},{tiny_checkpoints['sam']}"]
    failed = r"(?s)missing\.pth failed: MissingPathsError.*does not exist"
    with pytest.raises(RuntimeError, match=failed):
        compare(Path(recipe), grid=grid, overrides=overrides, output=tmp_path / "grid")
    rows = list(csv.DictReader((tmp_path / "grid" / "compare.csv").open()))
    assert [r["variant"] for r in rows] == [f"{key}={tiny_checkpoints['sam']}"]


STUDY = (
    Path(__file__).resolve().parents[2] / "recipes" / "studies" / "agglomerative_techniques.yaml"
)
AGGLOMERATIVE_TINY = STUDY.parents[1] / "agglomerative_tiny.yaml"


def test_a_named_variants_file_is_one_axis_each_value_setting_several_keys():
    from mergekit_vision.tools.compare import parse_grid, read_variants

    axis = read_variants(STUDY)
    recipe = load_recipe(AGGLOMERATIVE_TINY)
    variants = parse_grid(["seed=0,1", "conflict=sum,pcgrad"], recipe, [axis])
    assert len(variants) == 2 * 2 * 5  # the named axis varies fastest
    assert variants[0].name == "seed=0,conflict=sum,technique=none"
    assert variants[6].name == "seed=0,conflict=pcgrad,technique=teacher_drop"
    built = {v.name: load_recipe(AGGLOMERATIVE_TINY, list(v.overrides)) for v in variants}
    none = built["seed=1,conflict=pcgrad,technique=none"]
    assert none.seed == 1 and [s.conflict.type for s in none.stages] == ["pcgrad", "pcgrad"]
    multi = built["seed=1,conflict=pcgrad,technique=multi_res"]
    changed = [
        name for name, task in multi.tasks.items() if task.resolution != none.tasks[name].resolution
    ]
    assert changed == ["clip", "dino_summary", "dino_spatial", "depth"]  # SAM keeps its 128 px
    heads = {name: r.heads["dino_adaptor"].type for name, r in built.items() if "seed=0,c" in name}
    assert heads == {  # every row but the ladder keeps the plain adaptor the study ran against
        f"seed=0,conflict={c},technique={t}": "ladder" if t == "ladder" else "adaptor"
        for c in ("sum", "pcgrad")
        for t in ("none", "teacher_drop", "online_norm", "multi_res", "ladder")
    }
    assert (
        built["seed=0,conflict=sum,technique=teacher_drop"].stages[1].replay.type == "teacher_drop"
    )


@pytest.mark.parametrize("study", sorted(STUDY.parent.glob("*.yaml")), ids=lambda path: path.stem)
def test_every_study_file_builds_each_variant_of_the_agglomerative_toy_recipe(study):
    from mergekit_vision.tools.compare import parse_grid, read_variants

    axis = read_variants(study)
    recipe = load_recipe(AGGLOMERATIVE_TINY)
    for variant in parse_grid([], recipe, [axis]):
        load_recipe(AGGLOMERATIVE_TINY, list(variant.overrides))  # raises on a bad key or value


def test_the_dino_head_study_spells_out_both_heads_whatever_the_default():
    from mergekit_vision.tools.compare import parse_grid, read_variants

    axis = read_variants(STUDY.parent / "agglomerative_dino_head.yaml")
    ladder = "{teacher: dino, layers: [0, 1, 2, 3], hidden_dim: 64, last_hidden_dim: 256}"
    for default in (
        "{type: adaptor, params: {teacher: dino}}",
        f"{{type: ladder, params: {ladder}}}",
    ):
        base = [f"heads.dino_adaptor={default}"]
        recipe = load_recipe(AGGLOMERATIVE_TINY, base)
        built = {
            v.name: load_recipe(AGGLOMERATIVE_TINY, [*base, *v.overrides])
            for v in parse_grid([], recipe, [axis])
        }
        assert {n: r.heads["dino_adaptor"].type for n, r in built.items()} == {
            "dino_head=adaptor": "adaptor",
            "dino_head=ladder": "ladder",
        }


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("axis: x\n", "expected 'axis: NAME'"),
        ("variants: {a: [1, 2]}\n", "variants.a"),
        ("variants: {}\n", "names no variant"),
    ],
)
def test_a_malformed_variants_file_says_what_is_wrong(tmp_path, text, problem):
    from mergekit_vision.errors import RecipeError
    from mergekit_vision.tools.compare import read_variants

    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match=problem):
        read_variants(path)
    with pytest.raises(RecipeError, match="file not found"):
        read_variants(tmp_path / "missing.yaml")
