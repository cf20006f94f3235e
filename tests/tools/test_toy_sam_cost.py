"""``vmerge toy sam-cost``: toy SAM training steps of several settings, timed side by side."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergekit_vision.cli.main import main
from mergekit_vision.tools.toy_sam_cost import (
    SamSetting,
    parse_overrides,
    setting_variant,
    time_sam_steps,
    training_variant,
)
from mergekit_vision.toy.train_sam import ToySamTraining

from ..toy.conftest import SAM, WORLD

TOY_RECIPE = Path(__file__).parents[2] / "recipes" / "sam_clip_tiny.yaml"


def test_overrides_parse_and_validate():
    base = ToySamTraining()
    variant = training_variant(base, parse_overrides("batch_size=4, prompts_per_image=16"))
    assert (variant.batch_size, variant.prompts_per_image) == (4, 16)
    assert variant.model_dump(exclude={"batch_size", "prompts_per_image"}) == base.model_dump(
        exclude={"batch_size", "prompts_per_image"}
    )


def test_model_overrides_change_the_architecture_only():
    base = SamSetting(SAM, ToySamTraining())
    variant = setting_variant(base, parse_overrides("model.decoder_depth=1,steps=500"))
    assert variant.params.decoder_depth == 1 and variant.training.steps == 500
    assert variant.params.model_dump(exclude={"decoder_depth"}) == SAM.model_dump(
        exclude={"decoder_depth"}
    )


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prompt_per_image=16", "unknown toy SAM training setting(s) ['prompt_per_image']"),
        ("prompt_per_image=16", "(architecture: model.KEY, e.g. model.decoder_depth)"),
        ("batch_size=0", "batch_size: Input should be greater than or equal to 1"),
        ("model.depth=2", "unknown SAM architecture setting(s) ['model.depth']; valid: model."),
        ("model.decoder_depth=x", "model.decoder_depth: Input should be a valid integer"),
        ("batch_size", "write KEY=VALUE"),
        (" , ", "give at least one KEY=VALUE"),
    ],
)
def test_bad_overrides_say_what_is_wrong(text, message):
    with pytest.raises(ValueError) as raised:
        setting_variant(SamSetting(SAM, ToySamTraining()), parse_overrides(text))
    assert message in str(raised.value)


def test_costs_are_relative_to_the_first_setting():
    base = ToySamTraining(steps=10, batch_size=2, prompts_per_image=2)
    longer = base.model_copy(update={"steps": 30, "prompts_per_image": 4})
    shallow = SAM.model_copy(update={"decoder_depth": 1})
    variants = {"base": SamSetting(SAM, base), "longer": SamSetting(shallow, longer)}
    result = time_sam_steps(world=WORLD, variants=variants, rounds=2, steps=1)
    rows = result["variants"]
    assert rows["base"]["step_cost"] == 1.0 and rows["base"]["total_cost"] == 1.0
    assert rows["base"]["model_changes"] == {}
    assert rows["longer"]["model_changes"] == {"decoder_depth": 1}
    assert rows["longer"]["masks_per_step"] == 8
    assert rows["longer"]["total_cost"] == pytest.approx(3 * rows["longer"]["step_cost"])
    assert all(row["step_s"] > 0 for row in rows.values())


def test_cli_times_the_recipe_against_a_variant(tmp_path, capsys):
    out = tmp_path / "cost.json"
    code = main(
        ["toy", "sam-cost", str(TOY_RECIPE), "--variant", "batch_size=2,steps=2000",
         "--variant", "model.prompt_embed_dim=32", "--rounds", "1", "--steps", "1",
         "--json", str(out)]
    )  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert list(result["variants"]) == [
        "recipe",
        "batch_size=2,steps=2000",
        "model.prompt_embed_dim=32",
    ]
    assert result["variants"]["batch_size=2,steps=2000"]["training"]["batch_size"] == 2
    assert result["variants"]["model.prompt_embed_dim=32"]["model_changes"] == {
        "prompt_embed_dim": 32
    }
    assert "step cost" in capsys.readouterr().out


def test_cli_rejects_an_unknown_setting_without_a_traceback(capsys):
    code = main(["toy", "sam-cost", str(TOY_RECIPE), "--variant", "nope=1", "--rounds", "1"])
    assert code == 2
    err = capsys.readouterr().err
    assert "unknown toy SAM training setting(s) ['nope']" in err and "Traceback" not in err
