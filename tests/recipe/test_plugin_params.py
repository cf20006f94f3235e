"""A validated recipe holds typed plugin params and app sections, checked once, dumped in full."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from mergekit_vision.errors import RecipeError
from mergekit_vision.recipe.app import APPS
from mergekit_vision.recipe.io import dump_recipe, load_recipe, validate_recipe
from mergekit_vision.recipe.schema import ConflictSpec, Recipe, StageSpec
from mergekit_vision.registry import ALL_REGISTRIES

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "recipes" / "sam_clip.yaml"
TOY = ROOT / "recipes" / "sam_clip_tiny.yaml"


def issues_of(data: dict) -> list[str]:
    with pytest.raises(RecipeError) as err:
        validate_recipe(data)
    return [str(issue) for issue in err.value.issues]


def test_every_plugin_entry_holds_its_plugins_params():
    recipe = load_recipe(REFERENCE)
    specs = [*recipe.teachers.values(), recipe.student, *recipe.heads.values()]
    specs += [s for t in recipe.tasks.values() for s in (t.loss, t.data)]
    specs += [s for st in recipe.stages for s in (st.replay, st.conflict, st.weighting)]
    for spec in specs:
        expected = ALL_REGISTRIES[spec.kind].params_model(spec.type)
        assert type(spec.params) is expected, (spec.kind, spec.type)


def test_model_validate_of_plain_data_types_the_params_and_dumps_the_same():
    recipe = load_recipe(TOY)
    again = Recipe.model_validate(yaml.safe_load(dump_recipe(recipe)))
    assert again.heads["clip_head"].params.pooling == "max"
    assert again.toy.world == recipe.toy.world
    assert dump_recipe(again) == dump_recipe(recipe)


def test_stage_strategies_default_in_the_schema():
    stage = StageSpec(name="s", steps=1, tasks=["t"], train=["backbone"], lr=1e-3)
    assert (stage.replay.type, stage.conflict.type, stage.weighting.type) == (
        "fixed_ratio",
        "sum",
        "static",
    )
    for spec in (stage.replay, stage.conflict, stage.weighting):
        assert type(spec.params) is ALL_REGISTRIES[spec.kind].params_model(spec.type)
    pcgrad = ConflictSpec(type="pcgrad")
    assert type(pcgrad.params) is ALL_REGISTRIES["conflict"].params_model("pcgrad")


def test_app_section_is_typed_by_its_app_and_absent_is_none():
    assert "toy" in APPS
    toy = load_recipe(TOY)
    assert isinstance(toy.toy, APPS.params_model("toy"))
    assert list(toy.app_sections()) == ["toy"]
    plain = load_recipe(REFERENCE)
    assert plain.toy is None and plain.app_sections() == {}
    assert dump_recipe(plain).endswith("toy: null\n")


def test_app_section_problems_name_their_path_and_valid_keys():
    data = yaml.safe_load(TOY.read_text())
    data["toy"]["world"] = {"x": 1}
    (issue,) = issues_of(data)
    assert issue.startswith("toy.world.x: unknown key 'x'; valid keys here: image_size, colours")


def test_unknown_top_level_key_lists_fields_and_apps():
    data = yaml.safe_load(REFERENCE.read_text())
    data["toyy"] = {}
    (issue,) = issues_of(data)
    assert issue.startswith("toyy: unknown key 'toyy'; valid keys here: name, seed")
    assert issue.endswith("distributed, data, eval, toy")


@pytest.mark.parametrize(
    ("edit", "path", "message"),
    [
        (
            lambda d: d["heads"]["clip_head"]["params"].update(teacher="clp"),
            "heads.clip_head.params.teacher",
            "unknown teacher 'clp'; defined: sam, clip",
        ),
        (
            lambda d: d["student"]["params"].update(init_from="sma"),
            "student.params.init_from",
            "unknown teacher 'sma'; defined: sam, clip",
        ),
        (
            lambda d: d["stages"][1].update(
                replay={"type": "proportional", "params": {"probabilities": {"clip": 1, "sm": 1}}}
            ),
            "stages.1.replay.params.probabilities.sm",
            "unknown task 'sm'; defined: clip, sam",
        ),
    ],
)
def test_names_declared_by_plugin_params_must_exist(edit, path, message):
    data = yaml.safe_load(REFERENCE.read_text())
    edit(data)
    assert f"{path}: {message}" in issues_of(data)


def test_names_declared_by_an_app_section_must_exist():
    data = yaml.safe_load(TOY.read_text())
    data["toy"].update(sam_teacher="sma", feature_teachers=["dino"], train_samples=0)
    issues = issues_of(data)
    assert "toy.sam_teacher: unknown teacher 'sma'; defined: sam, clip" in issues
    assert "toy.feature_teachers.0: unknown teacher 'dino'; defined: sam, clip" in issues
    assert any(i.startswith("toy.train_samples:") for i in issues)  # reported alongside
