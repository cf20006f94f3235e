from __future__ import annotations

import pytest

from mergekit_vision.strategies.replay.alternating import Alternating
from mergekit_vision.strategies.replay.base import REPLAY, TaskDraw
from mergekit_vision.strategies.replay.curriculum import Curriculum
from mergekit_vision.strategies.replay.forgetting_adaptive import ForgettingAdaptive
from mergekit_vision.strategies.replay.proportional import Proportional

SIZES = {"clip": 8, "sam": 4}


def test_alternating_round_robin():
    replay = Alternating.build(Alternating.Params(), batch_sizes={"a": 2, "b": 3, "c": 5})
    got = [replay.draws(step=s) for s in range(5)]
    assert got == [
        [TaskDraw("a", 2)],
        [TaskDraw("b", 3)],
        [TaskDraw("c", 5)],
        [TaskDraw("a", 2)],
        [TaskDraw("b", 3)],
    ]


def test_proportional_is_a_function_of_seed_and_step():
    params = Proportional.Params(probabilities={"clip": 3.0, "sam": 1.0}, seed=7)
    first = Proportional.build(params, batch_sizes=SIZES)
    resumed = Proportional.build(params, batch_sizes=SIZES)
    sequence = [first.draws(step=s) for s in range(400)]
    # a fresh scheduler asked from step 200 on (a resume) draws the same batches
    assert [resumed.draws(step=s) for s in range(200, 400)] == sequence[200:]
    assert all(len(d) == 1 and d[0].batch_size == SIZES[d[0].task] for d in sequence)
    share = sum(d[0].task == "clip" for d in sequence) / len(sequence)
    assert first.probabilities == {"clip": 0.75, "sam": 0.25}
    assert 0.68 < share < 0.82
    other_seed = Proportional.build(
        Proportional.Params(probabilities={"clip": 3.0, "sam": 1.0}, seed=8), batch_sizes=SIZES
    )
    assert [other_seed.draws(step=s) for s in range(400)] != sequence


def test_proportional_missing_task_lists_tasks():
    params = Proportional.Params(probabilities={"clip": 1.0})
    with pytest.raises(ValueError, match="tasks: clip, sam; given: clip"):
        Proportional.build(params, batch_sizes=SIZES)


def test_curriculum_interpolates_piecewise_linearly():
    params = Curriculum.Params.model_validate(
        {
            "schedule": [
                {"step": 10, "ratios": {"clip": 1.0, "sam": 0.0}},
                {"step": 20, "ratios": {"clip": 0.5, "sam": 1.0}},
                {"step": 30, "ratios": {"clip": 0.0, "sam": 0.5}},
            ]
        }
    )
    replay = Curriculum.build(params, batch_sizes=SIZES)
    assert replay.draws(step=0) == [TaskDraw("clip", 8)]  # held before the first point
    assert replay.draws(step=10) == [TaskDraw("clip", 8)]
    # step 15: clip 0.75 * 8 = 6, sam 0.5 * 4 = 2
    assert replay.draws(step=15) == [TaskDraw("clip", 6), TaskDraw("sam", 2)]
    # step 11: sam 0.1 * 4 = 0.4 rounds to 0 but is positive, so at least 1
    assert replay.draws(step=11) == [TaskDraw("clip", 8), TaskDraw("sam", 1)]
    assert replay.draws(step=25) == [TaskDraw("clip", 2), TaskDraw("sam", 3)]
    assert replay.draws(step=30) == [TaskDraw("sam", 2)]
    assert replay.draws(step=1000) == [TaskDraw("sam", 2)]  # held after the last point


@pytest.mark.parametrize(
    ("schedule", "message"),
    [
        ([{"step": 5, "ratios": {"clip": 1.0}}], "tasks: clip, sam; given: clip"),
        ([{"step": 5, "ratios": {"clip": 0.0, "sam": 0.0}}], "at least one positive"),
        (
            [
                {"step": 5, "ratios": {"clip": 1.0, "sam": 1.0}},
                {"step": 5, "ratios": {"clip": 1.0, "sam": 1.0}},
            ],
            "increase strictly",
        ),
    ],
)
def test_curriculum_rejects_bad_schedules(schedule, message):
    with pytest.raises(ValueError, match=message):
        Curriculum.build(
            Curriculum.Params.model_validate({"schedule": schedule}), batch_sizes=SIZES
        )


def test_forgetting_adaptive_raises_the_share_of_a_forgotten_task():
    params = ForgettingAdaptive.Params(tolerance=0.1, boost=2.0, max_share=0.8)
    replay = ForgettingAdaptive.build(params, batch_sizes=SIZES)
    # initial shares follow the recipe batch sizes: 8/12 and 4/12 of 12 samples
    assert replay.draws(step=0) == [TaskDraw("clip", 8), TaskDraw("sam", 4)]
    replay.observe_heldout(step=10, losses={"clip": 1.0, "sam": 1.0})
    replay.observe_heldout(step=20, losses={"clip": 0.9, "sam": 1.05})  # within tolerance
    assert replay.shares == pytest.approx({"clip": 2 / 3, "sam": 1 / 3})
    replay.observe_heldout(step=30, losses={"clip": 0.8, "sam": 1.2})  # sam forgets
    # sam: 1/3 * 2 = 2/3 against clip's 2/3, renormalized: 0.5 each
    assert replay.shares == pytest.approx({"clip": 0.5, "sam": 0.5})
    assert replay.draws(step=31) == [TaskDraw("clip", 6), TaskDraw("sam", 6)]
    replay.observe_heldout(step=40, losses={"clip": 0.8, "sam": 1.3})  # still above: again
    # 0.5 vs 1.0 -> 1/3, 2/3; then sam again would be capped at 0.8
    assert replay.shares == pytest.approx({"clip": 1 / 3, "sam": 2 / 3})
    replay.observe_heldout(step=50, losses={"clip": 0.8, "sam": 1.3})
    assert replay.shares == pytest.approx({"clip": 0.2, "sam": 0.8})

    restored = ForgettingAdaptive.build(params, batch_sizes=SIZES)
    restored.load_state_dict(replay.state_dict())
    assert restored.shares == replay.shares and restored.best == replay.best
    assert restored.draws(step=51) == replay.draws(step=51)
    assert restored.best == {"clip": 0.8, "sam": 1.0}


def test_forgetting_adaptive_rejects_an_unreachable_cap():
    with pytest.raises(ValueError, match="max_share 0.3 < 1/3"):
        ForgettingAdaptive(batch_sizes={"a": 1, "b": 1, "c": 1}, max_share=0.3)


@pytest.mark.parametrize(
    "name", ["alternating", "proportional", "curriculum", "forgetting_adaptive"]
)
def test_registered(name):
    assert name in REPLAY
