"""`simulate()`: the one typed entry point the CLI, the notebooks and the advisor call."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gpusim.version import __version__
from gpusim.cluster import Cluster, default_cluster
from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.engines import check_engine, engine_for_run
from gpusim.engines.replication import ReplicationResult, run_replication
from gpusim.output import jsonable
from gpusim.records import TaskRecord
from gpusim.schedule import ConfigChange, describe, sorted_changes
from gpusim.stats import combine
from gpusim.traces.format import Trace
from gpusim.traces.observed import check_holds_known

RESULT_SCHEMA = "gpusim.result/1"


@dataclass(frozen=True)
class SimulationResult:
    inputs: dict[str, Any]
    metrics: dict[str, Any]
    ci95: dict[str, Any]
    by_task_type: dict[str, dict[str, Any]]
    replications: list[ReplicationResult] = field(repr=False)

    def to_json(self) -> dict[str, Any]:
        return jsonable({
            "schema": RESULT_SCHEMA,
            "inputs": self.inputs,
            "metrics": self.metrics,
            "ci95": self.ci95,
            "by_task_type": self.by_task_type,
            "replications": [{"replication": r.replication, "metrics": r.metrics,
                              "by_task_type": r.by_task_type} for r in self.replications],
        })

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


MAX_SEED = 2 ** 64 - 1


def check_seed(seed: int) -> None:
    """Seeds are non-negative integers below 2**64 (numpy's SeedSequence entropy)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) \
            or not 0 <= seed <= MAX_SEED:
        raise InputError(f"must be an integer from 0 to 2**64-1, got {seed!r}", field="seed")


def as_settings(settings: LockSettings | GpuLockConfig) -> LockSettings:
    if isinstance(settings, GpuLockConfig):
        return LockSettings(gpu_lock=settings, source="<memory>")
    return settings


def check_fits(trace: Trace, cluster: Cluster) -> None:
    """Every task must be placeable: its node exists, its GPU exists, a service runs its type."""
    check_holds_known(trace)
    nodes = cluster.node_by_name()
    cols = trace.columns
    for ttype in cols.types:
        try:
            cluster.service_of(ttype)
        except KeyError:
            first = trace.tasks[int(np.argmax(cols.task_type == cols.types.index(ttype)))]
            raise InputError(f"no service in the cluster runs task type '{ttype}'",
                             file=trace.source, line=first.line, field="task_type") from None
    gpus_of = np.array([nodes[nd].gpus if nd in nodes else 0 for nd in cols.nodes] + [0],
                       dtype=np.int64)
    unknown = [k for k, nd in enumerate(cols.nodes) if nd not in nodes]
    if unknown:
        first = trace.tasks[int(np.argmax(np.isin(cols.node, unknown)))]
        raise InputError(f"node '{first.node}' is not in the cluster (nodes: "
                         f"{', '.join(nodes)})", file=trace.source, line=first.line,
                         field="node")
    if cluster.gpu_policy == "pinned":
        # a GPU named without a node must exist on every node the task may land on
        limit = np.where(cols.node >= 0, gpus_of[cols.node],
                         min(n.gpus for n in cluster.nodes))
        bad = np.flatnonzero(cols.gpu >= limit)
        if len(bad):
            task = trace.tasks[int(bad[0])]
            raise InputError(f"gpu {task.gpu} does not exist (the node has {limit[bad[0]]} "
                             f"GPU(s))", file=trace.source, line=task.line, field="gpu")


def trace_digest(trace: Trace) -> str:
    """SHA-256 over every task's fields (ids, types, times, placement, crash flag)."""
    cols = trace.columns
    h = hashlib.sha256()
    for arr in (cols.arrival_s, cols.duration_s, cols.crashed, cols.gpu, cols.node,
                cols.task_type):
        h.update(np.ascontiguousarray(arr).tobytes())
    h.update("\0".join(cols.nodes + ("|",) + cols.types).encode())
    h.update("\0".join(trace.task_ids).encode())
    return h.hexdigest()


def simulate(trace: Trace, settings: LockSettings | GpuLockConfig,
             cluster: Cluster | None = None, *, seed: int = 0, replications: int = 1,
             engine: str = "fast", time_scale: float = 1.0,
             jobs: int = 1, changes: Sequence[ConfigChange] = ()) -> SimulationResult:
    """Replay `trace` under `settings` on `cluster`, `replications` times with seeds derived
    from `seed`; replication r uses the same random streams whatever the config (CRN).

    `changes` (gpusim.schedule): config changes during the trace; a task uses the gpu_lock in
    force on its node when it starts acquiring (a change at that instant applies), tasks already
    waiting or holding keep theirs. Listed in `inputs["config_changes"]` (absent when none)."""
    check_seed(seed)
    if replications < 1:
        raise InputError("must be >= 1", field="replications")
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise InputError("must be a positive number", field="time_scale")
    cluster = cluster or default_cluster()
    settings = as_settings(settings)
    check_fits(trace, cluster)
    changes = check_changes(changes, cluster, settings)
    check_engine(engine)
    configs = [(n.settings or settings).gpu_lock for n in cluster.nodes] + \
        [c.settings.gpu_lock for c in changes]
    # (the monitor sweeps for as long as a key lives: no small bound, so no reference there)
    runs_on = engine_for_run(engine, 0, []) if cluster.options.monitor else engine_for_run(
        engine, len(trace), configs,
        max(cluster.options.max_wait_time_by_type.values(), default=0.0))
    reps = _run_all(trace, cluster, settings, seed, replications, runs_on, time_scale, jobs,
                    changes)
    metrics, ci95 = combine([r.metrics for r in reps])
    per_type_means = {}
    for ttype in reps[0].by_task_type:
        per_type_means[ttype], _ = combine([r.by_task_type[ttype] for r in reps])
    inputs = {
        "gpusim_version": __version__,
        "trace": {"source": trace.source, "tasks": len(trace), "sha256": trace_digest(trace)},
        "gpu_lock": settings.gpu_lock.model_dump(),
        "gpu_lock_monitor": settings.gpu_lock_monitor.model_dump(),
        "config_source": settings.source,
        "cluster": cluster_summary(cluster),
        "seed": seed, "replications": replications, "time_scale": time_scale,
        "engine": engine,
    }
    if changes:  # absent without changes, so every result without them stays byte-identical
        inputs["config_changes"] = describe(changes)
    return SimulationResult(inputs, metrics, ci95, per_type_means, reps)


def check_changes(changes: Sequence[ConfigChange], cluster: Cluster,
                  settings: LockSettings) -> list[ConfigChange]:
    """The changes in time order; each names a node of the cluster (or none: every node).

    A change carries gpu_lock only: the monitor reads its section once, at its start, so with
    the monitor option on a change whose gpu_lock_monitor differs is refused, not ignored."""
    changes = sorted_changes(changes)
    names = [n.name for n in cluster.nodes]
    monitor = (cluster.nodes[0].settings or settings).gpu_lock_monitor
    for ch in changes:
        if ch.node is not None and ch.node not in names:
            raise InputError(f"node '{ch.node}' is not in the cluster (nodes: "
                             f"{', '.join(names)})", file=ch.source, field="node")
        if cluster.options.monitor and ch.settings.gpu_lock_monitor != monitor:
            raise InputError("a config change cannot change gpu_lock_monitor (the monitor "
                             "reads it once, when it starts)", file=ch.source,
                             field="gpu_lock_monitor")
    return changes


def _run_all(trace: Trace, cluster: Cluster, settings: LockSettings, seed: int,
             replications: int, engine: str, time_scale: float,
             jobs: int, changes: Sequence[ConfigChange] = ()) -> list[ReplicationResult]:
    if jobs <= 1 or replications == 1:
        return [run_replication(trace, cluster, settings, seed=seed, replication=r,
                                engine=engine, time_scale=time_scale, changes=changes)
                for r in range(replications)]
    from gpusim.engines.parallel import run_parallel
    return run_parallel(trace, cluster, settings, seed, replications, engine, time_scale, jobs,
                        tuple(changes))


def cluster_summary(cluster: Cluster) -> dict[str, Any]:
    return {
        "source": cluster.source,
        "nodes": [{"name": n.name, "gpus": n.gpus,
                   "config": n.settings.source if n.settings else None} for n in cluster.nodes],
        "gpu_policy": cluster.gpu_policy,
        "workers_per_service": cluster.workers_per_service,
        "services": ({k: v.model_dump() for k, v in cluster.services.items()}
                     if cluster.services else None),
        "redis": cluster.redis.model_dump(),
        "options": cluster.options.model_dump(),
    }


def records_jsonl(records: Sequence[TaskRecord], replication: int = 0) -> str:
    """One JSON object per task, tagged with its replication."""
    return "".join(json.dumps(jsonable({"replication": replication, **r.to_json()}),
                              sort_keys=True) + "\n" for r in records)
