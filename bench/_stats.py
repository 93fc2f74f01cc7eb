"""Percentiles of one run and the median, min and max of a figure across runs."""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any


def percentile(values: Sequence[float], fraction: float) -> float:
    """Return the ``fraction`` quantile (0-1) with linear interpolation; NaN if empty.

    ``values`` must be sorted. This is numpy's default ("linear") method.
    """
    if not values:
        return math.nan
    position = (len(values) - 1) * fraction
    low = math.floor(position)
    high = min(low + 1, len(values) - 1)
    return values[low] + (values[high] - values[low]) * (position - low)


def latency_figures(latencies: Iterable[float], prefix: str) -> dict[str, float]:
    """Return p50, p99 and max of ``latencies`` (seconds) in ms, keyed ``{prefix}_p50_ms``."""
    ordered = sorted(latencies)
    return {
        f"{prefix}_p50_ms": percentile(ordered, 0.50) * 1000,
        f"{prefix}_p99_ms": percentile(ordered, 0.99) * 1000,
        f"{prefix}_max_ms": (ordered[-1] * 1000) if ordered else math.nan,
        f"{prefix}_count": float(len(ordered)),
    }


def summarize_runs(runs: Sequence[dict[str, Any]]) -> dict[str, dict[str, float]]:
    """Return, for every numeric figure in ``runs``, its median, min and max across runs.

    NaN values (a figure a run could not measure) are left out; a figure with
    no value in any run is left out entirely.
    """
    names: list[str] = []
    for run in runs:
        names.extend(name for name in run if name not in names)
    summary: dict[str, dict[str, float]] = {}
    for name in names:
        values = [
            float(run[name])
            for run in runs
            if isinstance(run.get(name), int | float)
            and not isinstance(run.get(name), bool)
            and not math.isnan(float(run[name]))
        ]
        if values:
            summary[name] = {
                "median": statistics.median(values),
                "min": min(values),
                "max": max(values),
                "runs": float(len(values)),
            }
    return summary
