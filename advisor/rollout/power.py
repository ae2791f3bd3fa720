"""How many lock acquisitions a canary stage needs before its verdict means anything.

The judge (advisor.rollout.judge) passes a rate gate when the whole 95% Wilson score interval
of the observed rate lies on the good side of the threshold. The Wilson interval is the set of
rates p0 that the one-sample score test does not reject (Wilson 1927; Agresti & Coull 1998,
"Approximate is better than 'exact' for interval estimation of binomial proportions", The
American Statistician 52(2)), so "the interval lies below p0" is exactly "the one-sided score
test of H0: rate >= p0 rejects at alpha = 0.025", i.e.

    x < n p0 - z sqrt(n p0 (1 - p0)),   z = 1.959964 (the 97.5% normal quantile).

The minimum number of acquisitions of a gate is the smallest n at which that happens with
probability >= 0.8 when the true rate is the one the plan predicts (p1):

    exact:  n_min = min { n : P_{Binomial(n, p1)}(X <= c(n)) >= 0.8 },
            c(n) = ceil(n p0 - z sqrt(n p0 q0)) - 1
    normal: n = ((z_a sqrt(p0 q0) + z_b sqrt(p1 q1)) / (p0 - p1))^2,  z_a = 1.96, z_b = 0.8416

The normal formula is the textbook one-sample proportion sample size (Chow, Shao & Wang,
"Sample Size Calculations in Clinical Research", 2nd ed., 2008, section 4.1; Fleiss, Levin &
Paik, "Statistical Methods for Rates and Proportions", 3rd ed., 2003, chapter 2); it is
reported beside the exact figure, which is the one used (the normal formula is poor when p1 is
near 0, the usual case for timeouts). Power is not monotone in n for a discrete test (the
"saw-tooth" of binomial power), so n_min is the first n that reaches it, scanned one by one.

Why alpha = 0.025 one-sided and not 0.05: the judge uses two-sided 95% intervals, whose ends
are one-sided 2.5% tests; a plan sized for 5% would give the judge only about 70% power.

A gate whose predicted rate is on the bad side gets the n at which the interval lies wholly
on the bad side (a FAIL) with probability 0.8 instead; a predicted rate exactly at the
threshold has no such n (None).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

Z_975 = 1.959963984540054      # two-sided 95% interval = one-sided alpha 0.025
Z_POWER = 0.8416212335729143   # 80% power
TARGET_POWER = 0.8
N_MAX = 2_000_000              # beyond this a stage cannot be judged in practice

POWER_METHOD = (
    "exact binomial power of the judge's own test (whole 95% Wilson interval on one side of "
    "the threshold = one-sided score test at alpha 0.025), smallest n with power >= 0.8 at "
    "the predicted rate; the normal-approximation n = ((z_a sqrt(p0 q0) + z_b sqrt(p1 q1)) / "
    "(p0 - p1))^2 (Chow, Shao & Wang 2008, sec. 4.1) is given beside it")


def wilson(k: int, n: int, z: float = Z_975) -> tuple[float, float]:
    """Wilson score interval of k successes in n trials (95% by default)."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    den = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / den
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / den
    lo = 0.0 if k == 0 else max(0.0, centre - half)    # exact ends: no rounding residue
    hi = 1.0 if k == n else min(1.0, centre + half)
    return lo, hi


def _bad_is_high(op: str) -> bool:
    """'<' / '<=' gates bound a bad rate from above; '>=' gates a good rate from below."""
    return op != ">="


def power_at(n: np.ndarray, p0: float, p1: float, op: str, *, decide: str = "pass",
             z: float = Z_975) -> np.ndarray:
    """P(the judge's interval lies wholly on the `decide` side of p0) for n draws at rate p1.

    Vectorised over n. `decide` "pass": on the gate's good side; "fail": on its bad side.
    """
    from scipy.stats import binom

    n = np.asarray(n, dtype=np.int64)
    spread = z * np.sqrt(n * p0 * (1 - p0))
    below = (op == ">=") == (decide == "fail")   # want the interval below p0
    if below:   # interval below p0  <=>  x < n p0 - z sqrt(n p0 q0)
        c = np.ceil(n * p0 - spread).astype(np.int64) - 1
        return np.where(c >= 0, binom.cdf(c, n, p1), 0.0)
    # interval at or above p0 (lower end >= p0)  <=>  x >= n p0 + z sqrt(n p0 q0)
    c = np.ceil(n * p0 + spread).astype(np.int64) - 1
    return np.where(c < n, binom.sf(c, n, p1), 0.0)


def n_normal(p0: float, p1: float) -> int | None:
    """The normal-approximation sample size (None when p1 == p0)."""
    if p1 == p0:
        return None
    num = Z_975 * math.sqrt(p0 * (1 - p0)) + Z_POWER * math.sqrt(p1 * (1 - p1))
    return max(1, math.ceil((num / (p0 - p1)) ** 2))


@dataclass(frozen=True)
class GateSize:
    """The minimum acquisitions of one gate."""
    decide: str            # "pass" (predicted on the good side) or "fail"
    n_exact: int | None    # None: the predicted rate sits on the threshold (or beyond N_MAX)
    n_normal: int | None
    power_at_n: float | None

    def to_json(self) -> dict:
        return {"decides": self.decide.upper(), "n_exact": self.n_exact,
                "n_normal_approx": self.n_normal,
                "power_at_n": None if self.power_at_n is None else round(self.power_at_n, 6)}


def gate_size(p0: float, p1: float, op: str, *, target: float = TARGET_POWER) -> GateSize:
    """Smallest n at which the judge decides this gate (in the predicted direction) with
    probability >= target, the true rate being p1."""
    good = p1 < p0 if _bad_is_high(op) else p1 >= p0
    decide = "pass" if good else "fail"
    if p1 == p0 or not 0 < p0 < 1:
        return GateSize(decide, None, n_normal(p0, p1), None)
    guess = n_normal(p0, p1) or 1
    hi = max(64, 4 * guess)
    while True:
        ns = np.arange(1, hi + 1)
        pw = power_at(ns, p0, p1, op, decide=decide)
        hit = np.flatnonzero(pw >= target)
        if len(hit):
            i = int(hit[0])
            return GateSize(decide, int(ns[i]), n_normal(p0, p1), float(pw[i]))
        if hi >= N_MAX:
            return GateSize(decide, None, n_normal(p0, p1), None)
        hi = min(N_MAX, hi * 4)


def hours_to_collect(n: int | None, per_hour: float) -> float | None:
    """Expected hours to see n acquisitions at `per_hour` acquisitions an hour."""
    if n is None or per_hour <= 0:
        return None
    return n / per_hour
