"""`gpusim canary judge`: a stage's verdict from observed per-task outcomes.

Inputs are traces with observed outcomes (traces/README.md: `outcome`, `wait_s`, ...) from the
canary nodes and from the control nodes, and the plan (`gpusim canary plan`). The verdict:

- gates (the plan's, GPU_LOCK_CONFIG_002) on the canary's rates, each with a 95% Wilson score
  interval: PASS when the whole interval is on the good side of the threshold, FAIL when the
  whole interval is on the bad side, MARGINAL otherwise. Redis CPU is not in a trace: it is
  judged when the user gives the observed peak-minute utilisation (`redis_cpu`), else listed
  as not judged;
- rollback triggers: FAIL and "roll back now" when a trigger's whole interval is above it;
- waits, in the manner of Kayenta's Mann-Whitney classifier (Spinnaker, "How canary judgment
  works", spinnaker.io/guides/user/canary/judge: a nonparametric test for a significant
  difference, and an effect size with allowed and critical bounds, so that a statistically
  significant but tiny change does not fail a canary): a one-sided Mann-Whitney U test of
  "canary waits are stochastically larger than control waits", and the common-language
  effect size CLES = P(canary wait > control wait) + P(tie)/2 (stages.Waits says why not a
  mean ratio). Significant (p < alpha) and CLES above `critical_cles`: FAIL; above
  `allowed_cles`: MARGINAL. Reported beside them: the ratio of mean waits and the
  Hodges-Lehmann shift (median of the canary - control differences). Waits of tasks that gave
  up are their observed waits (about max_wait_time): a canary timing out more waits longer;
- INSUFFICIENT_DATA when the canary saw fewer acquisition attempts than the plan's minimum
  for the stage (or the control fewer waits than `min_control`), unless something already
  FAILs: a FAIL's interval already accounts for the small sample.

Combined: FAIL if anything FAILs, else INSUFFICIENT_DATA, else MARGINAL if anything is
marginal, else PASS. Exit codes 0 PASS, 1 FAIL, 2 bad input, 3 INSUFFICIENT_DATA, 4 MARGINAL.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

from gpusim import InputError, Trace

from advisor.jsonio import read_schema_doc
from advisor.rollout.power import wilson
from advisor.rollout.plan import PLAN_SCHEMA, side_of

VERDICT_SCHEMA = "gpusim.canary-verdict/1"
PASS, FAIL, MARGINAL, INSUFFICIENT = "PASS", "FAIL", "MARGINAL", "INSUFFICIENT_DATA"
EXIT = {PASS: 0, FAIL: 1, INSUFFICIENT: 3, MARGINAL: 4}
ACQUIRED, TIMEOUT = 0, 1      # gpusim.traces.observed's outcome codes
HL_MAX_SIDE = 1000            # Hodges-Lehmann on at most 1000 x 1000 pairs (order statistics)


def load_plan(path: str) -> dict[str, Any]:
    return read_schema_doc(path, PLAN_SCHEMA)


@dataclass(frozen=True)
class Side:
    """The observed outcomes of one side (canary or control), pooled over its files."""
    tasks: int
    acquired: int          # got the lock and did not crash
    timeouts: int
    waits: np.ndarray      # observed waits (rows that give wait_s)

    def to_json(self) -> dict[str, Any]:
        return {"tasks": self.tasks, "succeeded": self.acquired, "timeouts": self.timeouts,
                "waits": len(self.waits),
                "wait_mean_s": float(self.waits.mean()) if len(self.waits) else None}


def read_side(traces: Sequence[Trace], digest: str | None, label: str) -> Side:
    """Pool the traces of one side; every row must carry its outcome."""
    tasks = acquired = timeouts = 0
    waits = []
    for tr in traces:
        obs = tr.observed
        missing = np.arange(len(tr)) if obs is None else np.flatnonzero(obs.outcome < 0)
        if len(missing):
            i = int(missing[0])
            raise InputError(f"no observed outcome on this row ({len(missing)} such rows): "
                             f"the judge needs `outcome` (acquired|timeout) on every {label} "
                             f"row", file=tr.source, line=int(tr.lines[i]), field="outcome")
        if digest is not None:
            wrong = [i for i, d in enumerate(obs.config_digest) if d is not None and d != digest]
            if wrong:
                i = wrong[0]
                raise InputError(f"this {label} task ran under config {obs.config_digest[i]}, "
                                 f"not the plan's {label} config {digest}", file=tr.source,
                                 line=int(tr.lines[i]), field="config_digest")
        crashed = np.asarray(tr.columns.crashed, dtype=bool)
        tasks += len(tr)
        acquired += int(((obs.outcome == ACQUIRED) & ~crashed).sum())
        timeouts += int((obs.outcome == TIMEOUT).sum())
        waits.append(obs.wait_s[~np.isnan(obs.wait_s)])
    return Side(tasks, acquired, timeouts,
                np.concatenate(waits) if waits else np.empty(0))


def _rate(name: str, side: Side) -> tuple[int, int]:
    """(events, trials) of a gate's rate."""
    if name == "success_rate":
        return side.acquired, side.tasks
    return side.timeouts, side.tasks       # acquisition failures = timeouts (stages.py)


def judge_gates(gates: list[dict], canary: Side,
                redis_cpu: float | None) -> list[dict[str, Any]]:
    rows = []
    for g in gates:
        row = {"name": g["name"], "op": g["op"], "threshold": g["threshold"]}
        if g["metric"] == "redis_cpu_peak_1m":
            if redis_cpu is None:
                row.update(result="NOT_JUDGED", value=None, ci95=None,
                           reason="Redis CPU is not in a trace: give --redis-cpu")
            else:
                ok = redis_cpu < g["threshold"]
                row.update(result=PASS if ok else FAIL, value=redis_cpu, ci95=None)
            rows.append(row)
            continue
        k, n = _rate(g["name"], canary)
        lo, hi = wilson(k, n)
        row.update(value=k / n if n else None, events=k, trials=n, ci95=[lo, hi],
                   result=side_of(lo, hi, g["op"], g["threshold"]) if n else INSUFFICIENT)
        rows.append(row)
    return rows


def judge_triggers(triggers: list[dict], canary: Side,
                   redis_cpu: float | None) -> list[dict[str, Any]]:
    rows = []
    for t in triggers:
        if t["metric"] == "redis_cpu_peak_1m":
            fired = redis_cpu is not None and redis_cpu > t["threshold"]
            rows.append(dict(name=t["name"], threshold=t["threshold"], value=redis_cpu,
                             fired=fired))
            continue
        k, n = _rate(t["name"], canary)
        lo, hi = wilson(k, n)
        rows.append(dict(name=t["name"], threshold=t["threshold"],
                         value=k / n if n else None, ci95=[lo, hi], fired=n > 0 and lo > t[
                             "threshold"]))
    return rows


def _hodges_lehmann(x: np.ndarray, y: np.ndarray) -> float:
    """Median of all pairwise differences x_i - y_j; above HL_MAX_SIDE values a side is
    replaced by HL_MAX_SIDE evenly spaced order statistics (deterministic)."""
    def thin(a: np.ndarray) -> np.ndarray:
        a = np.sort(a)
        if len(a) <= HL_MAX_SIDE:
            return a
        return a[np.linspace(0, len(a) - 1, HL_MAX_SIDE).round().astype(int)]
    return float(np.median(np.subtract.outer(thin(x), thin(y))))


def compare_waits(canary: np.ndarray, control: np.ndarray, w: dict) -> dict[str, Any]:
    from scipy.stats import mannwhitneyu

    row: dict[str, Any] = {"canary_waits": len(canary), "control_waits": len(control),
                           "alpha": w["alpha"], "allowed_cles": w["allowed_cles"],
                           "critical_cles": w["critical_cles"]}
    if len(control) < w["min_control"] or len(canary) < 3:
        row.update(result=INSUFFICIENT, reason=f"needs >= {w['min_control']} control waits "
                   f"and >= 3 canary waits")
        return row
    u, p = mannwhitneyu(canary, control, alternative="greater")
    mc, mk = float(control.mean()), float(canary.mean())
    ratio = mk / mc if mc > 0 else (1.0 if mk == 0 else math.inf)
    significant = bool(p < w["alpha"])
    cles = float(u) / (len(canary) * len(control))   # scipy's U counts ties as one half
    result = PASS
    if significant and cles > w["critical_cles"]:
        result = FAIL
    elif significant and cles > w["allowed_cles"]:
        result = MARGINAL
    row.update(result=result, p_value=float(p), u=float(u), significant=significant,
               mean_ratio=ratio if math.isfinite(ratio) else None, cles=cles,
               hodges_lehmann_shift_s=_hodges_lehmann(canary, control),
               canary_wait_mean_s=mk, control_wait_mean_s=mc)
    return row


def stage_of(plan: dict[str, Any], stage: int) -> dict[str, Any]:
    stages = plan["stages"]
    if not 1 <= stage <= len(stages):
        raise InputError(f"the plan has stages 1 to {len(stages)}, got {stage}",
                         field="--stage")
    return stages[stage - 1]


def judge(plan: dict[str, Any], stage: int, canary: Sequence[Trace],
          control: Sequence[Trace], *, redis_cpu: float | None = None) -> dict[str, Any]:
    """The verdict document of `stage` (1-based) from the two sides' observed traces."""
    st = stage_of(plan, stage)
    if not canary:
        raise InputError("give at least one canary trace", field="--canary")
    if st["control_nodes"] and not control:
        raise InputError(f"stage {stage} ({st['name']}) has control nodes: give their "
                         f"observed trace", field="--control")
    can = read_side(canary, plan["candidate"].get("config_digest"), "candidate")
    ctl = read_side(control, plan["baseline"].get("config_digest"), "baseline") \
        if control else None
    gates = judge_gates(plan["gates"], can, redis_cpu)
    triggers = judge_triggers(plan["rollback_triggers"], can, redis_cpu)
    waits = compare_waits(can.waits, ctl.waits, plan["waits"]) if ctl is not None else \
        {"result": "NOT_JUDGED", "reason": "no control (final stage)"}
    need = st["min_acquisitions"]
    verdict, reasons = _combine(gates, triggers, waits, can.tasks, need)
    return {
        "schema": VERDICT_SCHEMA, "verdict": verdict, "exit_code": EXIT[verdict],
        "stage": {"index": st["index"], "name": st["name"]},
        "reasons": reasons,
        "acquisitions": {"seen": can.tasks, "needed": need},
        "canary": can.to_json(), "control": ctl.to_json() if ctl is not None else None,
        "gates": gates, "rollback_triggers": triggers, "waits": waits,
        "sources": {"canary": [t.source for t in canary],
                    "control": [t.source for t in control]},
    }


def _fmt_ci(row: dict[str, Any]) -> str:
    ci = row.get("ci95")
    value = row.get("value")
    if value is None:
        return "n/a"
    return f"{value:.4g}" + (f" [{ci[0]:.4g}, {ci[1]:.4g}]" if ci else "")


def _combine(gates: list[dict], triggers: list[dict], waits: dict, seen: int,
             need: int | None) -> tuple[str, list[str]]:
    reasons, results = [], []
    for t in triggers:
        if t["fired"]:
            results.append(FAIL)
            reasons.append(f"rollback trigger {t['name']} > {t['threshold']:g}: "
                           f"{_fmt_ci(t)}: roll back now")
    for g in gates:
        results.append(g["result"])
        if g["result"] == "NOT_JUDGED":
            reasons.append(f"gate {g['name']}: not judged ({g['reason']})")
        else:
            reasons.append(f"gate {g['name']} {g['op']} {g['threshold']:g}: {_fmt_ci(g)} "
                           f"(95% Wilson) -> {g['result']}")
    results.append(waits["result"])
    if "p_value" in waits:
        ratio = waits["mean_ratio"]
        reasons.append(
            f"waits (Mann-Whitney, canary > control): p = {waits['p_value']:.3g}, "
            f"P(canary > control) {waits['cles']:.3g} (allowed {waits['allowed_cles']:g}, "
            f"critical {waits['critical_cles']:g}), mean ratio "
            f"{'inf' if ratio is None else f'{ratio:.3g}'}, Hodges-Lehmann shift "
            f"{waits['hodges_lehmann_shift_s']:.3g} s -> {waits['result']}")
    else:
        reasons.append(f"waits: {waits['result']} ({waits['reason']})")
    short = need is not None and seen < need
    if short:
        reasons.append(f"acquisitions: {seen} seen, {need} needed (the plan's minimum for this "
                       f"stage)")
    if FAIL in results:
        return FAIL, reasons
    if short or INSUFFICIENT in results:
        return INSUFFICIENT, reasons
    if MARGINAL in results:
        return MARGINAL, reasons
    return PASS, reasons


def dumps(doc: dict[str, Any]) -> str:
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"
