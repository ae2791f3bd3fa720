"""Regeneration cycles of a trace: the units whose totals `gpusim validate` compares.

The waits of one run are not independent (a queue couples them), but busy periods are: a task
that arrives at a lock key that is free, with nobody waiting for it, starts afresh, whatever
happened before (the regenerative method; Crane & Iglehart 1975, Asmussen & Glynn, "Stochastic
Simulation", ch. IV). Totals over whole cycles (waits, acquisitions, GETs) are independent
samples, so a ratio-of-sums interval over cycles (`gpusim.stats.ratio_error_interval`) uses the
information inside each run instead of only the spread between runs.

Where the cycles start is decided from the trace and the config alone, never from an outcome,
so every real run, every simulated replication and the observed record cut the trace at the
same tasks; a cycle's totals can then be paired across the two sides (same arrivals, same holds,
same jitter draws) and averaged over runs. To be sure the lock really is free at a cut, the cut
is taken from an upper-bound schedule: first come, first served, every task holds its key for
its whole recorded hold (a crashed holder until the key's TTL expires), nobody gives up, and
each hand-over to a waiter costs the longest a free key can go unnoticed by the waiters
(`handover_bound`). Real runs and the model only end busy periods earlier than this schedule,
so a task it finds idle finds the key idle in every run too (up to timing noise of the replay).
"""

from __future__ import annotations

import heapq
from typing import Any

import numpy as np

from gpusim.config import GpuLockConfig, LockSettings

__all__ = ["regeneration_cycles", "handover_bound", "HANDOVER_JITTER_MAX"]

HANDOVER_JITTER_MAX = 1.2  # poll sleeps are drawn from uniform(0.8, 1.2) x the interval


def handover_bound(cfg: GpuLockConfig, waited_s: float) -> float:
    """The longest a released key can stay free while a polling waiter that has waited
    ``waited_s`` is there: its next poll. YiVideo multiplies the interval by 1.5 before each
    sleep, capped at max_poll_interval, and sleeps it times uniform(0.8, 1.2); after k sleeps
    it has waited at least 2.4 poll (1.5^k - 1), so its next sleep is at most
    1.2 min(max, 0.625 waited + 1.5 poll). Without backoff: 1.2 poll. (An event-driven waiter
    is woken by the release itself, sooner.)"""
    if not cfg.exponential_backoff:
        return HANDOVER_JITTER_MAX * cfg.poll_interval
    return HANDOVER_JITTER_MAX * min(cfg.max_poll_interval,
                                     0.625 * waited_s + 1.5 * cfg.poll_interval)


def _lock_cfg(settings: GpuLockConfig | LockSettings) -> GpuLockConfig:
    return settings.gpu_lock if isinstance(settings, LockSettings) else settings


def _groups(trace: Any, cluster: Any, cfg: GpuLockConfig
            ) -> tuple[list[tuple[str, int]], dict[tuple[str, int], tuple[int, GpuLockConfig]]]:
    """Per task its key group, and per group (servers, gpu_lock config). Pinned (or no
    cluster): one key per (node, gpu), one server; otherwise a node's GPUs form one group."""
    nodes = {n.name: n for n in cluster.nodes} if cluster is not None else {}
    pinned = cluster is None or cluster.gpu_policy == "pinned"
    only = cluster.nodes[0].name if cluster is not None and len(cluster.nodes) == 1 else ""
    keys: list[tuple[str, int]] = []
    groups: dict[tuple[str, int], tuple[int, GpuLockConfig]] = {}
    for task in trace.tasks:
        name = task.node if task.node is not None else only
        node = nodes.get(name)
        key = (name, task.gpu if task.gpu is not None else 0) if pinned else (name, -1)
        if key not in groups:
            node_cfg = (node.settings.gpu_lock if node is not None and node.settings is not None
                        else cfg)
            groups[key] = (1 if pinned or node is None else node.gpus, node_cfg)
        keys.append(key)
    return keys, groups


def regeneration_cycles(trace: Any, settings: GpuLockConfig | LockSettings,
                        cluster: Any = None) -> np.ndarray:
    """Cycle number per task (trace order), numbered 0, 1, ... in order of their first task.

    A task starts a new cycle when, in the upper-bound schedule of the module docstring, every
    GPU of its key group is free at its arrival. Times are the trace's own (unscaled)."""
    cfg = _lock_cfg(settings)
    keys, groups = _groups(trace, cluster, cfg)
    cols = trace.columns
    arrival = np.asarray(cols.arrival_s, dtype=float)
    hold = np.nan_to_num(np.asarray(cols.duration_s, dtype=float), nan=0.0)
    crashed = np.asarray(cols.crashed, dtype=bool)
    finish: dict[tuple[str, int], list[float]] = {k: [] for k in groups}  # heap per group
    members: dict[tuple[str, int], list[int]] = {k: [] for k in groups}
    for j, k in enumerate(keys):
        members[k].append(j)
    group_arrivals = {k: arrival[v] for k, v in members.items()}  # sorted: trace order
    current: dict[tuple[str, int], int] = {}
    cycle = np.empty(len(keys), dtype=np.int64)
    n_cycles = 0
    for i, key in enumerate(keys):
        servers, gcfg = groups[key]
        busy = finish[key]
        a = float(arrival[i])
        while busy and busy[0] <= a:  # GPUs that freed before this arrival
            heapq.heappop(busy)
        if not busy:
            current[key] = n_cycles
            n_cycles += 1
        cycle[i] = current[key]
        if len(busy) < servers:
            start = a
        else:  # a hand-over at the release f; the newest waiter then polls the soonest
            f = heapq.heappop(busy)
            arr = group_arrivals[key]
            newest = float(arr[np.searchsorted(arr, f, side="right") - 1])
            start = f + handover_bound(gcfg, f - max(newest, a))
        h = max(float(hold[i]), float(gcfg.lock_timeout)) if crashed[i] else float(hold[i])
        heapq.heappush(busy, start + h)
    return cycle
