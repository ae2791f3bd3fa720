"""What stands in the way, in numbers: headroom, the what-ifs, and the sentences of rec.json.

Headroom splits each task's lock wait into time its key was held by another task (queueing for
a busy GPU: no lock setting removes it without timing tasks out) and time the key was free while
the task waited (notice delay, lost races, lost wake-ups: what a lock setting can remove).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import optuna

from gpusim import Cluster, GpuLockConfig, SimulationResult, Thresholds, waits_by_type

# SAFETY: gates a trial must meet before its wait cut counts: a lock that expires under
# running tasks "cuts" the wait by letting two tasks onto one GPU, which is no cut at all.
from advisor.choose import SAFETY
from advisor.evaluate import Evaluator, Scored
from advisor.recommendation import GpuWhatIf, HeadroomRow

MAX_EXTRA_GPUS = 8   # the GPU what-if tries +1 .. +8 GPUs per node


def headroom_row(m: dict[str, Any]) -> HeadroomRow:
    return HeadroomRow(tasks=float(m.get("tasks") or 0), wait_mean_s=m.get("wait_mean_s"),
                       held_mean_s=m.get("wait_held_mean_s"),
                       free_mean_s=m.get("wait_free_mean_s"),
                       free_share=m.get("wait_free_share"), timeout_rate=m.get("timeout_rate"))




def reach(study: optuna.Study, th: Thresholds) -> tuple[float | None, float | None]:
    """(largest wait cut with timeouts within their gate, least timeout rate at the wait
    gate) over the complete trials that meet the safety and Redis gates (point estimates)."""
    cut, least = None, None
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        g = t.user_attrs.get("gates") or {}
        red, to = g.get("wait_mean_reduction"), g.get("timeout_rate")
        cons = t.user_attrs.get("constraints") or {}
        if red is None or to is None or any(cons.get(k, 1.0) > 0 for k in SAFETY):
            continue
        if to < th.timeout_rate_max:
            cut = red if cut is None else max(cut, red)
        if red >= th.wait_reduction_min:
            least = to if least is None else min(least, to)
    return cut, least


def scaled_cluster(cluster: Cluster, extra: int) -> tuple[Cluster, str]:
    """Every node with `extra` more GPUs. Tasks pinned to a GPU index would never use the new
    GPUs, so a pinned cluster is spread round-robin in the what-if (and says so)."""
    nodes = tuple(dataclasses.replace(n, gpus=n.gpus + extra) for n in cluster.nodes)
    policy = "round_robin" if cluster.gpu_policy == "pinned" else cluster.gpu_policy
    return dataclasses.replace(cluster, nodes=nodes, gpu_policy=policy), policy


def gpu_what_if(ev: Evaluator, configs: list[GpuLockConfig], *, seed: int,
                replications: int) -> tuple[list[GpuWhatIf], int | None]:
    """The fewest GPUs per node at which one of `configs` passes every gate (point estimates
    on the search seeds), against today's config on today's cluster."""
    rows: list[GpuWhatIf] = []
    base_gpus = max(n.gpus for n in ev.cluster.nodes)
    for extra in range(1, MAX_EXTRA_GPUS + 1):
        cluster, policy = scaled_cluster(ev.cluster, extra)
        best: Scored | None = None
        for cfg in configs:
            s = ev.evaluate(cfg, seed=seed, replications=replications, cluster=cluster)
            if best is None or (s.feasible, -s.violation()) > (best.feasible, -best.violation()):
                best = s
        assert best is not None
        rows.append(GpuWhatIf(gpus_per_node=base_gpus + extra, gpu_policy=policy,
                              passed=best.feasible,
                              wait_reduction=best.criterion("wait_mean_reduction").value,
                              timeout_rate=best.criterion("timeout_rate").value))
        if best.feasible:
            return rows, base_gpus + extra
    return rows, None


def ideal_lock(space_low_poll: float) -> GpuLockConfig:
    """A near-ideal lock: polls every `space_low_poll` seconds without backoff, never gives up
    within a day, and its key never expires under a task. What it leaves of the wait is
    queueing for the GPU, which no lock setting removes."""
    return GpuLockConfig(poll_interval=space_low_poll, max_poll_interval=space_low_poll,
                         exponential_backoff=False, use_event_driven=False,
                         max_wait_time=86_400.0, lock_timeout=366 * 86_400)


def wait_curve(result: SimulationResult, task_type: str, censored_at: float,
               points: int = 51) -> dict[str, Any]:
    """P(acquired within t) for one task type, pooled over replications. Tasks that gave up
    never acquired: the curve stops at the acquired share instead of jumping at max_wait."""
    parts, n, timeouts = [], 0, 0
    for rep in result.replications:
        got = waits_by_type(rep.records).get(task_type)
        if got is not None:
            parts.append(got[0])
            n += got[1]
            timeouts += got[2]
    waits = np.concatenate(parts) if parts else np.zeros(0)
    share = len(waits) / n if n else 0.0
    q = np.linspace(0.0, 1.0, points)
    w = np.quantile(waits, q).tolist() if len(waits) else []
    return {"task_type": task_type, "tasks": n, "acquired_share": share,
            "timeout_share": timeouts / n if n else 0.0, "censored_at_s": censored_at,
            "probabilities": (q * share).tolist() if len(waits) else [], "wait_s": w}


def pct(x: float | None, signed: bool = False) -> str:
    if x is None:
        return "n/a"
    return f"{x * 100:+.1f}%" if signed else f"{x * 100:.1f}%"


def interval(c: Any, as_pct: bool = True) -> str:
    if c.value is None:
        return "n/a"
    f = (lambda v: f"{v * 100:.1f}%") if as_pct else (lambda v: f"{v:.3g}")
    if c.ci95 is None:
        return f(c.value)
    return f"{f(c.value)} [{f(c.ci95[0])}, {f(c.ci95[1])}]"


def headroom_sentences(overall: HeadroomRow, by_type: dict[str, HeadroomRow],
                       th: Thresholds, cut: float | None, least: float | None) -> list[str]:
    out = []
    if overall.wait_mean_s and overall.held_mean_s is not None and overall.free_mean_s is not None:
        held_share = overall.held_mean_s / overall.wait_mean_s
        out.append(
            f"Today {pct(held_share)} of the mean lock wait ({overall.held_mean_s:.1f} s of "
            f"{overall.wait_mean_s:.1f} s) is queueing for a busy GPU (its key held by another "
            f"task); {pct(1 - held_share)} ({overall.free_mean_s:.2f} s) is time the key was free "
            f"while tasks waited (notice delay, lost races, lost wake-ups): the part a lock "
            f"setting removes directly (the queue behind it shrinks with it).")
        types = ", ".join(f"{k} {pct(v.free_share)}" for k, v in sorted(by_type.items())
                          if v.free_share is not None)
        if types:
            out.append(f"Free share of the wait by task type: {types}.")
    if least is not None and least >= th.timeout_rate_max:
        out.append(f"No searched config reaches the {pct(th.wait_reduction_min)} wait cut without "
                   f"timing out at least {pct(least)} of tasks (the gate is < "
                   f"{pct(th.timeout_rate_max)}).")
    if cut is not None and cut < th.wait_reduction_min:
        out.append(f"With timeouts within their gate, the largest wait cut any searched config "
                   f"reached is {pct(cut)} (the gate asks for {pct(th.wait_reduction_min)}).")
    return out
