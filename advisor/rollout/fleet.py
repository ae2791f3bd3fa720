"""One stage of the staged fleet, simulated: the workload over the stage's length, the cluster
with its canary and control nodes on one Redis, and canary / control metrics from the records.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Sequence

import numpy as np

from gpusim import (Cluster, InputError, LockSettings, Outcome, Trace, mean_ci, ratio_ci,
                    simulate, trace_from_rows)

BATCHES = 10   # batches of consecutive tasks for the workload's own variability (as tune)


def stage_workload(trace: Trace, duration_s: float) -> tuple[Trace, dict[str, Any]]:
    """The trace stretched or cut to `duration_s` of arrivals, and how.

    A trace shorter than the stage is repeated back to back: copy k is the trace shifted by
    k x period, period = the trace's arrival span plus its mean gap between arrivals (so the
    seam looks like any other gap), task ids suffixed "#k"; then every task arriving at or
    after `duration_s` is cut. A longer trace is cut the same way. A one-task trace is refused:
    it has no arrival rate to repeat.
    """
    cols = trace.columns
    n = len(trace)
    span = float(cols.arrival_s[-1] - cols.arrival_s[0]) if n else 0.0
    if n < 2 or span <= 0:
        raise InputError("a canary plan needs a trace with at least two arrival times",
                         file=trace.source)
    period = span + span / (n - 1)
    copies = max(1, math.ceil(duration_s / period))
    rows = []
    for k in range(copies):
        for t in trace.tasks:
            at = t.arrival_s + k * period
            if at >= duration_s:
                break
            rows.append({"task_id": t.task_id if copies == 1 else f"{t.task_id}#{k}",
                         "task_type": t.task_type, "arrival_s": at, "duration_s": t.duration_s,
                         "node": t.node, "gpu": t.gpu, "crashed": t.crashed})
    info = {"trace_span_s": span, "period_s": period, "copies": copies, "tasks": len(rows),
            "method": (f"trace cut at {duration_s:g} s" if copies == 1 else
                       f"trace repeated {copies} times back to back (period {period:.6g} s = "
                       f"span + mean gap), cut at {duration_s:g} s")}
    return trace_from_rows(rows, source=f"{trace.source} (stage workload)"), info


def stage_cluster(cluster: Cluster, canary: Sequence[str], candidate: LockSettings,
                  baseline: LockSettings) -> Cluster:
    """The cluster with `canary` nodes on the candidate and the rest on the baseline."""
    nodes = tuple(dataclasses.replace(n, settings=candidate if n.name in canary else baseline)
                  for n in cluster.nodes)
    return dataclasses.replace(cluster, nodes=nodes)


def _columns(records: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(node name per task, outcome code, wait_s, index) from a run's records (table or
    tuple of TaskRecord)."""
    codes = {o: i for i, o in enumerate(Outcome)}
    if hasattr(records, "node_names"):   # the compiled engine's columnar table
        names = np.array(records.node_names, dtype=object)
        return (names[records.node], np.asarray(records.outcome), np.asarray(records.wait_s),
                np.asarray(records.index))
    recs = list(records)
    return (np.array([r.node for r in recs], dtype=object),
            np.array([codes[Outcome(r.outcome)] for r in recs]),
            np.array([r.wait_s for r in recs], dtype=float),
            np.array([r.index for r in recs]))


def group_metrics(records: Any, nodes: Sequence[str]) -> dict[str, Any]:
    """Task counts, rates and waits of the tasks that ran on `nodes`, plus per-batch counts."""
    node, outcome, wait, index = _columns(records)
    mask = np.isin(node, list(nodes))
    order = np.argsort(index[mask], kind="stable")
    out, w = outcome[mask][order], wait[mask][order]
    n = int(mask.sum())
    acquired = int((out == list(Outcome).index(Outcome.ACQUIRED)).sum())
    timeouts = int((out == list(Outcome).index(Outcome.TIMEOUT)).sum())
    batches = np.array_split(np.arange(n), BATCHES) if n >= BATCHES else []
    tmo = out == list(Outcome).index(Outcome.TIMEOUT)
    acq = out == list(Outcome).index(Outcome.ACQUIRED)
    return {
        "tasks": n, "acquired": acquired, "timeouts": timeouts,
        "success_rate": acquired / n if n else None,
        "timeout_rate": timeouts / n if n else None,
        "acquisition_failure_rate": timeouts / n if n else None,
        "wait_mean_s": float(w.mean()) if n else None,
        "wait_p50_s": float(np.percentile(w, 50)) if n else None,
        "wait_p95_s": float(np.percentile(w, 95)) if n else None,
        "_batch_tasks": [len(b) for b in batches],
        "_batch_timeouts": [int(tmo[b].sum()) for b in batches],
        "_batch_acquired": [int(acq[b].sum()) for b in batches],
    }


RATE_FROM_BATCH = {"timeout_rate": "_batch_timeouts", "acquisition_failure_rate":
                   "_batch_timeouts", "success_rate": "_batch_acquired"}
SHOWN = ("tasks", "success_rate", "acquisition_failure_rate", "timeout_rate", "wait_mean_s",
         "wait_p50_s", "wait_p95_s")


def _estimate(per_rep: list[dict[str, Any]], key: str) -> dict[str, Any]:
    vals = [m[key] for m in per_rep]
    if any(v is None for v in vals):
        return {"mean": None, "ci95": None}
    mean, ci = mean_ci(vals)
    if ci is not None and key.startswith("wait"):
        ci = [max(0.0, ci[0]), ci[1]]     # a wait is never negative
    batch_key = RATE_FROM_BATCH.get(key)
    if batch_key and per_rep[0]["_batch_tasks"]:
        # the wider of the replications' interval and the batches' (tune does the same)
        _, bci = ratio_ci(per_rep[0][batch_key], per_rep[0]["_batch_tasks"])
        if bci is not None:
            ci = [min(bci[0], ci[0]), max(bci[1], ci[1])] if ci else bci
            ci = [max(0.0, ci[0]), min(1.0, ci[1])]
    return {"mean": mean, "ci95": ci}


def simulate_stage(workload: Trace, cluster: Cluster, baseline: LockSettings,
                   canary: Sequence[str], control: Sequence[str], *, seed: int,
                   replications: int) -> dict[str, Any]:
    """Predicted canary, control and fleet metrics with 95% intervals."""
    res = simulate(workload, baseline, cluster, seed=seed, replications=replications)
    groups = {"canary": canary, "control": control}
    out: dict[str, Any] = {}
    for label, nodes in groups.items():
        if not nodes:
            out[label] = None
            continue
        per_rep = [group_metrics(r.records, nodes) for r in res.replications]
        out[label] = {k: _estimate(per_rep, k) for k in SHOWN}
    out["fleet"] = {k: {"mean": res.metrics.get(k), "ci95": res.ci95.get(k)}
                    for k in ("redis_cpu_utilization_peak_1m", "redis_cpu_utilization",
                              "redis_ops_per_s", "success_rate", "timeout_rate")}
    return out
