"""`gpusim canary plan`: the staged rollout of a recommended config, simulated stage by stage.

For each stage the trace's workload over the stage's length runs on the cluster with the
stage's canary nodes on the candidate and the rest (control) on the baseline, all on one Redis.
The plan gives, per stage: predicted canary and control metrics with 95% intervals, each gate
with its prediction and the minimum number of lock acquisitions before its verdict means
anything (advisor.rollout.power), the expected hours to see them at the canary's share of the
arrivals, and the rollback triggers. Schema `gpusim.canary-plan/1`; same inputs and seed give
the same bytes.
"""

from __future__ import annotations

import json
from typing import Any

from gpusim import Cluster, LockSettings, Trace, parse_lock_settings

from advisor.recommendation import Recommendation
from advisor.rollout import power
from advisor.rollout.fleet import simulate_stage, stage_cluster, stage_workload
from advisor.rollout.stages import RolloutSpec, Stage, canary_count, gate_list, trigger_list

PLAN_SCHEMA = "gpusim.canary-plan/1"


class Refused(Exception):
    """The rec.json cannot be rolled out (status infeasible): a judged failure, exit 1."""


def settings_of(values: dict[str, Any], source: str) -> LockSettings:
    """gpu_lock values from rec.json as settings; environment overrides do not apply."""
    return parse_lock_settings({"gpu_lock": values}, source=source, environ={})


def check_rollable(rec: Recommendation, path: str) -> None:
    if rec.status != "recommended" or rec.recommended is None:
        gates = ", ".join(rec.binding_gates) or "none named"
        raise Refused(f"{path}: status is {rec.status!r} (binding gates: {gates}): there is no "
                      f"recommended config to roll out; run `gpusim tune` again with more "
                      f"trials, other thresholds or more GPUs (see its explanation)")


def make_plan(rec: Recommendation, rec_path: str, trace: Trace, cluster: Cluster,
              spec: RolloutSpec, *, seed: int = 0, replications: int = 5,
              digests: dict[str, str] | None = None) -> dict[str, Any]:
    """The plan document (a dict ready for JSON). Raises Refused for an infeasible rec."""
    check_rollable(rec, rec_path)
    candidate = settings_of(rec.recommended.gpu_lock, f"{rec_path} (recommended)")
    baseline = settings_of(rec.inputs.baseline["gpu_lock"], f"{rec_path} (baseline)")
    names = [n.name for n in cluster.nodes]
    stages = [_stage(i, st, trace, cluster, names, candidate, baseline, spec, seed,
                     replications) for i, st in enumerate(spec.stages, start=1)]
    digests = digests or {}
    return {
        "schema": PLAN_SCHEMA,
        "recommendation": {"path": rec_path, "status": rec.status,
                           "trace_sha256": rec.inputs.trace.sha256},
        "candidate": {"gpu_lock": candidate.gpu_lock.model_dump(),
                      "config_digest": digests.get("candidate")},
        "baseline": {"gpu_lock": baseline.gpu_lock.model_dump(),
                     "config_digest": digests.get("baseline"),
                     "source": rec.inputs.baseline.get("source")},
        "trace": {"path": trace.source, "tasks": len(trace)},
        "cluster": {"source": cluster.source, "nodes": names},
        "gates": gate_list(spec.gates),
        "rollback_triggers": trigger_list(spec.rollback),
        "waits": spec.waits.model_dump(),
        "power": {"method": power.POWER_METHOD, "alpha_one_sided": 0.025,
                  "interval": "Wilson score, 95% two-sided", "power": power.TARGET_POWER},
        "simulation": {"seed": seed, "replications": replications,
                       "intervals": "95%: the wider of the replications' Student t interval "
                                    "and, for rates, the batch-means interval over 10 batches "
                                    "of consecutive tasks (the workload's own variability)"},
        "stages": stages,
        "notes": _notes(spec),
    }


def _notes(spec: RolloutSpec) -> list[str]:
    return [
        "Rollback triggers follow the spec: task timeout rate > "
        f"{spec.rollback.timeout_rate_max:g} (GPU_LOCK_CONFIG_004); the timeout gate "
        f"{spec.gates.timeout_rate_max:g} (GPU_LOCK_CONFIG_002) stops promotion.",
        "Lock acquisition failure rate = acquire calls that ended without the lock / acquire "
        "calls; in YiVideo these are the timeouts, so it counts the same events as the task "
        "timeout rate, against its own threshold.",
        "Canary nodes are the first nodes of the cluster in file order.",
        "A stage's verdict needs at least min_acquisitions canary acquisition attempts; the "
        "judge answers INSUFFICIENT_DATA below that (unless a gate already FAILs).",
    ]


def _stage(index: int, st: Stage, trace: Trace, cluster: Cluster, names: list[str],
           candidate: LockSettings, baseline: LockSettings, spec: RolloutSpec, seed: int,
           replications: int) -> dict[str, Any]:
    k, rounding = canary_count(len(names), st.share)
    canary, control = names[:k], names[k:]
    duration_s = st.duration_h * 3600.0
    workload, info = stage_workload(trace, duration_s)
    fleet = stage_cluster(cluster, canary, candidate, baseline)
    pred = simulate_stage(workload, fleet, baseline, canary, control, seed=seed,
                          replications=replications)
    gates = [_gate(g, pred) for g in gate_list(spec.gates)]
    sized = [g["min_acquisitions"] for g in gates if g["min_acquisitions"] is not None]
    undecidable = [g["name"] for g in gates
                   if g["metric"] != "redis_cpu_peak_1m" and g["min_acquisitions"] is None]
    need = None if undecidable or not sized else max(s["n_exact"] for s in sized)
    per_hour = (pred["canary"]["tasks"]["mean"] or 0.0) / st.duration_h
    hours = power.hours_to_collect(need, per_hour)
    return {
        "index": index, "name": st.name, "share": st.share, "duration_h": st.duration_h,
        "approval_before": st.approval,
        "canary_nodes": canary, "control_nodes": control, "rounding": rounding,
        "workload": info, "predicted": pred, "gates": gates,
        "predicted_verdict": _predicted_verdict(gates),
        "min_acquisitions": need,
        "min_acquisitions_note": (f"gates {undecidable} are predicted at their threshold: no "
                                  f"sample size decides them" if undecidable else
                                  "the largest n_exact over the rate gates"),
        "canary_acquisitions_per_hour": per_hour,
        "expected_hours_to_min": hours,
        "long_enough": None if hours is None else hours <= st.duration_h,
        "rollback_triggers": [_trigger(t, pred) for t in trigger_list(spec.rollback)],
    }


def _value(metric: str, pred: dict[str, Any]) -> dict[str, Any]:
    if metric == "redis_cpu_peak_1m":
        return pred["fleet"]["redis_cpu_utilization_peak_1m"]
    return pred["canary"][metric]


def side_of(lo: float, hi: float, op: str, thr: float) -> str:
    """PASS when the whole interval meets the gate, FAIL when none of it does."""
    if op == ">=":
        return "PASS" if lo >= thr else "FAIL" if hi < thr else "MARGINAL"
    return "PASS" if hi < thr else "FAIL" if lo >= thr else "MARGINAL"


def _gate(g: dict[str, Any], pred: dict[str, Any]) -> dict[str, Any]:
    est = _value(g["metric"], pred)
    mean, ci = est["mean"], est["ci95"]
    lo, hi = ci if ci else (mean, mean)
    row = dict(g, predicted=mean, ci95=ci,
               predicted_result=None if mean is None else side_of(lo, hi, g["op"], g["threshold"]))
    if g["metric"] == "redis_cpu_peak_1m" or mean is None:
        row["min_acquisitions"] = None    # not a rate of acquisitions: judged as measured
    else:
        row["min_acquisitions"] = power.gate_size(g["threshold"], mean, g["op"]).to_json()
    return row


def _predicted_verdict(gates: list[dict[str, Any]]) -> str:
    results = [g["predicted_result"] for g in gates]
    if "FAIL" in results:
        return "FAIL"
    return "MARGINAL" if "MARGINAL" in results or None in results else "PASS"


def _trigger(t: dict[str, Any], pred: dict[str, Any]) -> dict[str, Any]:
    est = _value(t["metric"], pred)
    lo = est["ci95"][0] if est["ci95"] else est["mean"]
    return dict(t, predicted=est["mean"], predicted_to_fire=lo is not None
                and lo > t["threshold"])


def dumps(plan: dict[str, Any]) -> str:
    return json.dumps(plan, sort_keys=True, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
