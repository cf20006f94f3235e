"""Resolution-robustness ratios on numbers divided out by hand."""

from __future__ import annotations

import math

import pytest

from mergekit_vision.eval.robustness import robustness_table, worst_resolution_ratio


def test_higher_is_better_takes_the_smallest_value_over_the_reference() -> None:
    # The toy merge of the issue: refined semseg 0.229 at 128 px, 0.111 at 96 px, 0.2 at 160 px.
    # Ratios 0.111 / 0.229 = 0.4847 and 0.2 / 0.229 = 0.8734: the worst is 0.4847.
    ratio = worst_resolution_ratio({96: 0.111, 128: 0.229, 160: 0.2}, reference=128)
    assert ratio == pytest.approx(0.111 / 0.229)
    # Better elsewhere than at the reference gives a ratio above 1.
    assert worst_resolution_ratio({128: 0.5, 256: 0.6}, reference=128) == pytest.approx(1.2)


def test_lower_is_better_inverts_the_ratio() -> None:
    # An error of 0.2 at the reference: 0.4 elsewhere is twice as bad (0.5), 0.1 twice as good (2).
    values = {128: 0.2, 96: 0.4, 256: 0.1}
    assert worst_resolution_ratio(values, reference=128, higher_is_better=False) == 0.5
    # The same numbers read as higher-is-better: 0.1 / 0.2 = 0.5 at 256 px.
    assert worst_resolution_ratio(values, reference=128) == 0.5
    # A perfect (0) error elsewhere is infinitely better, never the worst unless alone.
    alone = {128: 0.2, 96: 0.0}
    assert worst_resolution_ratio(alone, reference=128, higher_is_better=False) == math.inf


@pytest.mark.parametrize(
    "values",
    [
        {128: 0.0, 96: 0.5},  # reference value 0
        {96: 0.5, 160: 0.4},  # reference missing
        {128: 0.5},  # no other resolution
        {128: 0.5, 96: math.nan},  # the other resolution could not be measured
        {128: math.nan, 96: 0.5},
        {128: -0.2, 96: 0.5},  # a signed metric: a ratio means nothing
        {128: 0.2, 96: -0.5},
    ],
)
def test_undefined_ratios_are_none(values: dict[int, float]) -> None:
    assert worst_resolution_ratio(values, reference=128) is None
    assert worst_resolution_ratio(values, reference=128, higher_is_better=False) is None


def test_robustness_table_per_metric() -> None:
    per_resolution = {
        96: {"top1": 0.47, "miou": 0.111, "latency_ms": 6.0},
        128: {"top1": 0.5, "miou": 0.229, "latency_ms": 8.0},
        192: {"top1": 0.4, "latency_ms": 16.0},  # miou not measured at 192 px
    }
    table = robustness_table(
        per_resolution,
        reference=128,
        higher_is_better={"top1": True, "miou": True, "latency_ms": False, "unused": True},
    )
    # top1: min(0.47, 0.4) / 0.5 = 0.8; miou: 0.111 / 0.229; latency: 8 / 16 = 0.5.
    assert table == {
        "top1": pytest.approx(0.8),
        "miou": pytest.approx(0.111 / 0.229),
        "latency_ms": 0.5,
    }
    assert list(table) == ["top1", "miou", "latency_ms"]
    only_reference = robustness_table(
        {128: {"top1": 0.5}}, reference=128, higher_is_better={"top1": True}
    )
    assert only_reference == {"top1": None}


def test_robustness_table_needs_every_direction() -> None:
    with pytest.raises(KeyError, match=r"no higher_is_better direction for metric\(s\) \['miou'\]"):
        robustness_table(
            {128: {"top1": 0.5, "miou": 0.2}}, reference=128, higher_is_better={"top1": True}
        )
