"""Replications in worker processes. Each replication depends only on (inputs, seed, index),
so the results are the same objects, in the same order, as a single-process run."""

from __future__ import annotations

import multiprocessing as mp
from concurrent.futures import ProcessPoolExecutor
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gpusim.cluster import Cluster
    from gpusim.config import LockSettings
    from gpusim.engines.replication import ReplicationResult
    from gpusim.traces.format import Trace

_shared: dict = {}


def _init(trace: "Trace", cluster: "Cluster", settings: "LockSettings") -> None:
    _shared.update(trace=trace, cluster=cluster, settings=settings)


def _one(args: tuple[int, int, str, float]) -> "ReplicationResult":
    from gpusim.engines.replication import run_replication
    seed, rep, engine, time_scale = args
    return run_replication(_shared["trace"], _shared["cluster"], _shared["settings"],
                           seed=seed, replication=rep, engine=engine, time_scale=time_scale)


def run_parallel(trace: "Trace", cluster: "Cluster", settings: "LockSettings", seed: int,
                 replications: int, engine: str, time_scale: float,
                 jobs: int) -> list["ReplicationResult"]:
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    with ProcessPoolExecutor(max_workers=min(jobs, replications),
                             mp_context=mp.get_context(method), initializer=_init,
                             initargs=(trace, cluster, settings)) as pool:
        return list(pool.map(_one, [(seed, r, engine, time_scale)
                                    for r in range(replications)]))
