"""Metrics: pure functions of a run's records and logs. Names live in one Enum."""

from __future__ import annotations

from enum import Enum
from typing import Any, Sequence

import numpy as np

from gpusim.cluster import COMMANDS, RedisModel
from gpusim.records import (LOST_REASONS, OUTCOMES, HoldEnd, LostReason, Outcome, RunLog,
                            TaskRecord, TaskTable, hold_reason_count)
from gpusim.timebins import MINUTE_S


class Metric(str, Enum):
    TASKS = "tasks"
    ACQUIRED = "acquired"
    CRASHED = "crashed"
    TIMEOUTS = "timeouts"
    SUCCESS_RATE = "success_rate"          # completed with the lock / tasks
    TIMEOUT_RATE = "timeout_rate"          # gave up waiting (GPU_LOCK_TIMEOUT) / tasks
    CRASH_RATE = "crash_rate"
    WAIT_MEAN = "wait_mean_s"              # lock wait of every task, acquired or not
    WAIT_P50 = "wait_p50_s"
    WAIT_P95 = "wait_p95_s"
    WAIT_P99 = "wait_p99_s"
    WAIT_MAX = "wait_max_s"
    WAIT_MEAN_ACQUIRED = "wait_mean_acquired_s"
    # the lock wait split (gpusim.headroom): held by another task vs free while the task waited
    WAIT_HELD_MEAN = "wait_held_mean_s"    # mean held_wait_s over every task
    WAIT_FREE_MEAN = "wait_free_mean_s"    # mean free_wait_s over every task
    WAIT_FREE_SHARE = "wait_free_share"    # sum free / sum wait (None: no wait at all)
    QUEUE_WAIT_MEAN = "queue_wait_mean_s"  # waiting for a Celery worker slot
    QUEUE_WAIT_P95 = "queue_wait_p95_s"
    LATENCY_MEAN = "latency_mean_s"        # arrival to slot freed
    LATENCY_P95 = "latency_p95_s"
    POLLS = "polls"                        # lock tries (GET rounds)
    REDIS_COMMANDS = "redis_commands"
    REDIS_COMMANDSTATS = "redis_commandstats"
    REDIS_OPS_PER_S = "redis_ops_per_s"
    REDIS_OPS_PER_S_PEAK_1M = "redis_ops_per_s_peak_1m"
    REDIS_CPU_S = "redis_cpu_s"
    REDIS_CPU_UTILIZATION = "redis_cpu_utilization"
    REDIS_CPU_UTILIZATION_PEAK_1M = "redis_cpu_utilization_peak_1m"
    GPU_UTILIZATION = "gpu_utilization"
    LOCK_EXPIRED_WHILE_HELD = "lock_expired_while_held"
    LOCK_LOST_WHILE_HELD = "lock_lost_while_held"
    DOUBLE_OCCUPANCY_S = "double_occupancy_s"
    EMERGENCY_DELETES = "emergency_deletes"
    FOREIGN_LOCK_DELETES = "foreign_lock_deletes"
    MISSED_WAKEUPS = "missed_wakeups"
    EVENT_FALLBACKS = "event_fallbacks"
    SILENT_FREES = "silent_frees"
    HORIZON = "horizon_s"


PER_TYPE = (Metric.TASKS, Metric.SUCCESS_RATE, Metric.TIMEOUT_RATE, Metric.CRASH_RATE,
            Metric.WAIT_MEAN, Metric.WAIT_P50, Metric.WAIT_P95, Metric.WAIT_P99, Metric.WAIT_MAX,
            Metric.QUEUE_WAIT_MEAN, Metric.LATENCY_MEAN, Metric.LATENCY_P95, Metric.POLLS,
            Metric.LOCK_LOST_WHILE_HELD, Metric.WAIT_HELD_MEAN, Metric.WAIT_FREE_MEAN,
            Metric.WAIT_FREE_SHARE)


def _pct(x: np.ndarray, q: float) -> float | None:
    return float(np.percentile(x, q)) if len(x) else None


def wait_split_metrics(t: TaskTable) -> dict[str, Any]:
    """Means of held and free wait and the free share of all waiting; None where the split was
    not computed (records from outside run_replication, e.g. a real-Redis replay)."""
    held, free = t.held_wait_s, t.free_wait_s
    known = len(held) > 0 and not (np.isnan(held).any() or np.isnan(free).any())
    total = float(t.wait_s.sum()) if known else 0.0
    return {
        Metric.WAIT_HELD_MEAN.value: float(held.mean()) if known else None,
        Metric.WAIT_FREE_MEAN.value: float(free.mean()) if known else None,
        Metric.WAIT_FREE_SHARE.value: float(free.sum()) / total if known and total > 0
        else None,
    }


#: The TaskTable columns task_metrics reads (by_task_type copies only these).
TASK_METRIC_COLUMNS = ("outcome", "wait_s", "slot_s", "arrival_s", "end_s", "attempts",
                       "lost_reason", "missed_wakeups", "fell_back", "held_wait_s",
                       "free_wait_s")


def task_metrics(records: Sequence[TaskRecord] | TaskTable) -> dict[str, Any]:
    """Metrics that depend on the task records alone (used overall and per task type)."""
    t = TaskTable.from_records(records)
    n = len(t)
    outcome = t.outcome
    acquired = int((outcome == OUTCOMES.index(Outcome.ACQUIRED)).sum())
    crashed = int((outcome == OUTCOMES.index(Outcome.CRASHED)).sum())
    timeouts = int((outcome == OUTCOMES.index(Outcome.TIMEOUT)).sum())
    wait = t.wait_s
    acq_wait = wait[outcome != OUTCOMES.index(Outcome.TIMEOUT)]
    queue = t.slot_s - t.arrival_s
    latency = t.end_s - t.arrival_s
    lost = t.lost_reason
    return {
        Metric.TASKS.value: n,
        Metric.ACQUIRED.value: acquired,
        Metric.CRASHED.value: crashed,
        Metric.TIMEOUTS.value: timeouts,
        Metric.SUCCESS_RATE.value: acquired / n if n else None,
        Metric.TIMEOUT_RATE.value: timeouts / n if n else None,
        Metric.CRASH_RATE.value: crashed / n if n else None,
        Metric.WAIT_MEAN.value: float(wait.mean()) if n else None,
        Metric.WAIT_P50.value: _pct(wait, 50),
        Metric.WAIT_P95.value: _pct(wait, 95),
        Metric.WAIT_P99.value: _pct(wait, 99),
        Metric.WAIT_MAX.value: float(wait.max()) if n else None,
        Metric.WAIT_MEAN_ACQUIRED.value: float(acq_wait.mean()) if len(acq_wait) else None,
        Metric.QUEUE_WAIT_MEAN.value: float(queue.mean()) if n else None,
        Metric.QUEUE_WAIT_P95.value: _pct(queue, 95),
        Metric.LATENCY_MEAN.value: float(latency.mean()) if n else None,
        Metric.LATENCY_P95.value: _pct(latency, 95),
        Metric.POLLS.value: int(t.attempts.sum()),
        Metric.LOCK_EXPIRED_WHILE_HELD.value:
            int((lost == LOST_REASONS.index(LostReason.EXPIRED)).sum()),
        Metric.LOCK_LOST_WHILE_HELD.value: int((lost >= 0).sum()),
        Metric.MISSED_WAKEUPS.value: int(t.missed_wakeups.sum()),
        Metric.EVENT_FALLBACKS.value: int(t.fell_back.sum()),
    } | wait_split_metrics(t)


def gpu_occupancy(records: Sequence[TaskRecord] | TaskTable, gpus: Sequence[tuple[str, int]],
                  horizon: float) -> tuple[float, float]:
    """(mean utilisation over GPUs, seconds with two or more tasks running on one GPU)."""
    t = TaskTable.from_records(records)
    gpu_id = {g: i for i, g in enumerate(gpus)}
    node_gpu = np.full((len(t.node_names), max((g for _, g in gpus), default=0) + 1), -1)
    for k, name in enumerate(t.node_names):
        for g in range(node_gpu.shape[1]):
            node_gpu[k, g] = gpu_id.get((name, g), -1)
    ok = ~np.isnan(t.acquired_s) & ~np.isnan(t.gpu_end_s)
    ok &= t.gpu >= 0
    ok[ok] &= t.gpu_end_s[ok] > t.acquired_s[ok]
    gid = node_gpu[t.node[ok], t.gpu[ok]]
    if (gid < 0).any():
        raise ValueError("a record names a GPU that is not in the run's GPU list")
    m = int(ok.sum())
    times = np.concatenate((t.acquired_s[ok], t.gpu_end_s[ok]))
    steps = np.concatenate((np.ones(m, np.int64), -np.ones(m, np.int64)))
    gids = np.concatenate((gid, gid))
    # per GPU in time order; ends sort before starts at one instant (back-to-back is not overlap)
    order = np.lexsort((steps, times, gids))
    times, steps, gids = times[order], steps[order], gids[order]
    level = np.cumsum(steps)  # every GPU's segment sums to zero, so this is its own level
    same = gids[1:] == gids[:-1]
    dt = np.diff(times)
    busy_total = float(dt[same & (level[:-1] >= 1)].sum())
    double = float(dt[same & (level[:-1] >= 2)].sum())
    util = busy_total / (horizon * len(gpus)) if horizon > 0 and gpus else 0.0
    return util, double


def redis_load(log: RunLog, redis: RedisModel) -> dict[str, Any]:
    cpu_vec = np.array([redis.cpu_us.get(c, 0.0) for c in COMMANDS]) * 1e-6
    per_sub = redis.cpu_us["PUBLISH_PER_SUBSCRIBER"] * 1e-6
    minute_ops = log.minute_commands.sum(axis=1)
    minute_cpu = log.minute_commands @ cpu_vec + log.minute_deliveries * per_sub
    background = redis.background_ops_per_s * redis.background_cpu_us * 1e-6
    horizon = log.horizon_s
    total_cmds = int(sum(log.commands.values()))
    cpu_s = float(sum(log.commands[c] * cpu_vec[i] for i, c in enumerate(COMMANDS))
                  + log.deliveries * per_sub)
    # A partial last minute is scaled by its true length, not by 60 s.
    full = int(horizon // MINUTE_S)
    lengths = np.full(len(minute_ops), MINUTE_S)
    if full < len(lengths):
        lengths[full] = max(horizon - full * MINUTE_S, 1e-9)
        lengths[full + 1:] = MINUTE_S
    peak_ops = float((minute_ops / lengths).max()) if len(minute_ops) else 0.0
    peak_cpu = float((minute_cpu / lengths).max()) if len(minute_cpu) else 0.0
    return {
        Metric.REDIS_COMMANDS.value: dict(log.commands),
        Metric.REDIS_COMMANDSTATS.value: dict(log.commandstats),
        Metric.REDIS_OPS_PER_S.value: total_cmds / horizon if horizon > 0 else 0.0,
        Metric.REDIS_OPS_PER_S_PEAK_1M.value: peak_ops,
        Metric.REDIS_CPU_S.value: cpu_s,
        Metric.REDIS_CPU_UTILIZATION.value: (cpu_s / horizon if horizon > 0 else 0.0)
        + background,
        Metric.REDIS_CPU_UTILIZATION_PEAK_1M.value: peak_cpu + background,
    }


def run_metrics(log: RunLog, redis: RedisModel) -> dict[str, Any]:
    table = TaskTable.from_records(log.records)
    m = task_metrics(table)
    m.update(redis_load(log, redis))
    util, double = gpu_occupancy(table, log.gpus, log.horizon_s)
    m[Metric.GPU_UTILIZATION.value] = util
    m[Metric.DOUBLE_OCCUPANCY_S.value] = double
    m[Metric.EMERGENCY_DELETES.value] = log.commands["DEL"] - hold_reason_count(
        log.holds, HoldEnd.MONITOR_DELETED)
    m[Metric.FOREIGN_LOCK_DELETES.value] = int(table.deleted_other.sum())
    m[Metric.SILENT_FREES.value] = hold_reason_count(
        log.holds, HoldEnd.EXPIRED, HoldEnd.EMERGENCY_DELETED,
        HoldEnd.MONITOR_DELETED)
    m[Metric.HORIZON.value] = log.horizon_s
    return m


def by_task_type(records: Sequence[TaskRecord] | TaskTable) -> dict[str, dict[str, Any]]:
    table = TaskTable.from_records(records)
    keep = {m.value for m in PER_TYPE}
    out = {}
    for code, name in sorted(enumerate(table.type_names), key=lambda x: x[1]):
        mask = table.task_type == code
        if mask.any():
            # only the columns task_metrics reads: copying all of them was 0.05 s on a week
            part = table.subset(mask, TASK_METRIC_COLUMNS)
            out[name] = {k: v for k, v in task_metrics(part).items() if k in keep}
    return out
