"""A section run several times: the median of each figure, and its range over the runs.

Single runs on a busy machine swing; the median of a few is steadier, and the range
says how much to trust it.
"""

from __future__ import annotations

import statistics
from typing import Any

#: Counts that add up over runs instead of taking their median.
SUMMED = frozenset({"errors"})


def combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One result shaped as each run's, each number the median over ``runs``.

    Ratios are the median of each run's own ratio (each run compares paths measured
    side by side), not ratios of medians; a run that could not compute one (a ratio to
    an added time within the noise, below zero) is left out of it. ``spread`` holds
    each number's ``[min, max]`` in the same shape, ``runs`` their count.
    """
    median, spread = _combine(runs, "")
    return {**median, "runs": len(runs), "spread": spread or {}}


def _combine(values: list[Any], key: str) -> tuple[Any, Any]:
    first = values[0]
    if isinstance(first, dict):
        median: dict[str, Any] = {}
        spread: dict[str, Any] = {}
        for name in first:
            m, s = _combine([v.get(name) for v in values if isinstance(v, dict)], name)
            median[name] = m
            if s:
                spread[name] = s
        return median, spread
    numbers = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if not numbers:  # text, or a figure no run could compute
        return first, None
    if key in SUMMED:
        return sum(numbers), [min(numbers), max(numbers)]
    return round(statistics.median(numbers), 3), [min(numbers), max(numbers)]
