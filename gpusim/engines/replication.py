"""One replication: run an engine, then compute its metrics (the unit parallel workers share)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

from gpusim.cluster import Cluster
from gpusim.config import LockSettings
from gpusim.engines import engine_class
from gpusim.headroom import with_headroom
from gpusim.metrics import by_task_type, run_metrics
from gpusim.records import RunLog, TaskRecord
from gpusim.schedule import ConfigChange
from gpusim.traces.format import Trace


@dataclass(frozen=True)
class ReplicationResult:
    replication: int
    log: RunLog
    metrics: dict[str, Any]
    by_task_type: dict[str, dict[str, Any]]

    @property
    def records(self) -> tuple[TaskRecord, ...]:
        return self.log.records


def node_settings(cluster: Cluster, settings: LockSettings) -> list[LockSettings]:
    return [n.settings or settings for n in cluster.nodes]


def run_replication(trace: Trace, cluster: Cluster, settings: LockSettings, *, seed: int,
                    replication: int, engine: str = "reference",
                    time_scale: float = 1.0,
                    changes: Sequence[ConfigChange] = ()) -> ReplicationResult:
    model_cls = engine_class(engine)
    model = model_cls(trace, cluster, node_settings(cluster, settings), seed=seed,
                      replication=replication, time_scale=time_scale, changes=changes)
    # records as columns (the reference writes objects), every lock wait split into its held
    # and free time (gpusim.headroom), computed once for both metric calls
    log = with_headroom(model.run(), cluster)
    return ReplicationResult(replication, log, run_metrics(log, cluster.redis),
                             by_task_type(log.records))
