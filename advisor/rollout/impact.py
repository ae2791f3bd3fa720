"""`gpusim impact`: what a gpu_lock change did, from observed outcomes (GPU_LOCK_CONFIG_005).

Input: a trace with observed outcomes (rows with `wait_s` and `outcome`, traces/README.md), the
change time T, and the configs before and after. Output: the spec's config-impact JSON, field
by field (`config_change_time`; `before` and `after` with the gpu_lock values, `avg_wait_time`
and `timeout_rate`; `impact_summary` with `wait_time_improvement`, `timeout_rate_change` and a
`recommendation`), plus a `details` object with the counts, 95% intervals, the rule that
decided and, with a rec.json, the prediction beside what happened.

Windows: before = tasks that started acquiring in [T - window, T), after = [T, T + window). The
baseline resets at the change: the after window counts only tasks that started acquiring at or
after T. A task that started before T read the old config (YiVideo reads gpu_lock when a task
starts acquiring), so it counts before, even when it ended after T.

Intervals (95%): the mean wait by batch means over 10 batches of consecutive tasks (waits in a
queue are correlated, so tasks are not independent samples; consecutive batches nearly are);
the timeout rate by the wider of the Wilson score interval and the batch-means interval (Wilson
alone assumes independent tasks; batch means alone is zero-width with no timeouts). Intervals
of a change combine the two windows' half-widths in quadrature (independent windows, normal
approximation).
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np

from gpusim import InputError, LockSettings, Trace, config_digest, ratio_ci

# gpusim.traces.observed's outcome codes (the advisor sees only gpusim's front door; a test
# holds these equal to the module's constants).
OBSERVED_ACQUIRED, OBSERVED_TIMEOUT = 0, 1
TIMEOUT_GATE = 0.05        # the spec's task timeout rate gate and rollback trigger (5%)
Z95 = 1.959963984540054    # two-sided 95% normal quantile
BATCHES = 10
SCHEMA = "gpusim.config-impact/1"


def wilson(k: int, n: int) -> tuple[float, float]:
    """Wilson score 95% interval of a proportion k / n (n > 0)."""
    p = k / n
    z2 = Z95 * Z95
    centre = (p + z2 / (2 * n)) / (1 + z2 / n)
    half = Z95 * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n)) / (1 + z2 / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def default_min_tasks(gate: float = TIMEOUT_GATE) -> int:
    """The fewest tasks at which a window with no timeout at all can show that its timeout
    rate is below the gate: the smallest n whose Wilson 95% upper bound of 0 / n is < gate
    (73 for 5%). With fewer, no outcome of the window can pass the spec's timeout gate."""
    n = 1
    while wilson(0, n)[1] >= gate:
        n += 1
    return n


MIN_TASKS = default_min_tasks()
MIN_TASKS_WHY = (f"{MIN_TASKS} tasks: the fewest at which a window with no timeout at all shows "
                 f"a timeout rate below the spec's 5% (Wilson 95% upper bound of 0 of n < 0.05)")

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([smhdw]?)\s*$")
_UNIT_S = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}


def parse_duration(text: str, *, field: str = "--window") -> float:
    """`7d`, `12h`, `30m`, `90s`, `3600` (seconds) -> seconds (> 0)."""
    m = _DURATION.match(text)
    value = float(m.group(1)) * _UNIT_S[m.group(2)] if m else math.nan
    if not (value > 0 and math.isfinite(value)):
        raise InputError(f"expected a duration such as 7d, 12h, 30m, 90s or seconds, got "
                         f"{text!r}", field=field)
    return value


def parse_change_time(text: str, trace: Trace, field: str = "--change-time") -> float:
    """Trace seconds (a number: the frame of the trace's arrival_s) or an ISO 8601 time (the
    trace must then carry timestamps). Naive ISO times are UTC, as in traces."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is not None:
        if not math.isfinite(value):
            raise InputError(f"must be finite, got {text!r}", field=field)
        return value
    try:
        ts = datetime.fromisoformat(text.strip())
    except ValueError:
        raise InputError(f"expected trace seconds or an ISO 8601 time, got {text!r}",
                         field=field) from None
    if trace.start_epoch is None:
        raise InputError("an ISO time needs a trace with timestamps (this one has arrival_s "
                         "only): give the change time in trace seconds", file=trace.source,
                         field=field)
    ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    return ts.timestamp() - trace.start_epoch


def iso_time(trace: Trace, t_s: float) -> str:
    """The change time as the spec writes it (UTC, Z); a trace without timestamps has no wall
    clock, so the time is given from the trace's start: `trace+3600s`."""
    if trace.start_epoch is None:
        return f"trace+{t_s:g}s"
    ts = datetime.fromtimestamp(trace.start_epoch + t_s, UTC)
    spec = "milliseconds" if ts.microsecond else "seconds"
    return ts.isoformat(timespec=spec).replace("+00:00", "Z")


def _r(x: float | None) -> float | None:
    """6 significant digits: readable, and the same bytes every run."""
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    return float(f"{x:.6g}")


def _ci(ci: tuple[float, float] | list[float] | None) -> list[float | None] | None:
    return None if ci is None else [_r(ci[0]), _r(ci[1])]


@dataclass(frozen=True)
class WindowStats:
    """Observed outcomes of the tasks that started acquiring in [lo, hi)."""
    lo: float
    hi: float
    covered_s: float
    tasks: int
    with_wait: int
    with_outcome: int
    avg_wait: float | None
    avg_wait_ci: tuple[float, float] | None
    timeouts: int
    timeout_rate: float | None
    timeout_rate_ci: tuple[float, float] | None
    other_config: int           # tasks whose recorded config_digest is not the window's config
    sufficient: bool

    def to_json(self, requested_s: float) -> dict[str, Any]:
        return {"from_s": _r(self.lo), "to_s": _r(self.hi), "requested_s": _r(requested_s),
                "covered_s": _r(self.covered_s), "tasks": self.tasks,
                "tasks_with_wait": self.with_wait, "tasks_with_outcome": self.with_outcome,
                "tasks_without_observation": self.tasks - min(self.with_wait,
                                                              self.with_outcome),
                "avg_wait_time": _r(self.avg_wait), "avg_wait_time_ci95": _ci(self.avg_wait_ci),
                "timeouts": self.timeouts, "timeout_rate": _r(self.timeout_rate),
                "timeout_rate_ci95": _ci(self.timeout_rate_ci),
                "tasks_other_config": self.other_config, "sufficient": self.sufficient}


def _batch_ratio(num: np.ndarray, den: np.ndarray) -> tuple[float, float] | None:
    """Batch-means interval of sum(num) / sum(den) over consecutive batches."""
    k = min(BATCHES, len(num) // 2)
    if k < 2:
        return None
    parts = np.array_split(np.arange(len(num)), k)
    _, ci = ratio_ci([float(num[p].sum()) for p in parts], [float(den[p].sum()) for p in parts])
    return None if ci is None else (float(ci[0]), float(ci[1]))


def window_stats(trace: Trace, lo: float, hi: float, digest: str,
                 min_tasks: int) -> WindowStats:
    obs = trace.observed
    starts = trace.columns.arrival_s
    mask = (starts >= lo) & (starts < hi)
    wait = obs.wait_s[mask]
    outcome = obs.outcome[mask]
    w = wait[~np.isnan(wait)]
    has_o = outcome >= 0
    k = int(np.sum(outcome == OBSERVED_TIMEOUT))
    n_o = int(has_o.sum())
    avg = float(w.mean()) if len(w) else None
    avg_ci = _batch_ratio(w, np.ones(len(w))) if len(w) else None
    rate = k / n_o if n_o else None
    rate_ci = None
    if n_o:
        lo_w, hi_w = wilson(k, n_o)
        bm = _batch_ratio((outcome[has_o] == OBSERVED_TIMEOUT).astype(float), np.ones(n_o))
        rate_ci = (lo_w, hi_w) if bm is None else (max(0.0, min(lo_w, bm[0])),
                                                  min(1.0, max(hi_w, bm[1])))
    digests = [d for d, m in zip(obs.config_digest, mask) if m]
    other = sum(1 for d in digests if d is not None and d != digest)
    first, last = (float(starts[0]), float(starts[-1])) if len(starts) else (0.0, 0.0)
    covered = max(0.0, min(hi, last) - max(lo, first))
    return WindowStats(lo, hi, covered, int(mask.sum()), len(w), n_o, avg, avg_ci, k, rate,
                       rate_ci, other, len(w) >= min_tasks and n_o >= min_tasks)


# -- the summary the spec shows ----------------------------------------------------------------


def change_text(before: float | None, after: float | None) -> str:
    """A relative change as the spec writes it: "68% ↓" (15.2 -> 4.8), "50% ↑" (0.02 ->
    0.03); whole percent, the arrow gives the direction. From zero there is no percentage:
    "0 → 0.031 ↑". "n/a" when a side has no data."""
    if before is None or after is None:
        return "n/a"
    if before == 0:
        return "0%" if after == 0 else f"0 → {after:.3g} ↑"
    frac = (after - before) / before
    pct = f"{abs(frac) * 100:.0f}%"
    if pct == "0%":
        return pct
    return f"{pct} {'↑' if frac > 0 else '↓'}"


def _diff(a: float | None, a_ci: Any, b: float | None, b_ci: Any
          ) -> tuple[float | None, tuple[float, float] | None]:
    """after - before and its 95% interval (half-widths in quadrature)."""
    if a is None or b is None:
        return None, None
    d = b - a
    if a_ci is None or b_ci is None:
        return d, None
    half = math.hypot((a_ci[1] - a_ci[0]) / 2, (b_ci[1] - b_ci[0]) / 2)
    return d, (d - half, d + half)


RULES = (
    "insufficient_data: a window has fewer than the minimum tasks with an observed wait and "
    "outcome (exit 3)",
    "rollback: the after timeout rate is above the spec's 5% rollback trigger with 95% "
    "confidence (its interval's lower end > 5%), or the mean wait rose with 95% confidence "
    "while the timeout rate did not fall with 95% confidence (exit 1)",
    "adjust_max_wait_time: the timeout rate rose with 95% confidence (below the trigger): the "
    "wait may have improved at the price of give-ups; raise max_wait_time, or per task type "
    "(exit 0)",
    "keep: the after timeout rate is below 5% with 95% confidence (its interval's upper end "
    "< 5%) and neither rule above applies (exit 0)",
    "extend_observation: otherwise, the intervals do not decide (exit 3)",
)


def recommend(before: WindowStats, after: WindowStats, wait_d: Any, rate_d: Any
              ) -> tuple[str, str]:
    """(code, sentence) by RULES, in order."""
    if not (before.sufficient and after.sufficient):
        short = [f"{name} has {s.with_wait} waits and {s.with_outcome} outcomes"
                 for name, s in (("before", before), ("after", after)) if not s.sufficient]
        return "insufficient_data", (f"insufficient data: {'; '.join(short)} (at least "
                                     f"{MIN_TASKS} each): extend the window or wait")
    rate_ci, (_, w_ci), (_, r_ci) = after.timeout_rate_ci, wait_d, rate_d
    wait_up = w_ci is not None and w_ci[0] > 0
    rate_down = r_ci is not None and r_ci[1] < 0
    if rate_ci[0] > TIMEOUT_GATE:
        return "rollback", (f"⚠️ timeout rate {after.timeout_rate:.1%} is above the 5% rollback "
                            f"trigger: roll back (gpusim rollback plan)")
    if wait_up and not rate_down:
        return "rollback", ("⚠️ the mean wait rose and the timeout rate did not fall: roll back "
                            "(gpusim rollback plan)")
    if r_ci is not None and r_ci[0] > 0:
        return "adjust_max_wait_time", (f"⚠️ timeout rate rose ({before.timeout_rate:.1%} → "
                                        f"{after.timeout_rate:.1%}): consider raising "
                                        f"max_wait_time")
    if rate_ci[1] < TIMEOUT_GATE:
        return "keep", (f"✅ keep: timeout rate {after.timeout_rate:.1%} is below 5% and the "
                        f"wait did not rise")
    return "extend_observation", ("⏳ the intervals do not decide (the timeout rate may be on "
                                  "either side of 5%): extend the observation")


EXIT_OF = {"keep": 0, "adjust_max_wait_time": 0, "rollback": 1, "insufficient_data": 3,
           "extend_observation": 3}


# -- prediction beside observation -------------------------------------------------------------


def _compare(pred: Any, observed: float | None, observed_ci: Any) -> dict[str, Any] | None:
    """One metric: predicted mean and interval beside the observed ones. `inside`: the observed
    value lies in the predicted interval; `overlap`: the two intervals meet (the prediction
    is not contradicted)."""
    if pred is None or pred.mean is None:
        return None
    p_ci = pred.ci95
    inside = (None if p_ci is None or observed is None
              else bool(p_ci[0] <= observed <= p_ci[1]))
    overlap = (None if p_ci is None or observed_ci is None
               else bool(p_ci[0] <= observed_ci[1] and observed_ci[0] <= p_ci[1]))
    return {"predicted": _r(pred.mean), "predicted_ci95": _ci(p_ci),
            "observed": _r(observed), "observed_ci95": _ci(observed_ci),
            "inside": inside, "overlap": overlap}


def prediction(rec: Any, rec_path: str, rec_sha256: str, before_cfg: LockSettings,
               after_cfg: LockSettings, before: WindowStats, after: WindowStats
               ) -> dict[str, Any]:
    """The rec.json's simulated metrics (baseline -> before, candidate -> after) beside the
    observed ones, and whether the configs are the ones it simulated."""
    from gpusim import GpuLockConfig
    sides = {}
    for side, key, stats in (("before", "baseline", before), ("after", "candidate", after)):
        m = rec.metrics.get(key) or {}
        sides[side] = {
            "avg_wait_time": _compare(m.get("wait_mean_s"), stats.avg_wait, stats.avg_wait_ci),
            "timeout_rate": _compare(m.get("timeout_rate"), stats.timeout_rate,
                                     stats.timeout_rate_ci)}
    base_cfg = rec.inputs.baseline.get("gpu_lock")
    rec_cfg = rec.recommended.gpu_lock if rec.recommended is not None else (
        rec.nearest.gpu_lock if rec.nearest is not None else None)
    same = lambda raw, cfg: (raw is not None  # noqa: E731
                             and config_digest(GpuLockConfig(**raw)) == config_digest(cfg))
    return {"rec": {"path": rec_path, "sha256": rec_sha256, "status": rec.status},
            "before_config_is_rec_baseline": same(base_cfg, before_cfg),
            "after_config_is_rec_config": same(rec_cfg, after_cfg),
            "note": "predicted: simulated on the rec's trace, 95% intervals over its check "
                    "replications; observed: this trace's windows",
            **sides}


def require_observed(trace: Trace) -> None:
    if trace.observed is None:
        raise InputError("the trace has no observed outcomes (rows with wait_s and outcome: "
                         "traces/README.md)", file=trace.source)


# -- the report --------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImpactOptions:
    window_s: float = 7 * 86400.0   # the spec's 7 days each side
    min_tasks: int = MIN_TASKS


def _side(cfg: LockSettings, stats: WindowStats) -> dict[str, Any]:
    return {**cfg.gpu_lock.model_dump(), "avg_wait_time": _r(stats.avg_wait),
            "timeout_rate": _r(stats.timeout_rate)}


def _warnings(before: WindowStats, after: WindowStats, opts: ImpactOptions) -> list[str]:
    out = []
    for name, s in (("before", before), ("after", after)):
        if s.covered_s < 0.99 * opts.window_s:  # a gap of one arrival at an edge is no news
            out.append(f"the {name} window covers {s.covered_s:,.0f} s of the {opts.window_s:,.0f} "
                       f"s asked (the trace is shorter)")
        if s.other_config:
            out.append(f"{s.other_config} tasks of the {name} window recorded another config "
                       f"than --{name}-config (config_digest): a canary, or the wrong config")
        if not s.sufficient:
            out.append(f"the {name} window has too little data: {s.with_wait} waits, "
                       f"{s.with_outcome} outcomes; at least {opts.min_tasks} each")
    return out


def impact_report(trace: Trace, change_s: float, before_cfg: LockSettings,
                  after_cfg: LockSettings, opts: ImpactOptions,
                  predict: tuple[Any, str, str] | None = None) -> tuple[dict[str, Any], int]:
    """(the config-impact JSON, exit code). `predict`: (Recommendation, path, sha256)."""
    require_observed(trace)
    if opts.min_tasks < 1:
        raise InputError("must be >= 1", field="--min-tasks")
    w = opts.window_s
    before = window_stats(trace, change_s - w, change_s, config_digest(before_cfg),
                          opts.min_tasks)
    after = window_stats(trace, change_s, change_s + w, config_digest(after_cfg),
                         opts.min_tasks)
    wait_d = _diff(before.avg_wait, before.avg_wait_ci, after.avg_wait, after.avg_wait_ci)
    rate_d = _diff(before.timeout_rate, before.timeout_rate_ci, after.timeout_rate,
                   after.timeout_rate_ci)
    code, sentence = recommend(before, after, wait_d, rate_d)
    frac = lambda d, b: None if d is None or not b else _r(d / b)  # noqa: E731
    details = {
        "schema": SCHEMA, "trace": {"source": trace.source, "tasks": len(trace)},
        "change_time_s": _r(change_s), "window_s": _r(w), "min_tasks": opts.min_tasks,
        "min_tasks_why": MIN_TASKS_WHY if opts.min_tasks == MIN_TASKS else "set by --min-tasks",
        "baseline_reset": "after counts only tasks that started acquiring at or after the "
                          "change; a task that started before it read the old config and "
                          "counts before, even when it ended after",
        "before": {"config_digest": config_digest(before_cfg), "source": before_cfg.source,
                   **before.to_json(w)},
        "after": {"config_digest": config_digest(after_cfg), "source": after_cfg.source,
                  **after.to_json(w)},
        "wait_time_change_s": {"value": _r(wait_d[0]), "ci95": _ci(wait_d[1])},
        "wait_time_change_fraction": frac(wait_d[0], before.avg_wait),
        "timeout_rate_change": {"value": _r(rate_d[0]), "ci95": _ci(rate_d[1])},
        "timeout_rate_change_fraction": frac(rate_d[0], before.timeout_rate),
        "recommendation_code": code, "rules": list(RULES),
        "prediction": None if predict is None else prediction(
            predict[0], predict[1], predict[2], before_cfg, after_cfg, before, after),
        "warnings": _warnings(before, after, opts),
    }
    doc = {
        "config_change_time": iso_time(trace, change_s),
        "before": _side(before_cfg, before), "after": _side(after_cfg, after),
        "impact_summary": {
            "wait_time_improvement": change_text(before.avg_wait, after.avg_wait),
            "timeout_rate_change": change_text(before.timeout_rate, after.timeout_rate),
            "recommendation": sentence},
        "details": details,
    }
    return doc, EXIT_OF[code]
