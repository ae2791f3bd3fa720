"""Every interval, paired comparison and verdict gpusim reports, in one place.

Metrics, compare, validate and the advisor all call these, so "95% interval" means one thing.
"""

from __future__ import annotations

import math
from functools import lru_cache
from typing import Any, Sequence

import numpy as np


def _t_ppf(q: float, df: float) -> float:
    """Student-t quantile: scipy.stats.t.ppf's own kernel (scipy.special.stdtrit), imported
    here when first needed; importing scipy.stats costs about a second at every CLI start."""
    from scipy.special import stdtrit

    return float(stdtrit(df, q))


@lru_cache(maxsize=256)
def t975(df: int) -> float:
    """Student-t 97.5% quantile (scipy's ppf costs ~0.4 ms a call; the advisor asks thousands
    of times for the same few degrees of freedom)."""
    return _t_ppf(0.975, df)


def mean_ci(values: Sequence[float]) -> tuple[float, list[float] | None]:
    """Mean and Student-t 95% interval over independent replications (None with one)."""
    x = np.asarray(values, dtype=float)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, None
    half = float(t975(len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, [mean - half, mean + half]


def ratio_ci(num: Sequence[float], den: Sequence[float]) -> tuple[float, list[float] | None]:
    """sum(num) / sum(den) and its 95% interval, the units (batches of a run, say) taken as
    independent: the delta method on the ratio of means, e_i = num_i - R den_i,
    se = sd(e) / (sqrt(n) mean(den)), Student t with n - 1 degrees of freedom (batch means).
    None for the interval with fewer than two units or a zero denominator."""
    x = np.asarray(num, dtype=float)
    y = np.asarray(den, dtype=float)
    if y.sum() == 0:
        return math.nan, None
    r = float(x.sum() / y.sum())
    if len(x) < 2:
        return r, None
    e = x - r * y
    se = float(e.std(ddof=1) / (math.sqrt(len(x)) * y.mean()))
    half = t975(len(x) - 1) * se
    return r, [r - half, r + half]


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


# ------------------------------------------------------------------------------------------
# two-sample intervals on an error (sim - real, or sim / real - 1) and the verdict rule
# ------------------------------------------------------------------------------------------
# An interval is (error, low, high, note). kind "abs": the error is a difference in points;
# kind "rel": relative to the reference (real) mean.
Interval = tuple[float, float, float, str]

WIDTH_GUARD = 3.0  # INCONCLUSIVE when an interval's half-width exceeds WIDTH_GUARD * tol
BOOTSTRAP_REPS = 2000

PASS, FAIL, INCONCLUSIVE, INFO, NA = "PASS", "FAIL", "INCONCLUSIVE", "INFO", "N/A"


def _relative_to_zero(ms: float) -> Interval:
    """A relative error against a real mean of zero: none if both are zero, else unbounded."""
    if ms == 0:
        return 0.0, 0.0, 0.0, "both zero"
    return math.inf, math.inf, math.inf, "real mean is zero"


def welch_interval(real: np.ndarray, sim: np.ndarray, kind: str) -> Interval:
    """Welch-type 95% interval on sim - real (abs) or sim/real - 1 (rel, delta method of the
    ratio of means), carrying the spread of both sides with Welch-Satterthwaite degrees of
    freedom. A side with one value borrows the other's per-sample variance (said in the note);
    with one value on both sides the interval is the point."""
    nr, ns = len(real), len(sim)
    mr, ms = float(real.mean()), float(sim.mean())
    vr = float(real.var(ddof=1)) if nr > 1 else None
    vs = float(sim.var(ddof=1)) if ns > 1 else None
    note = ""
    if vr is None and vs is None:
        vr = vs = 0.0
        note = "one value per side: no spread, interval is the point"
    elif vr is None:
        vr, note = vs, "one real run: its spread is taken from the simulation's"
    elif vs is None:
        vs, note = vr, "one seed: its spread is taken from the real runs'"
    if kind == "abs":
        err = ms - mr
        ar, as_ = vr / nr, vs / ns
    else:
        if mr == 0:
            return _relative_to_zero(ms)
        err = ms / mr - 1.0
        ar, as_ = (ms ** 2) * vr / nr / mr ** 4, vs / ns / mr ** 2
    se = math.sqrt(ar + as_)
    if se == 0:
        return err, err, err, note
    dof_den = (ar ** 2 / (nr - 1) if nr > 1 else 0.0) + (as_ ** 2 / (ns - 1) if ns > 1 else 0.0)
    df = (ar + as_) ** 2 / dof_den if dof_den > 0 else max(1, nr + ns - 2)
    t = _t_ppf(0.975, df)
    return err, err - t * se, err + t * se, note


def paired_interval(real: np.ndarray, sim: np.ndarray, kind: str) -> Interval:
    """95% interval from pairs (real r, sim r) that share random numbers (common random
    numbers): a t interval on the paired differences, for relative errors on the linearised
    ratio ``(sim_r - R real_r) / mean(real)``, R = ratio of means. The differences carry both
    sides' spread and their correlation. Fewer than two pairs: the Welch interval."""
    n = len(real)
    if n < 2:
        return welch_interval(real, sim, kind)
    mr, ms = float(real.mean()), float(sim.mean())
    if kind == "abs":
        err, z = ms - mr, sim - real
    else:
        if mr == 0:
            return _relative_to_zero(ms)
        err = ms / mr - 1.0
        z = (sim - (ms / mr) * real) / mr
    se = float(z.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return err, err, err, "paired; identical pairs"
    t = _t_ppf(0.975, n - 1)
    return err, err - t * se, err + t * se, f"paired over {n} CRN pairs"


def pooled_percentile_interval(real: Sequence[np.ndarray], sim: Sequence[np.ndarray], q: float,
                               *, paired: bool = False, reps: int = BOOTSTRAP_REPS,
                               seed: int = 0) -> tuple[float, float, Interval]:
    """(real percentile, sim percentile, interval of sim / real - 1) of the pooled samples of
    several clusters (runs, seeds): a 95% percentile cluster bootstrap that resamples whole
    clusters (``paired``: the same indices on both sides, CRN pairs), so cluster-to-cluster
    spread on both sides is carried. The resampling seed is fixed: same inputs, same interval."""
    rng = np.random.default_rng(seed)
    real_p = float(np.percentile(np.concatenate(real), q))
    sim_p = float(np.percentile(np.concatenate(sim), q))
    note = "pooled waits; cluster bootstrap over " + ("CRN pairs" if paired else "runs and seeds")
    if real_p <= 0:
        err = 0.0 if sim_p == real_p else math.inf
        return real_p, sim_p, (err, err, err, note)
    err = sim_p / real_p - 1.0
    boot = np.empty(reps)
    for b in range(reps):
        ir = rng.integers(0, len(real), len(real))
        is_ = ir if paired else rng.integers(0, len(sim), len(sim))
        pr = np.percentile(np.concatenate([real[i] for i in ir]), q)
        ps = np.percentile(np.concatenate([sim[i] for i in is_]), q)
        boot[b] = (ps / pr - 1.0) if pr > 0 else math.inf
    lo, hi = (float(x) for x in np.percentile(boot, [2.5, 97.5]))
    if len(real) < 2 or len(sim) < 2:
        note += "; one run or seed: its spread is not carried"
    return real_p, sim_p, (err, lo, hi, note)


def verdict(lo: float, hi: float, tol: float | None) -> tuple[str, bool | None]:
    """(verdict, equivalent) of an error's 95% interval [lo, hi] against the band [-tol, tol].

    FAIL: the whole interval lies outside the band (or is not finite). INCONCLUSIVE: it
    overlaps the band but its half-width exceeds WIDTH_GUARD x tol (too little data to judge;
    never a free pass). PASS otherwise; ``equivalent`` when the interval lies inside the band.
    INFO (not judged) when ``tol`` is None."""
    if tol is None:
        return INFO, None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return FAIL, False
    if hi < -tol or lo > tol:
        return FAIL, False
    if (hi - lo) / 2 > WIDTH_GUARD * tol:
        return INCONCLUSIVE, False
    return PASS, (lo >= -tol and hi <= tol)


def overall_verdict(verdicts: Sequence[str]) -> str:
    """The verdict of a set of judged rows (INFO / N/A rows are ignored): FAIL when any FAILs,
    INCONCLUSIVE when none FAILs but some are INCONCLUSIVE (or nothing was judged), else PASS."""
    judged = [v for v in verdicts if v in (PASS, FAIL, INCONCLUSIVE)]
    if FAIL in judged:
        return FAIL
    if not judged or INCONCLUSIVE in judged:
        return INCONCLUSIVE
    return PASS
