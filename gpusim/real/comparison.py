"""The real-vs-simulated comparison table: one row per metric, each judged by gpusim.stats.

For each metric, the real runs give one value per run and the simulation one value per seed.
The error is sim minus real: in points for rates, relative to the real mean otherwise. Its 95%
interval is `gpusim.stats.welch_interval` (carries the run-to-run spread of BOTH sides), or,
paired (the default of `validate` when seeds >= runs >= 2), `gpusim.stats.paired_interval`:
real run r replays with the jitter draws of simulated replication r (common random numbers), so
the two differ only by real timing and the first min(runs, seeds) pairs are judged by a t
interval on their paired differences; with the shared draws a polling replay tracks its
simulated twin task by task until a race goes the other way, so far fewer runs are needed than
for independent samples. Extra seeds only enter the distribution tests.

Verdict rule (`gpusim.stats.verdict`): FAIL when the whole interval lies outside [-tol, +tol];
INCONCLUSIVE when it overlaps the band but its half-width exceeds 3 x tol (too little data:
never a free pass, and not a failure either); PASS otherwise (``equivalent`` additionally when
the whole interval lies inside the band, the TOST-like statement). The comparison's verdict
(`Comparison.verdict`): FAIL if any judged row FAILs, else INCONCLUSIVE if any is, else PASS.

Tolerances (defaults; overridable): mean wait 5%, p95 wait 10%, success rate 2 points, GET and SET
counts 5%, Redis CPU 25%. Why these: the wait mean and the command counts are what the simulator
exists to predict and are averages over many polls, so a faithful model should be within a few
percent; a p95 rests on a handful of tasks per run, hence the wider band; success rate is the
spec's gate metric, whose threshold (95%) leaves only a few points of room; Redis CPU depends on
per-command costs calibrated on a noisy machine (see gpusim.real.calibrate), so it is looser.
Other rows (timeout rate, p50, attempts, EVAL, PUBLISH, DEL) are reported without a verdict.

Wait percentiles (p50, p95) are taken over the pooled waits of all runs (all seeds), not averaged
per run (one run's p95 rests on a handful of tasks); their interval is a 95% percentile cluster
bootstrap (`gpusim.stats.pooled_percentile_interval`) that resamples whole runs and seeds.

The wait distributions are also compared by a two-sample Kolmogorov-Smirnov test and the
k-sample Anderson-Darling test on the pooled waits. These are information, not a gate: waits are
not independent within a run (a queue couples them), so their p-values are anti-conservative;
immediate acquisitions put an atom at ~2 round trips on both sides, and the simulation's atom is
exactly tied (KS with ties is conservative, and scipy's Anderson-Darling handles ties in its
midrank form).
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from gpusim import stats as st
from gpusim.errors import InputError
from gpusim.real.replay import RealResult, RealRun

__all__ = ["compare", "Comparison", "MetricRow", "DEFAULT_TOLERANCES", "ROWS", "CMDS",
           "sim_samples", "real_samples"]

CMDS = ("GET", "SET", "EVAL", "PUBLISH", "DEL")
DEFAULT_TOLERANCES: dict[str, float] = {
    "wait_mean_s": 0.05, "wait_p95_s": 0.10, "success_rate": 0.02, "GET": 0.05, "SET": 0.05,
    "redis_cpu_s": 0.25,
}
# metric name -> (label, kind): "abs" = difference in points, "rel" = relative to real mean
ROWS: tuple[tuple[str, str, str], ...] = (
    ("success_rate", "success rate", "abs"),
    ("timeout_rate", "timeout rate", "abs"),
    ("wait_mean_s", "wait mean (s)", "rel"),
    ("wait_p50_s", "wait p50 (s)", "rel"),
    ("wait_p95_s", "wait p95 (s)", "rel"),
    ("attempts_per_task", "attempts / task", "rel"),
    ("GET", "GET (commandstats)", "rel"),
    ("SET", "SET (commandstats)", "rel"),
    ("EVAL", "EVAL (commandstats)", "rel"),
    ("PUBLISH", "PUBLISH (commandstats)", "rel"),
    ("DEL", "DEL (commandstats)", "rel"),
    ("redis_cpu_s", "Redis CPU (s)", "rel"),
)
PCT_ROWS = {"wait_p50_s": 50.0, "wait_p95_s": 95.0}
WIDTH_GUARD = st.WIDTH_GUARD


# ------------------------------------------------------------------------------------------
# samples: one metric dict and one wait array per real run / simulated seed
# ------------------------------------------------------------------------------------------
def _metric_values(m: Mapping[str, Any]) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in ("success_rate", "timeout_rate", "wait_mean_s", "wait_p50_s", "wait_p95_s",
                 "redis_cpu_s"):
        v = m.get(name)
        out[name] = None if v is None else float(v)
    if "attempts_per_task" in m and m["attempts_per_task"] is not None:
        out["attempts_per_task"] = float(m["attempts_per_task"])
    elif m.get("polls") is not None and m.get("tasks"):
        out["attempts_per_task"] = float(m["polls"]) / float(m["tasks"])
    else:
        out["attempts_per_task"] = None
    cs = m.get("redis_commandstats") or {}
    for c in CMDS:
        out[c] = float(cs.get(c, 0))
    return out


def real_samples(real: RealResult | Sequence[RealRun]) -> tuple[list[dict], list[np.ndarray]]:
    """Per-run metric dicts and wait arrays from a real result (complete runs only)."""
    runs = real.runs if isinstance(real, RealResult) else list(real)
    runs = [r for r in runs if not r.partial]
    return ([_metric_values(r.metrics()) for r in runs],
            [np.array([rec.wait_s for rec in r.records], dtype=float) for r in runs])


def sim_samples(sim: Any) -> tuple[list[dict], list[np.ndarray]]:
    """Per-seed metric dicts and wait arrays from ``simulate(...)`` results.

    ``sim`` is a SimulationResult (each replication is one sample), or a list of them, or a
    list of ``{'metrics': {...}, 'waits': [...]}`` dicts (synthetic inputs for tests).
    """
    items = sim if isinstance(sim, (list, tuple)) else [sim]
    metrics, waits = [], []
    for it in items:
        if isinstance(it, Mapping):
            metrics.append(_metric_values(it["metrics"]))
            waits.append(np.asarray(it.get("waits", []), dtype=float))
            continue
        for rep in it.replications:
            metrics.append(_metric_values(rep.metrics))
            waits.append(np.array([r.wait_s for r in rep.records], dtype=float))
    return metrics, waits


def _queued_waits(side: Any) -> np.ndarray | None:
    """Waits of the tasks whose first try failed, or None for synthetic inputs."""
    if isinstance(side, tuple):
        return None
    if isinstance(side, RealResult) or (isinstance(side, (list, tuple)) and side
                                        and isinstance(side[0], RealRun)):
        runs = side.runs if isinstance(side, RealResult) else side
        recs = [r for run in runs if not run.partial for r in run.records]
    else:
        items = side if isinstance(side, (list, tuple)) else [side]
        if not items or isinstance(items[0], Mapping):
            return None
        recs = [r for it in items for rep in it.replications for r in rep.records]
    # queued: more than one try (the first try failed), or gave up
    return np.array([r.wait_s for r in recs if r.attempts > 1 or r.acquired_s is None],
                    dtype=float)


def _samples(side: Any, extract: Any) -> tuple[list[dict], list[np.ndarray]]:
    if isinstance(side, tuple) and len(side) == 2 and isinstance(side[0], list):
        return side
    return extract(side)


# ------------------------------------------------------------------------------------------
# the table
# ------------------------------------------------------------------------------------------
@dataclass
class MetricRow:
    name: str
    label: str
    kind: str                       # abs | rel
    real_mean: float | None
    real_sd: float | None
    sim_mean: float | None
    sim_sd: float | None
    error: float | None             # sim - real (abs) or sim / real - 1 (rel)
    ci_low: float | None
    ci_high: float | None
    tolerance: float | None
    verdict: str                    # PASS | FAIL | INCONCLUSIVE | INFO | N/A
    equivalent: bool | None
    note: str = ""

    @property
    def judged(self) -> bool:
        return self.tolerance is not None

    @property
    def half_width(self) -> float | None:
        if self.ci_low is None or self.ci_high is None:
            return None
        return (self.ci_high - self.ci_low) / 2


@dataclass
class Comparison:
    rows: list[MetricRow]
    wait_tests: dict[str, Any]
    n_real: int                     # complete real runs compared
    n_sim: int                      # simulated seeds compared (all of them)
    lateness: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    n_pairs: int = 0                # CRN pairs judged (0: independent samples, Welch)

    @property
    def verdict(self) -> str:
        """PASS when every judged row PASSes; FAIL when any FAILs; INCONCLUSIVE otherwise (some
        row too wide to judge, a judged metric missing on one side, or nothing judged)."""
        return st.overall_verdict(
            [st.INCONCLUSIVE if r.verdict == st.NA else r.verdict
             for r in self.rows if r.judged])

    @property
    def passed(self) -> bool:
        return self.verdict == st.PASS

    def too_wide(self) -> list[MetricRow]:
        """The judged rows whose interval was too wide to judge."""
        return [r for r in self.rows if r.judged and r.verdict == st.INCONCLUSIVE]

    def to_json(self) -> dict[str, Any]:
        return {"schema": "gpusim.validate.compare/1", "verdict": self.verdict,
                "passed": self.passed, "n_real_runs": self.n_real, "n_sim_seeds": self.n_sim,
                "n_pairs": self.n_pairs,
                "rule": "per row: FAIL when the 95% interval of the error lies outside "
                        "[-tol, tol]; INCONCLUSIVE when it overlaps the band but its half-width "
                        f"> {WIDTH_GUARD} x tol; else PASS. Overall: FAIL if any row FAILs, "
                        "else INCONCLUSIVE if any is, else PASS",
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "wait_tests": self.wait_tests, "lateness": self.lateness, "notes": self.notes}


def _sd(x: Sequence[float]) -> float | None:
    return float(np.std(x, ddof=1)) if len(x) > 1 else None


def _pct_row(name: str, label: str, rw: list[np.ndarray], sw: list[np.ndarray], q: float,
             tol: float | None, *, paired: bool) -> MetricRow:
    real_p, sim_p, (err, lo, hi, note) = st.pooled_percentile_interval(rw, sw, q, paired=paired)
    verdict, equiv = st.verdict(lo, hi, tol)
    return MetricRow(name, label, "rel", real_p, _sd([float(np.percentile(w, q)) for w in rw]),
                     sim_p, _sd([float(np.percentile(w, q)) for w in sw]), err, lo, hi, tol,
                     verdict, equiv, note)


def _mean_row(name: str, label: str, kind: str, rm: list[dict], sm: list[dict],
              tol: float | None, *, paired: bool) -> MetricRow:
    rv = np.array([m[name] for m in rm if m.get(name) is not None], dtype=float)
    sv = np.array([m[name] for m in sm if m.get(name) is not None], dtype=float)
    if len(rv) == 0 or len(sv) == 0:
        return MetricRow(name, label, kind, None, None, None, None, None, None, None, tol,
                         st.NA, None, "missing on one side")
    if paired and len(rv) == len(sv):
        err, lo, hi, note = st.paired_interval(rv, sv, kind)
    else:
        err, lo, hi, note = st.welch_interval(rv, sv, kind)
    verdict, equiv = st.verdict(lo, hi, tol)
    return MetricRow(name, label, kind, float(rv.mean()), _sd(rv), float(sv.mean()), _sd(sv),
                     err, lo, hi, tol, verdict, equiv, note)


def _rows(rm: list[dict], rw: list[np.ndarray], sm: list[dict], sw: list[np.ndarray],
          tol: Mapping[str, float | None], paired: bool) -> list[MetricRow]:
    waits_ok = (len(rw) == len(rm) and len(sw) == len(sm) and all(len(w) for w in rw)
                and all(len(w) for w in sw))
    rows = []
    for name, label, kind in ROWS:
        if name in PCT_ROWS and waits_ok:
            rows.append(_pct_row(name, label, rw, sw, PCT_ROWS[name], tol.get(name),
                                 paired=paired))
        else:
            rows.append(_mean_row(name, label, kind, rm, sm, tol.get(name), paired=paired))
    return rows


def wait_tests(real_w: np.ndarray, sim_w: np.ndarray,
               queued: tuple[np.ndarray | None, np.ndarray | None]) -> dict[str, Any]:
    """KS and Anderson-Darling on the pooled waits (information only), and KS on the waits of
    the tasks that queued."""
    from scipy import stats

    tests: dict[str, Any] = {"n_real": int(len(real_w)), "n_sim": int(len(sim_w))}
    if len(real_w) < 2 or len(sim_w) < 2:
        return tests
    ks = stats.ks_2samp(real_w, sim_w)
    tests["ks_statistic"] = float(ks.statistic)
    tests["ks_pvalue"] = float(ks.pvalue)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            ad = stats.anderson_ksamp([real_w, sim_w])
        tests["ad_statistic"] = float(ad.statistic)
        tests["ad_pvalue_capped"] = float(ad.pvalue)  # scipy caps it to [0.001, 0.25]
    except ValueError as exc:
        tests["ad_error"] = str(exc)
    tests["ties_real"] = int(len(real_w) - len(np.unique(real_w)))
    tests["ties_sim"] = int(len(sim_w) - len(np.unique(sim_w)))
    tests["note"] = ("information only: waits within a run are dependent, so p-values are "
                     "anti-conservative; ties (immediate acquisitions) make KS conservative. "
                     "Over all waits the immediate acquisitions dominate (simulated: exactly "
                     "one modelled round trip; real: the spread of measured round trips), so "
                     "the ks_queued_* test repeats KS on the tasks whose first try failed")
    qr, qs = queued
    if qr is not None and qs is not None and len(qr) >= 2 and len(qs) >= 2:
        kq = stats.ks_2samp(qr, qs)
        tests["n_queued_real"], tests["n_queued_sim"] = int(len(qr)), int(len(qs))
        tests["ks_queued_statistic"] = float(kq.statistic)
        tests["ks_queued_pvalue"] = float(kq.pvalue)
    return tests


def _tolerances(tolerances: Mapping[str, float | None] | None) -> dict[str, float | None]:
    tol: dict[str, float | None] = dict(DEFAULT_TOLERANCES)
    if tolerances:
        unknown = set(tolerances) - {n for n, _, _ in ROWS}
        if unknown:
            raise InputError(f"unknown tolerance(s) {sorted(unknown)}", field="tolerances")
        tol.update(tolerances)
    return tol


def compare(real: RealResult | Sequence[RealRun] | tuple[list[dict], list[np.ndarray]],
            sim: Any, *, tolerances: Mapping[str, float | None] | None = None,
            paired: bool = False, sim_cpu: Sequence[float] | None = None) -> Comparison:
    """Side-by-side table of real runs vs simulated seeds; see the module docstring for the rule.

    ``tolerances`` overrides the defaults per metric; a tolerance of None reports the metric
    without judging it. ``paired=True`` (real run r and simulated replication r used the same
    jitter streams, as `run_real` and `simulate` do for one seed) judges the first
    min(runs, seeds) pairs by their paired differences; further seeds then only enter the wait
    distribution tests.

    ``real`` may be a RealResult, a list of RealRun, or pre-extracted ``(metrics, waits)``;
    ``sim`` anything `sim_samples` accepts (or pre-extracted ``(metrics, waits)``).
    ``sim_cpu``: the simulated Redis CPU per sample, replacing ``redis_cpu_s`` (validate uses it
    to predict each CRN twin with its own run's CPU control).
    """
    tol = _tolerances(tolerances)
    queued = _queued_waits(real), _queued_waits(sim)
    rm, rw = _samples(real, real_samples)
    sm, sw = _samples(sim, sim_samples)
    if sim_cpu is not None:
        if len(sim_cpu) != len(sm):
            raise InputError("sim_cpu needs one value per simulated sample", field="sim_cpu")
        sm = [{**m, "redis_cpu_s": float(c)} for m, c in zip(sm, sim_cpu)]
    if not rm:
        raise InputError("no complete real run to compare", field="runs")
    if not sm:
        raise InputError("no simulated seed to compare", field="seeds")
    n_real, n_sim = len(rm), len(sm)
    all_rw, all_sw = rw, sw
    n_pairs = min(n_real, n_sim)
    paired = paired and n_pairs >= 2 and len(rw) == n_real and len(sw) == n_sim
    if paired:
        rm, rw, sm, sw = rm[:n_pairs], rw[:n_pairs], sm[:n_pairs], sw[:n_pairs]
    rows = _rows(rm, rw, sm, sw, tol, paired)
    real_w = np.concatenate(all_rw) if all_rw else np.array([])
    sim_w = np.concatenate(all_sw) if all_sw else np.array([])
    # n_sim counts every simulated seed (the extra ones enter the distribution tests); the
    # title used to print the judged pairs' count there and so understated what was simulated
    out = Comparison(rows, wait_tests(real_w, sim_w, queued), n_real, n_sim,
                     n_pairs=n_pairs if paired else 0)
    if paired:
        out.notes.append(f"paired: real run r vs simulated replication r (same jitter streams), "
                         f"{n_pairs} pairs")
    return out


def runs_needed(half_width: float, guard: float, n: int, cap: int = 1000) -> int:
    """Smallest number of runs whose t interval would be at most ``guard`` wide (half-width),
    if the per-run spread stays what ``n`` runs showed: half-width = t(n-1) sd / sqrt(n)."""
    from scipy import stats

    if n < 2:
        return max(2, n + 1)
    sd = half_width * math.sqrt(n) / float(stats.t.ppf(0.975, n - 1))
    for m in range(n + 1, cap + 1):
        if float(stats.t.ppf(0.975, m - 1)) * sd / math.sqrt(m) <= guard:
            return m
    return cap


def advice(cmp_: Comparison, *, runs: int, tasks: int | None = None) -> str:
    """What to do about an INCONCLUSIVE comparison, in numbers: which rows were too wide and by
    how much, and about how many runs would bring each under the guard (`runs_needed`: the
    run-to-run spread held fixed, the t quantile and 1 / sqrt(n) shrinking)."""
    parts = []
    need = runs
    for r in cmp_.too_wide():
        unit = " pt" if r.kind == "abs" else "%"
        guard = WIDTH_GUARD * (r.tolerance or 0.0)
        hw = r.half_width
        if hw is not None and math.isfinite(hw) and guard > 0:
            parts.append(f"{r.label} ±{hw * 100:.1f}{unit} (tolerance ±{r.tolerance * 100:g}"
                         f"{unit}, judged up to ±{guard * 100:.3g}{unit})")
            need = max(need, runs_needed(hw, guard, max(runs, 1)))
    missing = [r.label for r in cmp_.rows if r.judged and r.verdict == st.NA]
    msg = ""
    if parts:
        msg = "too wide to judge: " + "; ".join(parts) + ". "
    if missing:
        msg += "missing on one side: " + ", ".join(missing) + ". "
    more = (f"try about --runs {need} (and --seeds >= that)" if need > runs
            else "try more --runs")
    msg += more + " or a longer trace" + (f" (this one has {tasks} tasks)" if tasks else "")
    return msg
