"""The real-vs-simulated comparison table: one row per metric, each judged by gpusim.stats.

The error is sim minus real: in points for rates, relative to the real mean otherwise.

Intervals. With the trace's regeneration cycles (``cycles``, `gpusim.real.cycles`; what
`validate` passes), every per-task row (success rate, timeout rate, mean wait, attempts, GET,
SET) totals each cycle, averages over the runs (CRN pairs: real run r and simulated replication
r shared their jitter draws; the first min(runs, seeds) of each) and is judged by
`gpusim.stats.signflip_ratio_interval` when both sides have as many runs (the paired case:
run r's total in a cycle and its twin's are exchangeable under a right model and independent
of every other run and cycle, so each (run, cycle) is a unit of the sign-flip test it inverts,
which is exact), else by `gpusim.stats.ratio_error_interval`, a delta-method t interval of
the ratio of sums over the cycles with Satterthwaite's effective degrees of freedom (also the
yardstick of the run-effect check); the wait percentiles by a bootstrap
of whole cycles (`gpusim.stats.cluster_percentile_interval`). Rows that are one number per run
(EVAL, PUBLISH, DEL, Redis CPU) are judged over runs (`gpusim.stats.paired_interval`, or
`welch_interval` for independent samples). Without cycles (synthetic inputs) every row is
judged over runs.

Verdict rule (`gpusim.stats.verdict`, an equivalence test): PASS when the whole 95% interval
lies inside [-tol, +tol]; FAIL when it lies wholly outside; INCONCLUSIVE when it straddles an
edge, or (t intervals) rests on fewer than `gpusim.stats.MIN_EFFECTIVE_DF` effective degrees
of freedom, or (sign-flip) too few units differ to bound it. The
comparison's verdict (`Comparison.verdict`): FAIL if any judged row FAILs, PASS if every judged
row PASSes, else INCONCLUSIVE.

Tolerances (defaults; overridable): mean wait 5%, p95 wait 10%, success rate 2 points, GET and
SET counts 5%. Why these: the wait mean and the command counts are what the simulator exists to
predict, so a faithful model should be within a few percent; a p95 rests on the tail, hence the
wider band; success rate is the spec's gate metric, whose threshold (95%) leaves only a few
points of room. Redis CPU is reported without a verdict by default (one value per run; a cluster
file's costs are not this host's; CPU per command moves with the host's other load, see
gpusim.real.calibrate); other rows (timeout rate, p50, attempts, EVAL, PUBLISH, DEL) likewise.

Wait percentiles (p50, p95) are taken over the pooled waits of all runs (all seeds), not averaged
per run (one run's p95 rests on a handful of tasks); without cycles their interval is a 95%
percentile cluster bootstrap that resamples whole runs and seeds
(`gpusim.stats.pooled_percentile_interval`).

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
from gpusim.real.task_outcomes import TaskOutcomes

__all__ = ["compare", "Comparison", "MetricRow", "DEFAULT_TOLERANCES", "ROWS", "CMDS",
           "sim_samples", "real_samples"]

CMDS = ("GET", "SET", "EVAL", "PUBLISH", "DEL")
DEFAULT_TOLERANCES: dict[str, float] = {
    "wait_mean_s": 0.05, "wait_p95_s": 0.10, "success_rate": 0.02, "GET": 0.05, "SET": 0.05,
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
RULE = ("per judged row: PASS when the whole 95% interval of the error lies inside "
        "[-tol, +tol] (equivalence), FAIL when it lies wholly outside, INCONCLUSIVE when it "
        "straddles an edge. Overall: FAIL if any row FAILs, PASS if every judged row PASSes, "
        "else INCONCLUSIVE; a FAIL is INCONCLUSIVE instead when a real run lost the replay's "
        "schedule and the runs that kept it do not FAIL on their own (the host, not the "
        "model, may be what differs)")


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
    n_pairs: int = 0                # CRN pairs judged (0: independent samples)
    n_cycles: int = 0               # regeneration cycles of the trace (0: judged on runs)
    # why the real runs may not be replays of the trace's schedule (None: they kept it)
    off_schedule: str | None = None

    @property
    def rows_verdict(self) -> str:
        """PASS when every judged row PASSes; FAIL when any FAILs; INCONCLUSIVE otherwise (some
        row's interval straddles its band, a judged metric missing on one side, or nothing
        judged)."""
        return st.overall_verdict(
            [st.INCONCLUSIVE if r.verdict == st.NA else r.verdict
             for r in self.rows if r.judged])

    @property
    def verdict(self) -> str:
        """`rows_verdict`, except that a FAIL is INCONCLUSIVE when a real run lost the replay's
        schedule and the runs that kept it do not FAIL on their own (`off_schedule`, set by
        `gpusim.real.validate.judge_schedule`): a replay stalled by its host is not the lock
        protocol the model describes, so the difference may be the host's."""
        v = self.rows_verdict
        return st.INCONCLUSIVE if v == st.FAIL and self.off_schedule else v

    @property
    def passed(self) -> bool:
        return self.verdict == st.PASS

    def too_wide(self) -> list[MetricRow]:
        """The judged rows left INCONCLUSIVE (an interval straddling its band, or too few
        effective degrees of freedom)."""
        return [r for r in self.rows if r.judged and r.verdict == st.INCONCLUSIVE]

    def to_json(self) -> dict[str, Any]:
        return {"schema": "gpusim.validate.compare/1", "verdict": self.verdict,
                "passed": self.passed, "n_real_runs": self.n_real, "n_sim_seeds": self.n_sim,
                "n_pairs": self.n_pairs, "n_cycles": self.n_cycles,
                "rule": RULE,
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "wait_tests": self.wait_tests, "lateness": self.lateness,
                "off_schedule": self.off_schedule, "notes": self.notes}


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
    # one value a side: no spread to judge by (the interval is the point)
    verdict, equiv = st.verdict(lo, hi, tol, 0.0 if len(rv) < 2 and len(sv) < 2 else None)
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


# rows judged on regeneration cycles: metric name -> TaskOutcomes field, and whether the
# row's value is a per-task mean (rates, waits, attempts) or a per-run total (GET, SET)
CYCLE_FIELDS = {"success_rate": "acquired", "timeout_rate": "timeout", "wait_mean_s": "wait_s",
                "attempts_per_task": "attempts", "GET": "gets", "SET": "sets"}
TOTALS = {"GET", "SET"}


def _known(real: np.ndarray, sim: np.ndarray) -> np.ndarray:
    """Tasks known in every run of both sides."""
    return np.isfinite(real).all(axis=0) & np.isfinite(sim).all(axis=0)


def _run_cycle_units(v: np.ndarray, cyc: np.ndarray, k: int) -> np.ndarray:
    """(runs x tasks) values totalled per run and cycle, flattened run by run."""
    return np.concatenate([np.bincount(cyc, weights=row, minlength=k) for row in v])


def _cycle_row(name: str, label: str, kind: str, real: np.ndarray, sim: np.ndarray,
               cycles: np.ndarray, tol: float | None) -> MetricRow:
    """One row from (runs x tasks) values: per-cycle totals of the per-task means over runs,
    judged by the sign-flip interval over (run, cycle) units when the sides have as many runs,
    else the t interval."""
    m = _known(real, sim)
    if not m.any():
        return MetricRow(name, label, kind, None, None, None, None, None, None, None, None,
                         st.NA, None, "not available on one side")
    r, s = real[:, m], sim[:, m]
    cyc = np.unique(cycles[m], return_inverse=True)[1]
    k = int(cyc.max()) + 1

    def per_cycle(v: np.ndarray) -> np.ndarray:
        return np.bincount(cyc, weights=v, minlength=k)

    x, y, n = per_cycle(s.mean(axis=0)), per_cycle(r.mean(axis=0)), per_cycle(np.ones(r.shape[1]))
    (err, lo, hi, note), df = st.ratio_error_interval_df(x, y, kind, n)
    runs = None
    if r.shape[0] == s.shape[0] >= 2:  # paired runs: a whole-run effect the cycles miss?
        tr, ts = r.sum(axis=1), s.sum(axis=1)
        with np.errstate(divide="ignore", invalid="ignore"):
            per_run_err = (ts - tr) / r.shape[1] if kind == "abs" else ts / tr - 1.0
        runs = st.run_effect_check(per_run_err, (err, lo, hi, note), df)
        if runs is not None:
            (err, lo, hi, note), df = runs
    if r.shape[0] == s.shape[0] and runs is None and math.isfinite(lo) and math.isfinite(hi):
        # as many runs as twins: run r's cycle c and its twin's are exchangeable under a right
        # model, and independent of every other (run, cycle), so each is a unit of the exact
        # sign-flip interval, which replaces the t (its df rule no longer applies)
        runs_n = r.shape[0]
        ux, uy, un = (_run_cycle_units(v, cyc, k) / runs_n for v in (s, r, np.ones_like(r)))
        err, lo, hi, note = st.signflip_ratio_interval(
            ux, uy, kind, un, scale=(hi - lo) / 2,
            units=f"(run, cycle) units ({runs_n} runs x {k} regeneration cycles)")
        df = math.inf
    per_run = (lambda v: v.sum(axis=1)) if name in TOTALS else (lambda v: v.mean(axis=1))
    verdict, equiv = st.verdict(lo, hi, tol, df)
    if tol is not None and df < st.MIN_EFFECTIVE_DF and not math.isnan(lo):
        note += f"; fewer than {st.MIN_EFFECTIVE_DF:g} effective df: not judged"
    return MetricRow(name, label, kind, float(per_run(r).mean()), _sd(per_run(r)),
                     float(per_run(s).mean()), _sd(per_run(s)), err,
                     None if math.isnan(lo) else lo, None if math.isnan(hi) else hi, tol,
                     verdict, equiv, note)


def _cycle_pct_row(name: str, label: str, real: np.ndarray, sim: np.ndarray,
                   cycles: np.ndarray, q: float, tol: float | None) -> MetricRow:
    """A pooled wait percentile, its interval bootstrapped over whole cycles."""
    m = _known(real, sim)
    cyc = np.unique(cycles[m], return_inverse=True)[1]
    k = int(cyc.max()) + 1 if m.any() else 0
    if k < 2:
        return MetricRow(name, label, "rel", None, None, None, None, None, None, None, tol,
                         st.NA, None, "fewer than two cycles with known waits")
    r, s = real[:, m], sim[:, m]
    real_p, sim_p, (err, lo, hi, note) = st.cluster_percentile_interval(
        r.ravel(), np.tile(cyc, r.shape[0]), s.ravel(), np.tile(cyc, s.shape[0]), k, q)
    verdict, equiv = st.verdict(lo, hi, tol)
    return MetricRow(name, label, "rel", real_p, _sd(np.percentile(r, q, axis=1)), sim_p,
                     _sd(np.percentile(s, q, axis=1)), err, lo, hi, tol, verdict, equiv, note)


def _cycle_rows(real: Any, sim: Any, cycles: np.ndarray, rm: list[dict], sm: list[dict],
                tol: Mapping[str, float | None], paired: bool) -> list[MetricRow]:
    """Every row: per-task rows on cycles, per-run rows (EVAL, PUBLISH, DEL, Redis CPU) on
    runs. ``real``/``sim`` are TaskOutcomes; ``rm``/``sm`` per-run metric dicts (may be [])."""
    rows = []
    for name, label, kind in ROWS:
        t = tol.get(name)
        if name in CYCLE_FIELDS:
            f = CYCLE_FIELDS[name]
            rows.append(_cycle_row(name, label, kind, real.field(f), sim.field(f), cycles, t))
        elif name in PCT_ROWS:
            rows.append(_cycle_pct_row(name, label, real.wait_s, sim.wait_s, cycles,
                                       PCT_ROWS[name], t))
        elif rm and sm:
            rows.append(_mean_row(name, label, kind, rm, sm, t, paired=paired))
        else:
            rows.append(MetricRow(name, label, kind, None, None, None, None, None, None, None,
                                  None, st.NA, None, "not available on one side"))
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


def _pairing(n_real: int, n_sim: int, paired: bool, need: int) -> tuple[bool, int]:
    n_pairs = min(n_real, n_sim)
    return paired and n_pairs >= need, n_pairs


def _is_simulation(side: Any) -> bool:
    items = side if isinstance(side, (list, tuple)) else [side]
    return bool(items) and all(hasattr(it, "replications") for it in items)


def _side_outcomes(side: Any, n_tasks: int, time_scale: float, sim_side: bool) -> TaskOutcomes:
    if isinstance(side, TaskOutcomes):
        return side
    if sim_side or _is_simulation(side):
        items = side if isinstance(side, (list, tuple)) else [side]
        runs = [rep.records for it in items for rep in it.replications]
        # a simulation with time_scale reports replay seconds, like the real runs
    else:
        all_runs = side.runs if isinstance(side, RealResult) else list(side)
        runs = [r.records for r in all_runs if not r.partial]
    return TaskOutcomes.from_records(runs, n_tasks, time_scale)


def _scaled(metrics: list[dict], waits: list[np.ndarray], time_scale: float
            ) -> tuple[list[dict], list[np.ndarray]]:
    """Waits in trace seconds: replay seconds x the time scale."""
    if time_scale == 1.0:
        return metrics, waits
    keys = ("wait_mean_s", "wait_p50_s", "wait_p95_s")
    return ([{k: (v * time_scale if k in keys and v is not None else v) for k, v in m.items()}
             for m in metrics], [w * time_scale for w in waits])


def compare(real: Any, sim: Any, *, tolerances: Mapping[str, float | None] | None = None,
            paired: bool = False, sim_cpu: Sequence[float] | None = None,
            cycles: np.ndarray | None = None, time_scale: float = 1.0) -> Comparison:
    """Side-by-side table of real runs vs simulated seeds; see the module docstring for the rule.

    ``cycles`` (`gpusim.real.cycles.regeneration_cycles` of the trace): per-task rows are judged
    on regeneration cycles (the information inside each run); without it (synthetic inputs),
    every row is judged on the spread between runs. ``paired=True``: real run r and simulated
    replication r used the same jitter streams (as `run_real` and `simulate` do for one seed),
    so the first min(runs, seeds) pairs are compared; further seeds only enter the wait
    distribution tests. ``tolerances`` overrides the defaults per metric; None reports a metric
    without judging it. ``time_scale``: waits are reported in trace seconds (replay x scale).

    ``real`` may be a RealResult, a list of RealRun, pre-extracted ``(metrics, waits)`` or (with
    ``cycles``) a TaskOutcomes (an observed record: its per-run rows are not available);
    ``sim`` anything `sim_samples` accepts. ``sim_cpu``: the simulated Redis CPU per sample,
    replacing ``redis_cpu_s`` (validate predicts each CRN twin with its own run's control).
    """
    tol = _tolerances(tolerances)
    observed = isinstance(real, TaskOutcomes)
    queued = (None, None) if observed else tuple(
        None if q is None else q * time_scale for q in (_queued_waits(real), _queued_waits(sim)))
    if observed:
        rm, rw = [], [real.wait_s[0][np.isfinite(real.wait_s[0])] / time_scale]
    else:  # a simulation may stand in for the real side (sim against sim: tests, benches)
        rm, rw = _samples(real, sim_samples if _is_simulation(real) else real_samples)
    sm, sw = _samples(sim, sim_samples)
    rm, rw = _scaled(rm, rw, time_scale)
    sm, sw = _scaled(sm, sw, time_scale)
    if sim_cpu is not None:
        if len(sim_cpu) != len(sm):
            raise InputError("sim_cpu needs one value per simulated sample", field="sim_cpu")
        sm = [{**m, "redis_cpu_s": float(c)} for m, c in zip(sm, sim_cpu)]
    n_real = real.runs if observed else len(rm)
    if not n_real:
        raise InputError("no complete real run to compare", field="runs")
    if not sm:
        raise InputError("no simulated seed to compare", field="seeds")
    n_sim = len(sm)
    all_rw, all_sw = rw, sw
    if cycles is not None:
        ro = _side_outcomes(real, len(cycles), time_scale, False)
        so = _side_outcomes(sim, len(cycles), time_scale, True)
        # pair only when every real run has its twin (else all runs and all seeds, averaged)
        paired, n_pairs = _pairing(n_real, n_sim, paired and not observed and n_sim >= n_real, 1)
        if paired:
            ro, so, rm, sm = ro.first(n_pairs), so.first(n_pairs), rm[:n_pairs], sm[:n_pairs]
        rows = _cycle_rows(ro, so, cycles, rm, sm, tol, paired and n_pairs >= 2)
    else:
        paired, n_pairs = _pairing(n_real, n_sim, paired, 2)
        paired = paired and len(rw) == n_real and len(sw) == n_sim
        if paired:
            rm, rw, sm, sw = rm[:n_pairs], rw[:n_pairs], sm[:n_pairs], sw[:n_pairs]
        rows = _rows(rm, rw, sm, sw, tol, paired)
    real_w = np.concatenate(all_rw) if all_rw else np.array([])
    sim_w = np.concatenate(all_sw) if all_sw else np.array([])
    out = Comparison(rows, wait_tests(real_w, sim_w, queued), n_real, n_sim,
                     n_pairs=n_pairs if paired else 0,
                     n_cycles=int(cycles.max()) + 1 if cycles is not None and len(cycles) else 0)
    if paired:
        out.notes.append(f"paired: real run r vs simulated replication r (same jitter streams), "
                         f"{n_pairs} pairs")
    return out


def data_factor(row: MetricRow) -> float | None:
    """About how many times more data (runs, or a longer trace) would make an INCONCLUSIVE
    row conclude: its interval must shrink (as 1 / sqrt(data)) to fit inside the band, or, when
    the error itself is beyond the band, to clear it; None when the error sits on the edge."""
    hw, tol = row.half_width, row.tolerance
    if hw is None or tol is None or row.error is None or not math.isfinite(hw) or hw <= 0:
        return None
    room = abs(abs(row.error) - tol)
    if room <= 0:
        return None
    return (hw / room) ** 2


def advice(cmp_: Comparison, *, runs: int, tasks: int | None = None, lanes: int = 1,
           run_s: float | None = None) -> str:
    """What to do about an INCONCLUSIVE comparison, in numbers: which rows straddle an edge of
    their band, their error and half-width, and about how many runs would settle each if the
    error stayed where it is (`data_factor`); with ``run_s`` (a real run's mean length), what
    those runs cost at ``lanes`` side by side."""
    parts = []
    need = runs
    for r in cmp_.too_wide():
        unit = " pt" if r.kind == "abs" else "%"
        hw = r.half_width
        if hw is None or r.error is None or not math.isfinite(hw):
            parts.append(f"{r.label} (no interval)")
            continue
        parts.append(f"{r.label} {r.error * 100:+.1f}{unit} ±{hw * 100:.1f}{unit} (tolerance "
                     f"±{(r.tolerance or 0) * 100:g}{unit})")
        f = data_factor(r)
        if f is not None:
            need = max(need, math.ceil(runs * f))
    msg = ""
    if parts:
        msg = "interval straddles the tolerance: " + "; ".join(parts) + ". "
    more = (f"try about --runs {min(need, 1000)}" if need > runs else "try more --runs")
    if need > runs and run_s:
        rounds = math.ceil(min(need, 1000) / max(lanes, 1))
        more += (f" ({rounds} rounds of {lanes} lane{'s' if lanes > 1 else ''} at about "
                 f"{run_s:.0f} s a run: about {rounds * run_s / 60:.0f} min of replay; more "
                 "--lanes on a host with more cores)")
    msg += more + " or a longer trace" + (f" (this one has {tasks} tasks)" if tasks else "")
    return msg
