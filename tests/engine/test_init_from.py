"""``init_from``: a run starting from an earlier merged run (step-by-step merging)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

from mergekit_vision.cli.main import main
from mergekit_vision.engine.build import build_components
from mergekit_vision.engine.init_from import start_from_earlier_run
from mergekit_vision.errors import BuildError
from mergekit_vision.export.loading import find_checkpoint
from mergekit_vision.recipe.io import validate_recipe
from mergekit_vision.run import MissingPathsError, run_recipe
from mergekit_vision.students.lora import merge_lora
from mergekit_vision.weights import read_weights

from ..step_merge import step_recipe, train_first_run


@pytest.fixture(scope="module")
def earlier(tmp_path_factory, tiny_checkpoints):
    return train_first_run(tmp_path_factory.mktemp("step"), tiny_checkpoints)


def earlier_weights(run) -> dict[str, torch.Tensor]:
    return read_weights(find_checkpoint(run) / "model.safetensors", what="test")


def part(weights: dict, prefix: str) -> dict:
    return {k[len(prefix) + 1 :]: v for k, v in weights.items() if k.startswith(prefix + ".")}


def started(data: dict, tmp_path):
    components = build_components(validate_recipe(data, source="step"))
    loaded = start_from_earlier_run(
        components.model, components.recipe, output=tmp_path / "run", resume=False
    )
    return components.model, loaded


def assert_same(module: torch.nn.Module, weights: dict) -> None:
    state = module.state_dict()
    assert state.keys() == weights.keys()
    for key, value in weights.items():
        assert torch.equal(state[key], value), key


def test_student_and_same_named_heads_start_at_the_earlier_weights(earlier, tmp_path):
    data = step_recipe(earlier)
    fresh = build_components(validate_recipe(data, source="step")).model
    model, loaded = started(data, tmp_path)
    assert loaded == ["student", "clip_head", "sam_head", "normalizers.clip"]
    weights = earlier_weights(earlier)
    assert_same(model.student, part(weights, "student"))
    assert_same(model.heads["clip_head"], part(weights, "heads.clip_head"))
    assert_same(model.heads["sam_head"], part(weights, "heads.sam_head"))
    # the earlier run trained its backbone: it is not where a fresh build starts
    assert not torch.equal(
        fresh.student.state_dict()["blocks.0.attn.qkv.weight"],
        model.student.state_dict()["blocks.0.attn.qkv.weight"],
    )
    assert_same(model.normalizers["clip"], part(weights, "normalizers.clip"))
    assert model.normalizers["clip"].frozen  # the calibration pass keeps the earlier statistics
    # a head (and a normalizer) the earlier run lacks starts as its recipe builds it
    assert_same(model.heads["new_head"], fresh.heads["new_head"].state_dict())
    assert not model.normalizers["new"].frozen


def test_a_lora_student_starts_exactly_at_the_earlier_backbone(earlier, tmp_path):
    data = step_recipe(earlier)
    data["student"]["lora"] = {"rank": 2, "alpha": 2.0, "targets": ["qkv"]}
    model, _ = started(data, tmp_path)
    merge_lora(model.student)  # B starts at zero: the merged weights are the base weights
    assert_same(model.student, part(earlier_weights(earlier), "student"))


def test_a_step_run_trains_and_replays_the_earlier_heads(earlier, tmp_path):
    recipe = tmp_path / "step.yaml"
    recipe.write_text(yaml.safe_dump(step_recipe(earlier)))
    out = tmp_path / "run"
    assert main(["run", str(recipe), "--output", str(out)]) == 0
    lines = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [line["step"] for line in lines] == [1, 2]
    for task in ("clip", "sam", "new"):
        assert all(line[f"loss/{task}"] >= 0 for line in lines)
    # replaying an ability from the model that has it: the carried-over head starts near it
    assert lines[0]["loss/clip"] < 0.5 * lines[0]["loss/new"]


def test_a_missing_run_folder_stops_the_run_before_any_work(earlier, tmp_path):
    recipe = tmp_path / "step.yaml"
    recipe.write_text(yaml.safe_dump(step_recipe(earlier, init_from=str(tmp_path / "gone"))))
    with pytest.raises(MissingPathsError, match=r"init_from: run folder .*gone.* does not exist"):
        run_recipe(recipe, output=tmp_path / "run", progress=False)


def test_a_folder_without_a_checkpoint_is_a_clear_error(earlier, tmp_path):
    (tmp_path / "empty").mkdir()
    data = step_recipe(earlier, init_from=str(tmp_path / "empty"))
    with pytest.raises(BuildError, match="init_from: .*holds no checkpoint"):
        started(data, tmp_path)


def test_a_different_student_names_the_keys_and_the_fix(earlier, tmp_path):
    data = step_recipe(earlier)
    data["student"]["params"]["depth"] = 3
    with pytest.raises(BuildError) as err:
        started(data, tmp_path)
    message = str(err.value)
    assert message.startswith("init_from: the student does not fit")
    assert "missing blocks.2." in message
    assert "give student the earlier run's type 'vitdet' and params" in message


def test_a_different_head_of_the_same_name_names_it(earlier, tmp_path):
    data = step_recipe(earlier)
    data["heads"]["clip_head"]["params"]["num_blocks"] = 1
    with pytest.raises(BuildError, match="head 'clip_head' does not fit .* rename it"):
        started(data, tmp_path)


def test_the_toy_step_recipe_validates(capsys):
    recipe = Path(__file__).resolve().parents[2] / "recipes" / "sam_clip_depth_step_tiny.yaml"
    assert main(["validate", str(recipe)]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    assert printed["init_from"] == "runs/sam_clip_tiny"
    assert {
        name: t["type"] for name, t in printed["teachers"].items() if name in ("clip", "sam")
    } == {
        "clip": "merged_run",
        "sam": "merged_run",
    }
    assert [m["type"] for m in printed["eval"]["metrics"]] == [
        "zeroshot_top1",
        "promptable_segmentation",
        "relative_depth",
    ]
