"""Resolution robustness: how far a metric falls at other input resolutions than the training one.

A merged backbone can "mode-switch" away from its training resolution: RADIOv2.1's zero-shot
accuracy collapses at 1024 px, and RADIOv2.5 (Heinrich et al., "RADIOv2.5: Improved Baselines for
Agglomerative Vision Foundation Models", CVPR 2025) is judged by how flat its metrics stay across
resolutions. The number here is the worst ratio of a metric at another resolution to its value at
the reference (training) resolution, oriented so that below 1 always means worse.
"""

from __future__ import annotations

import math


def worst_resolution_ratio(
    values: dict[int, float], *, reference: int, higher_is_better: bool = True
) -> float | None:
    """The worst ratio of a metric at another resolution to its value at the reference one.

    For a higher-is-better metric the ratio is ``value / reference_value``; for a lower-is-better
    one (an error, a latency) it is ``reference_value / value``, so that in both cases 1 means
    unchanged, below 1 worse and above 1 better. The worst ratio is the smallest. A
    lower-is-better value of 0 at another resolution (a perfect error) gives ``inf``.

    Ratios only mean something for non-negative metrics, so the answer is ``None`` when the
    reference value is missing, 0, negative or not finite, when any value is negative, or when no
    other resolution has a finite value. Non-finite values at other resolutions (a metric that
    could not be computed there) are skipped.

    Args:
        values: resolution (pixels) -> the metric at that resolution.
        reference: the training resolution, the denominator.
        higher_is_better: the metric's direction.

    Returns:
        The worst ratio, or ``None`` as above.
    """
    reference_value = values.get(reference)
    if reference_value is None or not math.isfinite(reference_value) or reference_value <= 0:
        return None
    others = [
        value
        for resolution, value in values.items()
        if resolution != reference and value is not None and math.isfinite(value)
    ]
    if not others or min(others) < 0:
        return None
    if higher_is_better:
        return min(value / reference_value for value in others)
    return min(reference_value / value if value > 0 else math.inf for value in others)


def robustness_table(
    per_resolution: dict[int, dict[str, float]],
    *,
    reference: int,
    higher_is_better: dict[str, bool],
) -> dict[str, float | None]:
    """:func:`worst_resolution_ratio` of every metric measured at any resolution.

    Args:
        per_resolution: resolution -> {metric name -> value}; a metric missing at a resolution is
            left out of that resolution's comparison.
        reference: the training resolution.
        higher_is_better: metric name -> its direction; every measured metric needs one.

    Returns:
        metric name -> worst ratio (or ``None``), in the order metrics are first met.

    Raises:
        KeyError: a measured metric has no direction in ``higher_is_better``.
    """
    names: dict[str, None] = {}
    for metrics in per_resolution.values():
        names.update(dict.fromkeys(metrics))
    undirected = [name for name in names if name not in higher_is_better]
    if undirected:
        raise KeyError(f"no higher_is_better direction for metric(s) {undirected}")
    table: dict[str, float | None] = {}
    for name in names:
        values = {
            resolution: metrics[name]
            for resolution, metrics in per_resolution.items()
            if name in metrics
        }
        table[name] = worst_resolution_ratio(
            values, reference=reference, higher_is_better=higher_is_better[name]
        )
    return table
