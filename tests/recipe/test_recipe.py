from pathlib import Path

import pytest
import yaml

from mergekit_vision.errors import RecipeError
from mergekit_vision.recipe.io import dump_recipe, load_recipe

ROOT = Path(__file__).resolve().parents[2]
REFERENCE = ROOT / "recipes" / "sam_clip.yaml"


def write_variant(tmp_path: Path, edit) -> Path:
    data = yaml.safe_load(REFERENCE.read_text())
    edit(data)
    path = tmp_path / "recipe.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def issues_of(path: Path, overrides=None) -> list[str]:
    with pytest.raises(RecipeError) as err:
        load_recipe(path, overrides)
    return [str(issue) for issue in err.value.issues]


def test_reference_recipe_is_valid_and_fully_resolved():
    recipe = load_recipe(REFERENCE)
    assert recipe.tasks["sam"].weight == 10.0
    assert recipe.stages[1].lr_mult == {"backbone": 0.1, "sam_head": 0.1}
    # every plugin's params are typed, their defaults filled in
    assert recipe.heads["clip_head"].params.pooling == "max"
    assert recipe.tasks["sam"].loss.params.focal_weight == 20.0
    resolved = dump_recipe(recipe)
    again = yaml.safe_load(resolved)
    assert again["teachers"]["sam"]["params"]["variant"] == "vit_b"


def test_recipe_is_frozen():
    recipe = load_recipe(REFERENCE)
    with pytest.raises(Exception, match="frozen"):
        recipe.seed = 3


def test_unknown_key_names_path_line_and_valid_keys(tmp_path):
    path = write_variant(tmp_path, lambda d: d["tasks"]["sam"].update(wieght=3))
    (issue,) = issues_of(path)
    assert issue.startswith("tasks.sam.wieght (line ")
    assert "unknown key 'wieght'" in issue and "weight" in issue


def test_unknown_plugin_lists_valid_names(tmp_path):
    path = write_variant(tmp_path, lambda d: d["student"].update(type="vitdett"))
    (issue,) = issues_of(path)
    assert "student.type" in issue and "'vitdett'" in issue and "vitdet" in issue


def test_plugin_param_typo_and_wrong_type(tmp_path):
    def edit(d):
        d["heads"]["clip_head"]["params"]["num_blocs"] = 3
        d["teachers"]["sam"]["params"]["variant"] = "vit_x"

    issues = issues_of(write_variant(tmp_path, edit))
    assert any(i.startswith("heads.clip_head.params.num_blocs (line") for i in issues)
    assert any("teachers.sam.params.variant" in i and "vit_b" in i for i in issues)


def test_dangling_references_are_reported_each(tmp_path):
    def edit(d):
        d["tasks"]["sam"]["teacher"] = "samm"
        d["stages"][1]["tasks"] = ["clip", "depth"]
        d["stages"][0]["train"] = ["clip_hed"]

    issues = issues_of(write_variant(tmp_path, edit))
    assert any(i.startswith("tasks.sam.teacher") and "'samm'" in i for i in issues)
    assert any(i.startswith("stages.1.tasks.1") and "'depth'" in i for i in issues)
    assert any(i.startswith("stages.0.train.0") and "backbone" in i for i in issues)


def test_wrong_type_and_missing_field(tmp_path):
    def edit(d):
        d["tasks"]["clip"]["batch_size"] = "many"
        del d["stages"][0]["lr"]

    issues = issues_of(write_variant(tmp_path, edit))
    assert any(i.startswith("tasks.clip.batch_size") and "'many'" in i for i in issues)
    assert any(i.startswith("stages.0.lr") and "missing" in i for i in issues)


def test_set_overrides_apply_and_validate():
    recipe = load_recipe(REFERENCE, ["tasks.sam.weight=100", "stages.1.epochs=20"])
    assert recipe.tasks["sam"].weight == 100 and recipe.stages[1].epochs == 20
    issues = issues_of(REFERENCE, ["tasks.sam.weight=-1"])
    assert issues and issues[0].startswith("tasks.sam.weight")


def test_set_value_that_is_not_yaml_is_a_recipe_error():
    (issue,) = issues_of(REFERENCE, ["tasks.clip.data.params={urls: a, b}: c"])
    assert issue.startswith("tasks.clip.data.params=") and "quote the value" in issue


def test_yaml_tags_are_not_executed(tmp_path):
    path = tmp_path / "evil.yaml"
    path.write_text("name: !!python/object/apply:os.system ['echo pwned']\n")
    (issue,) = issues_of(path)
    assert "not valid YAML" in issue


def test_recipe_offers_exactly_the_mask_classifiers_the_eval_code_has():
    """The schema keeps its own Literal (importing eval.tasks would tie the schema to the
    evaluation code); this keeps the two lists equal."""
    from typing import get_args

    from mergekit_vision.eval.tasks import MaskClass
    from mergekit_vision.recipe.schema import EvalSpec

    annotation = EvalSpec.model_fields["refined_mask_class"].annotation
    assert set(get_args(annotation)) == set(get_args(MaskClass))
