"""Teacher dropping (UNIC / DUNE) and random teacher subsets (Theia), as replay schedulers:
frequencies within binomial tolerances, the kept task, the renormalisation, resume."""

from __future__ import annotations

import itertools
import math

import pytest

from mergekit_vision.strategies.replay.base import REPLAY, TaskDraw
from mergekit_vision.strategies.replay.random_subset import RandomSubset
from mergekit_vision.strategies.replay.teacher_drop import TeacherDrop

SIZES = {"a": 2, "b": 3, "c": 5}
STEPS = 2000


def within(frequency: float, p: float, *, n: int = STEPS, sigmas: float = 4.0) -> bool:
    return abs(frequency - p) < sigmas * math.sqrt(p * (1 - p) / n)


def test_teacher_drop_frequencies_follow_p_and_the_highest_loss_is_kept():
    replay = TeacherDrop.build(TeacherDrop.Params(p=0.3, seed=3), batch_sizes=SIZES)
    replay.observe(step=0, losses={"a": 5.0, "b": 1.0, "c": 2.0})  # a: highest, never dropped
    runs = [{d.task for d in replay.draws(step=s)} for s in range(STEPS)]
    assert all("a" in run for run in runs)
    dropped_b = sum("b" not in run for run in runs) / STEPS
    dropped_c = sum("c" not in run for run in runs) / STEPS
    both = sum(run == {"a"} for run in runs) / STEPS
    # 4 sigma of a binomial(2000, p): 0.041 for p = 0.3, 0.026 for p = 0.09 (independent drops)
    assert within(dropped_b, 0.3) and within(dropped_c, 0.3), (dropped_b, dropped_c)
    assert within(both, 0.09), both
    assert 0.25 < dropped_b < 0.35  # the tolerance above is not vacuous


def test_teacher_drop_keeps_the_task_whose_last_loss_is_highest():
    replay = TeacherDrop(batch_sizes=SIZES, p=0.9, seed=0)
    replay.observe(step=0, losses={"a": 1.0, "b": 3.0, "c": 2.0})
    assert all("b" in {d.task for d in replay.draws(step=s)} for s in range(200))
    # a step ran only b: a and c keep their last losses, so c (2.0) is now the highest
    replay.observe(step=1, losses={"b": 0.5})
    assert replay.last_losses == {"a": 1.0, "b": 0.5, "c": 2.0}
    assert all("c" in {d.task for d in replay.draws(step=s)} for s in range(200))


def test_teacher_drop_never_drops_every_task():
    replay = TeacherDrop(batch_sizes=SIZES, p=0.99, seed=1)  # no loss seen: ties, drawn
    runs = [replay.draws(step=s) for s in range(600)]
    assert all(len(run) >= 1 for run in runs)
    singles = [run[0].task for run in runs if len(run) == 1]
    assert len(singles) > 550  # p = 0.99: almost always one task left
    # which task is kept while no loss is known is uniform: 1/3 each, 4 sigma of binomial
    for task in SIZES:
        assert within(singles.count(task) / len(singles), 1 / 3, n=len(singles)), task


def test_teacher_drop_renormalises_the_kept_losses_as_unic_divides_by_their_number():
    replay = TeacherDrop(batch_sizes=SIZES, p=0.5, seed=0)
    replay.observe(step=0, losses={"a": 0.6, "b": 0.9, "c": 0.3})
    by_count = {}
    for step in range(100):
        run = replay.draws(step=step)
        by_count.setdefault(len(run), run)
    assert set(by_count) == {1, 2, 3}
    assert [d.loss_scale for d in by_count[3]] == [1.0, 1.0, 1.0]
    assert [d.loss_scale for d in by_count[2]] == [1.5, 1.5]
    assert by_count[1] == [TaskDraw("b", 3, 3.0)]  # b, the highest loss, alone
    # the step's objective: sum of scale * loss = T * (UNIC's mean over the kept teachers)
    losses = replay.last_losses
    two = by_count[2]
    objective = sum(d.loss_scale * losses[d.task] for d in two)
    assert objective == pytest.approx(3 * sum(losses[d.task] for d in two) / 2)
    plain = TeacherDrop(batch_sizes=SIZES, p=0.5, seed=0, renormalize=False)
    plain.load_state_dict(replay.state_dict())
    assert all(d.loss_scale == 1.0 for s in range(100) for d in plain.draws(step=s))
    assert [d.task for d in plain.draws(step=7)] == [d.task for d in replay.draws(step=7)]


def test_teacher_drop_is_a_function_of_seed_step_and_last_losses():
    params = TeacherDrop.Params(p=0.5, seed=11)
    first = TeacherDrop.build(params, batch_sizes=SIZES)
    first.observe(step=0, losses={"a": 1.0, "b": 2.0, "c": 0.5})
    resumed = TeacherDrop.build(params, batch_sizes=SIZES)
    resumed.load_state_dict(first.state_dict())  # a checkpoint's replay state
    assert [resumed.draws(step=s) for s in range(50, 150)] == [
        first.draws(step=s) for s in range(50, 150)
    ]
    other = TeacherDrop.build(TeacherDrop.Params(p=0.5, seed=12), batch_sizes=SIZES)
    other.load_state_dict(first.state_dict())
    assert [other.draws(step=s) for s in range(100)] != [first.draws(step=s) for s in range(100)]
    never = TeacherDrop(batch_sizes=SIZES, p=0.0)
    assert all(never.draws(step=s) == [TaskDraw(t, n) for t, n in SIZES.items()] for s in range(50))


def test_random_subset_draws_exactly_k_tasks_uniformly():
    sizes = {"a": 1, "b": 2, "c": 3, "d": 4}
    replay = RandomSubset.build(RandomSubset.Params(k=2, seed=5), batch_sizes=sizes)
    runs = [replay.draws(step=s) for s in range(STEPS)]
    assert all(len(run) == 2 and len({d.task for d in run}) == 2 for run in runs)
    assert all(d.batch_size == sizes[d.task] and d.loss_scale == 2.0 for r in runs for d in r)
    # in the recipe's order, as the engine runs them
    assert all([d.task for d in run] == sorted(d.task for d in run) for run in runs)
    for task in sizes:  # each task in k / T = 1/2 of the steps
        assert within(sum(task in {d.task for d in r} for r in runs) / STEPS, 0.5), task
    for pair in itertools.combinations(sizes, 2):  # each of the 6 pairs: 1/6
        share = sum(tuple(d.task for d in r) == pair for r in runs) / STEPS
        assert within(share, 1 / 6), (pair, share)


def test_random_subset_is_a_function_of_seed_and_step_and_checks_k():
    params = RandomSubset.Params(k=1, seed=2, renormalize=False)
    first = RandomSubset.build(params, batch_sizes=SIZES)
    resumed = RandomSubset.build(params, batch_sizes=SIZES)
    sequence = [first.draws(step=s) for s in range(300)]
    assert [resumed.draws(step=s) for s in range(150, 300)] == sequence[150:]
    assert all(len(run) == 1 and run[0].loss_scale == 1.0 for run in sequence)
    everything = RandomSubset(batch_sizes=SIZES, k=3)
    assert everything.draws(step=9) == [TaskDraw(t, n, 1.0) for t, n in SIZES.items()]
    with pytest.raises(ValueError, match=r"k=4 tasks per step, but the stage has 3 \(a, b, c\)"):
        RandomSubset(batch_sizes=SIZES, k=4)


@pytest.mark.parametrize("name", ["teacher_drop", "random_subset"])
def test_registered(name):
    assert name in REPLAY
