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


# E[e^4] = 3 sigma^4 for a normal residual, so 3 (sum e^2)^2 / sum e^4 would be Satterthwaite's
# value for normal units; heavier-tailed cycle totals (a few long busy periods) make the plug-in
# optimistic, so the factor kept is 1, which measured conservative (coverage 94-99.5%, README).
DF_KURTOSIS = 1.0


def effective_df(e: np.ndarray) -> float:
    """Satterthwaite's degrees of freedom for the variance estimate sum(e_u^2) of a total over
    independent, unequal units: (sum e^2)^2 / sum e^4, between 1 and units - 1 (Satterthwaite
    1946; the small-sample allowance of cluster-robust intervals, Imbens & Kolesar 2016). With
    equal units it is close to units - 1; when a few units (long busy periods) carry most of the
    spread it falls towards their number, and the interval widens as it must."""
    e2 = np.asarray(e, dtype=float) ** 2
    s4 = float((e2 ** 2).sum())
    n = len(e2)
    if s4 == 0 or n < 2:
        return float(max(n - 1, 1))
    return float(min(max(DF_KURTOSIS * e2.sum() ** 2 / s4, 1.0), n - 1))


def ratio_error_interval(sim: Sequence[float], real: Sequence[float], kind: str,
                         tasks: Sequence[float] | None = None) -> Interval:
    """`ratio_error_interval_df` without its degrees of freedom."""
    return ratio_error_interval_df(sim, real, kind, tasks)[0]


def ratio_error_interval_df(sim: Sequence[float], real: Sequence[float], kind: str,
                            tasks: Sequence[float] | None = None) -> tuple[Interval, float]:
    """95% interval of the error between two sides' totals over independent units (regenerative
    cycles of a trace, `gpusim.real.cycles`), a unit's two totals paired (the same tasks on
    both sides). ``rel``: sum(sim) / sum(real) - 1; ``abs`` (rates): (sum(sim) - sum(real)) /
    sum(tasks). Both are ratios of unit sums R = sum(x) / sum(y): the delta method (as
    `ratio_ci`), residuals e_u = x_u - R y_u, se = sqrt(n / (n - 1) sum e^2) / sum(y), with
    Student t on `effective_df` degrees of freedom: the units are independent (each starts
    afresh) but unequal, and a few long busy periods may carry most of the spread."""
    s = np.asarray(sim, dtype=float)
    r = np.asarray(real, dtype=float)
    if kind == "abs":
        x, y, shift = s - r, np.asarray(tasks, dtype=float), 0.0
        note_kind = "difference of rates"
    else:
        if r.sum() == 0:
            return _relative_to_zero(float(s.sum()))
        x, y, shift = s, r, 1.0
        note_kind = "ratio of sums"
    n = len(x)
    est = float(x.sum() / y.sum()) - shift
    if n < 2:
        return (est, math.nan, math.nan, f"{note_kind}: fewer than two regeneration cycles"), 0.0
    e = x - (est + shift) * y
    se = math.sqrt(n / (n - 1) * float((e ** 2).sum())) / float(y.sum())
    df = effective_df(e)
    half = _t_ppf(0.975, df) * se
    note = f"{note_kind} over {n} regeneration cycles (t, {df:.1f} effective df)"
    return (est, est - half, est + half, note), df


SIGN_FLIPS = 4000


def _accepted(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray,
              rs: np.ndarray | float) -> np.ndarray:
    """For each candidate ratio in ``rs``: is its sign-flip p-value above 5%? ``a``, ``b``: the
    flipped sums of ``x`` and ``y`` (one per sign vector)."""
    rs = np.atleast_1d(rs)
    obs = np.abs(x.sum() - rs * y.sum())
    out = np.empty(len(rs), dtype=bool)
    for i in range(0, len(rs), 256):  # bounded memory: 256 x SIGN_FLIPS at a time
        r = rs[i:i + 256, None]
        p = (np.abs(a[None, :] - r * b[None, :]) >= obs[i:i + 256, None] - 1e-12 *
             np.maximum(obs[i:i + 256, None], 1.0)).mean(axis=1)
        out[i:i + 256] = p > 0.05
    return out


@lru_cache(maxsize=4)  # one entry is SIGN_FLIPS x n doubles: 40 MB for 18 runs x 70 cycles
def _signs(n: int, seed: int) -> np.ndarray:
    """SIGN_FLIPS random sign vectors of length n (read-only: shared between calls)."""
    bits = np.random.default_rng(seed).integers(0, 2, size=(SIGN_FLIPS, n), dtype=np.int8)
    w = bits.astype(float) * 2.0 - 1.0
    w.flags.writeable = False
    return w


def _edge(x: np.ndarray, y: np.ndarray, a: np.ndarray, b: np.ndarray, inside: float,
          outside: float) -> float:
    """The accepted ratio nearest ``outside`` between an accepted and a rejected one
    (bisection, to 1e-6 of their distance)."""
    for _ in range(20):
        mid = 0.5 * (inside + outside)
        if _accepted(x, y, a, b, mid)[0]:
            inside = mid
        else:
            outside = mid
    return inside


def signflip_ratio_interval(sim: Sequence[float], real: Sequence[float], kind: str,
                            tasks: Sequence[float] | None = None, *, scale: float,
                            seed: int = 0, units: str = "regeneration cycles") -> Interval:
    """95% interval of the same error as `ratio_error_interval_df` by inverting a sign-flip
    (randomization) test over the units (regeneration cycles): the ratio R is kept when the
    observed sum of residuals x_u - R y_u is not in the outer 5% of its sums with each unit's
    sign flipped at random (Fisher's randomization test for paired differences; Good,
    "Permutation Tests", ch. 3). Exact when each unit's residual is symmetric about zero at the
    true R and units are independent: a real run and its simulated twin (same trace, same
    jitter draws) are exchangeable when the model is right. Unlike the t interval it needs no
    degrees of freedom: when two or three busy periods carry the difference, their own
    residuals bound the ratio, and a t quantile on ~2 df (4.3) made the interval about 1.5
    times wider than its coverage needs (bench/bench_validate.py). ``scale``: a width to
    search around the estimate (the t interval's half-width). Sign vectors from ``seed``:
    same inputs, same interval. NaN bounds when the units cannot exclude a ratio within 128
    times ``scale`` (too few units that differ). ``units``: what a unit is, for the note."""
    s = np.asarray(sim, dtype=float)
    r = np.asarray(real, dtype=float)
    if kind == "abs":
        x, y, shift = s - r, np.asarray(tasks, dtype=float), 0.0
    else:
        if r.sum() == 0:
            return _relative_to_zero(float(s.sum()))
        x, y, shift = s, r, 1.0
    est = float(x.sum() / y.sum())
    note = f"sign-flip interval over {len(x)} {units}"
    w = _signs(len(x), seed)
    a, b = w @ x, w @ y
    half = max(float(scale), 1e-9 * max(abs(est), 1.0))
    for _ in range(7):  # widen the search until both ends are inside it
        rs = est + np.linspace(-2 * half, 2 * half, 201)
        rs[100] = est  # its statistic is 0, so the estimate is always kept
        ok = _accepted(x, y, a, b, rs)
        if not ok[0] and not ok[-1]:
            i, j = int(np.argmax(ok)), len(ok) - 1 - int(np.argmax(ok[::-1]))
            lo = _edge(x, y, a, b, float(rs[i]), float(rs[i - 1]))
            hi = _edge(x, y, a, b, float(rs[j]), float(rs[j + 1]))
            return est - shift, lo - shift, hi - shift, note
        half *= 2
    return est - shift, math.nan, math.nan, note + ": too few units differ to bound it"


def run_effect_check(per_run_errors: Sequence[float], cycle_interval: Interval,
                     cycle_df: float) -> tuple[Interval, float] | None:
    """The interval over runs instead of cycles, when the runs disagree more than the cycles
    allow. Cycles are independent within a run, but a real replay can also carry an effect of
    the whole run (the host's load while it ran, say) that every cycle of it shares; the
    between-cycle spread cannot see that, the spread of the per-run errors can. When the
    per-run errors' variance of the mean exceeds the cycles' by more than F(0.95; runs - 1,
    cycle_df) (a one-sided F test at 5%), the per-run interval is returned: a t interval of
    the per-run errors on runs - 1 degrees of freedom, around the same point error. None
    otherwise, or with fewer than two runs."""
    x = np.asarray(per_run_errors, dtype=float)
    err, lo, hi, note = cycle_interval
    if len(x) < 2 or not (math.isfinite(lo) and math.isfinite(hi)) or cycle_df < 1:
        return None
    from scipy.special import fdtri

    v_runs = float(x.var(ddof=1)) / len(x)
    v_cycles = ((hi - lo) / 2 / _t_ppf(0.975, cycle_df)) ** 2
    if v_runs <= v_cycles * float(fdtri(len(x) - 1, cycle_df, 0.95)):
        return None
    half = _t_ppf(0.975, len(x) - 1) * math.sqrt(v_runs)
    return ((err, err - half, err + half,
             f"runs disagree beyond the cycles' spread (F test): t over {len(x)} runs "
             f"({len(x) - 1} df)"), float(len(x) - 1))


def _weighted_quantiles(sorted_vals: np.ndarray, weights: np.ndarray, q: float) -> np.ndarray:
    """Per row of ``weights`` (reps x n, aligned with ``sorted_vals``): the smallest value whose
    weighted cumulative share reaches q / 100 (the inverted-CDF quantile)."""
    cum = np.cumsum(weights, axis=1)
    target = cum[:, -1:] * (q / 100.0)
    idx = np.minimum((cum < target - 1e-9 * np.maximum(target, 1)).sum(axis=1),
                     len(sorted_vals) - 1)
    return sorted_vals[idx]


def cluster_percentile_interval(real: np.ndarray, real_unit: np.ndarray, sim: np.ndarray,
                                sim_unit: np.ndarray, n_units: int, q: float, *,
                                reps: int = BOOTSTRAP_REPS, seed: int = 0
                                ) -> tuple[float, float, Interval]:
    """(real percentile, sim percentile, interval of sim / real - 1) of pooled values grouped
    in independent units (regeneration cycles), by a 95% percentile bootstrap that resamples
    whole units with the same draw on both sides (a unit's tasks are the same on both sides).
    Percentiles are inverted-CDF (a value that occurs). The resampling seed is fixed: same
    inputs, same interval."""
    rng = np.random.default_rng(seed)
    ro, so = np.argsort(real, kind="stable"), np.argsort(sim, kind="stable")
    rv, ru, sv, su = real[ro], real_unit[ro], sim[so], sim_unit[so]
    ones = np.ones((1, n_units))
    real_p = float(_weighted_quantiles(rv, ones[:, ru], q)[0])
    sim_p = float(_weighted_quantiles(sv, ones[:, su], q)[0])
    note = f"pooled values; bootstrap over {n_units} regeneration cycles"
    if real_p <= 0:
        err = 0.0 if sim_p == real_p else math.inf
        return real_p, sim_p, (err, err, err, note)
    boot = []
    chunk = max(1, min(reps, 2_000_000 // max(len(rv) + len(sv), 1)))
    for start in range(0, reps, chunk):
        counts = rng.multinomial(n_units, np.full(n_units, 1.0 / n_units),
                                 size=min(chunk, reps - start)).astype(float)
        pr = _weighted_quantiles(rv, counts[:, ru], q)
        ps = _weighted_quantiles(sv, counts[:, su], q)
        with np.errstate(divide="ignore", invalid="ignore"):
            boot.append(np.where(pr > 0, ps / pr - 1.0, math.inf))
    lo, hi = (float(x) for x in np.percentile(np.concatenate(boot), [2.5, 97.5]))
    return real_p, sim_p, (sim_p / real_p - 1.0, lo, hi, note)


# Below this many effective degrees of freedom an interval over cycles is not trusted for a
# verdict: its spread would rest on one or two busy periods.
MIN_EFFECTIVE_DF = 2.0


def verdict(lo: float, hi: float, tol: float | None,
            df: float | None = None) -> tuple[str, bool | None]:
    """(verdict, equivalent) of an error's 95% interval [lo, hi] against the band [-tol, tol]:
    an equivalence test (two one-sided tests at 2.5% each, Schuirmann 1987).

    PASS: the whole interval lies inside the band (the error is within tolerance, at 95%).
    FAIL: the whole interval lies outside the band (the error is beyond tolerance, at 95%).
    INCONCLUSIVE: the interval straddles an edge of the band (more data would settle it), is
    undefined, or rests on fewer than MIN_EFFECTIVE_DF degrees of freedom (``df``, when
    given). INFO (not judged) when ``tol`` is None. ``equivalent`` is True exactly on
    PASS."""
    if tol is None:
        return INFO, None
    if math.isnan(lo) or math.isnan(hi) or (df is not None and df < MIN_EFFECTIVE_DF):
        return INCONCLUSIVE, False
    if hi < -tol or lo > tol:
        return FAIL, False
    if -tol <= lo and hi <= tol:
        return PASS, True
    return INCONCLUSIVE, False


def overall_verdict(verdicts: Sequence[str]) -> str:
    """The verdict of a set of judged rows (INFO / N/A rows are ignored): FAIL when any FAILs,
    INCONCLUSIVE when none FAILs but some are INCONCLUSIVE (or nothing was judged), else PASS."""
    judged = [v for v in verdicts if v in (PASS, FAIL, INCONCLUSIVE)]
    if FAIL in judged:
        return FAIL
    if not judged or INCONCLUSIVE in judged:
        return INCONCLUSIVE
    return PASS
