"""`simulate()`: the one typed entry point the CLI, the notebooks and the advisor call."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np

from gpusim import __version__
from gpusim.cluster import Cluster, default_cluster
from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.metrics import by_task_type, combine, run_metrics
from gpusim.model import Model
from gpusim.records import RunLog, TaskRecord, TaskTable
from gpusim.trace import Trace

RESULT_SCHEMA = "gpusim.result/1"
ENGINES = ("fast", "reference", "parked")


@dataclass(frozen=True)
class ReplicationResult:
    replication: int
    log: RunLog
    metrics: dict[str, Any]
    by_task_type: dict[str, dict[str, Any]]

    @property
    def records(self) -> tuple[TaskRecord, ...]:
        return self.log.records


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


def jsonable(x: Any) -> Any:
    """Plain JSON types; NaN/inf become null so the output is strict JSON."""
    if isinstance(x, dict):
        return {str(k): jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [jsonable(v) for v in x]
    if hasattr(x, "item") and not isinstance(x, (str, bytes)):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def as_settings(settings: LockSettings | GpuLockConfig) -> LockSettings:
    if isinstance(settings, GpuLockConfig):
        return LockSettings(gpu_lock=settings, source="<memory>")
    return settings


def check_fits(trace: Trace, cluster: Cluster) -> None:
    """Every task must be placeable: its node exists, its GPU exists, a service runs its type."""
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
    h.update("\0".join(t.task_id for t in trace.tasks).encode())
    return h.hexdigest()


def node_settings(cluster: Cluster, settings: LockSettings) -> list[LockSettings]:
    return [n.settings or settings for n in cluster.nodes]


def run_replication(trace: Trace, cluster: Cluster, settings: LockSettings, *, seed: int,
                    replication: int, engine: str = "reference",
                    time_scale: float = 1.0) -> ReplicationResult:
    model_cls = engine_class(engine)
    model = model_cls(trace, cluster, node_settings(cluster, settings), seed=seed,
                      replication=replication, time_scale=time_scale)
    log = model.run()
    # the Python engines write record objects: turn them into columns once, for both calls
    log = dataclasses.replace(log, records=TaskTable.from_records(log.records))
    return ReplicationResult(replication, log, run_metrics(log, cluster.redis),
                             by_task_type(log.records))


def engine_class(engine: str) -> type[Model]:
    if engine == "reference":
        return Model
    if engine == "fast":
        from gpusim.engine_compiled import CompiledModel
        return CompiledModel  # type: ignore[return-value]
    if engine == "parked":
        from gpusim.engine_parked import ParkedModel
        return ParkedModel
    raise InputError(f"unknown engine '{engine}' (choose {', '.join(ENGINES)})",
                     field="engine")


def simulate(trace: Trace, settings: LockSettings | GpuLockConfig,
             cluster: Cluster | None = None, *, seed: int = 0, replications: int = 1,
             engine: str = "fast", time_scale: float = 1.0,
             jobs: int = 1) -> SimulationResult:
    """Replay `trace` under `settings` on `cluster`, `replications` times with seeds derived
    from `seed`; replication r uses the same random streams whatever the config (CRN)."""
    if replications < 1:
        raise InputError("must be >= 1", field="replications")
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise InputError("must be a positive number", field="time_scale")
    cluster = cluster or default_cluster()
    settings = as_settings(settings)
    check_fits(trace, cluster)
    engine_class(engine)
    reps = _run_all(trace, cluster, settings, seed, replications, engine, time_scale, jobs)
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
    return SimulationResult(inputs, metrics, ci95, per_type_means, reps)


def _run_all(trace: Trace, cluster: Cluster, settings: LockSettings, seed: int,
             replications: int, engine: str, time_scale: float,
             jobs: int) -> list[ReplicationResult]:
    if jobs <= 1 or replications == 1:
        return [run_replication(trace, cluster, settings, seed=seed, replication=r,
                                engine=engine, time_scale=time_scale)
                for r in range(replications)]
    from gpusim.parallel import run_parallel
    return run_parallel(trace, cluster, settings, seed, replications, engine, time_scale, jobs)


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
