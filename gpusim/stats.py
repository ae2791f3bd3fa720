"""Every interval, paired comparison and verdict gpusim reports, in one place.

Metrics, compare, validate and the advisor all call these, so "95% interval" means one thing.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np
from scipy import stats


def mean_ci(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean and Student-t 95% interval over independent replications (None with one)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None
    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, [mean - half, mean + half]


def combine(per_rep: Sequence[dict[str, Any]]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Means (and nested dicts of means) across replications, and their 95% intervals."""
    means: dict[str, Any] = {}
    cis: dict[str, Any] = {}
    for key in per_rep[0]:
        vals = [m[key] for m in per_rep]
        if isinstance(vals[0], dict):
            sub = combine(vals)
            means[key], cis[key] = sub
        elif any(v is None for v in vals):
            means[key], cis[key] = None, None
        else:
            means[key], cis[key] = mean_ci(vals)
    return means, cis
