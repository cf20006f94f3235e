"""Stochastic multi-resolution training (RADIOv2.5): each step draws the high set with
probability ``p_high`` and a side uniformly within the set, from (seed, stage/task, step) alone,
so the frequencies are what the recipe says and a resumed run draws the same sides."""

from __future__ import annotations

import math

import pytest
import yaml

from mergekit_vision.errors import RecipeError
from mergekit_vision.recipe.io import dump_recipe, load_recipe, validate_recipe
from mergekit_vision.recipe.resolution import (
    StochasticResolution,
    reference_side,
    resolution_sides,
    side_at,
)
from mergekit_vision.recipe.schema import task_load_resolution

from ..conftest import TINY_RECIPE

STOCHASTIC = "{low: [32, 48], high: [96], p_high: 0.25}"


def draws(resolution, *, steps: range, seed: int = 0, key: str = "s/clip") -> list[int]:
    return [side_at(resolution, step=step, seed=seed, key=key) for step in steps]


def within_binomial(count: int, *, n: int, p: float, sigmas: float = 4.0) -> bool:
    return abs(count - n * p) <= sigmas * math.sqrt(n * p * (1 - p))


def test_the_sides_drawn_have_the_recipes_frequencies():
    resolution = StochasticResolution(low=[32, 48], high=[96], p_high=0.25)
    n = 4000
    sides = draws(resolution, steps=range(n))
    assert set(sides) == {32, 48, 96}
    # high with p_high; each low side with (1 - p_high) / 2 (4 sigma: a wrong p fails)
    assert within_binomial(sides.count(96), n=n, p=0.25)
    assert within_binomial(sides.count(32), n=n, p=0.375)
    assert within_binomial(sides.count(48), n=n, p=0.375)
    assert not within_binomial(sides.count(96), n=n, p=0.5)  # the check can fail
    # consecutive steps are not a cycle: some step repeats its predecessor's side
    assert any(a == b for a, b in zip(sides, sides[1:], strict=False))


def test_draws_depend_on_seed_and_key_only():
    resolution = StochasticResolution(low=[32, 48, 64], high=[96, 128], p_high=0.5)
    steps = range(200)
    assert draws(resolution, steps=steps) == draws(resolution, steps=steps)
    assert draws(resolution, steps=steps) != draws(resolution, steps=steps, seed=1)
    assert draws(resolution, steps=steps) != draws(resolution, steps=steps, key="s/sam")
    never_high = StochasticResolution(low=[32], high=[96], p_high=0.0)
    assert set(draws(never_high, steps=steps)) == {32}
    only_high = StochasticResolution(low=[32], high=[96, 128], p_high=1.0)
    assert set(draws(only_high, steps=steps)) == {96, 128}
    low_only = StochasticResolution.model_validate({"low": [32, 48]})  # no high: p_high 0
    assert low_only.p_high == 0 and set(draws(low_only, steps=steps)) == {32, 48}


def test_a_resumed_run_draws_the_same_sides():
    """The resumed recipe is the resolved one read back from the run folder; the step counter
    comes from the checkpoint: from step 37 on it draws what the uninterrupted run did."""
    recipe = load_recipe(TINY_RECIPE, [f"tasks.clip.resolution={STOCHASTIC}"])
    reread = validate_recipe(yaml.safe_load(dump_recipe(recipe)), source="resumed")
    before, after = recipe.tasks["clip"].resolution, reread.tasks["clip"].resolution
    assert isinstance(after, StochasticResolution) and after == before
    straight = draws(before, steps=range(100), seed=recipe.seed)
    resumed = draws(after, steps=range(37, 100), seed=reread.seed)
    assert resumed == straight[37:]


def test_lists_still_cycle_and_sides_cover_every_form():
    assert draws([64, 48], steps=range(5)) == [64, 48, 64, 48, 64]
    assert draws(64, steps=range(3)) == [64, 64, 64]
    stochastic = StochasticResolution(low=[32, 48], high=[96])
    assert resolution_sides(stochastic) == [32, 48, 96]
    assert reference_side(stochastic) == 32 and reference_side([64, 48]) == 64
    recipe = load_recipe(TINY_RECIPE, [f"stages.1.resolution={{clip: {STOCHASTIC}}}"])
    assert task_load_resolution(recipe, "clip") == 96  # data loaded at the largest side drawn


@pytest.mark.parametrize(
    ("value", "path", "message"),
    [
        ("{low: [48], p_high: 0.3}", "tasks.clip.resolution", "p_high > 0 needs 'high' sides"),
        ("{low: []}", "tasks.clip.resolution.low", "at least 1 item"),
        ("{low: [48], high: [4]}", "tasks.clip.resolution.high.0", "greater than or equal to 8"),
        ("{low: [48], p_high: 2}", "tasks.clip.resolution.p_high", "less than or equal to 1"),
        ("{low: [48], hgh: [96]}", "tasks.clip.resolution.hgh", "unknown key"),
        ("4", "tasks.clip.resolution", "must lie in [8, 16384] px (got 4)"),
    ],
)
def test_mistakes_are_reported_at_their_field(value, path, message):
    with pytest.raises(RecipeError) as raised:
        load_recipe(TINY_RECIPE, [f"tasks.clip.resolution={value}"])
    problems = [i for i in raised.value.issues if i.path == path]
    assert problems and message in problems[0].message, raised.value.issues
