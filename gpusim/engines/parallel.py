"""Replications in worker processes. Each replication depends only on (inputs, seed, index),
so the results are the same objects, in the same order, as a single-process run.

Ctrl-C reaches the whole process group. Workers ignore SIGINT (a worker interrupted while idle
would print a traceback and break the pool); the parent alone turns it into KeyboardInterrupt
and then kills the workers, so nothing is left running and nothing else is printed."""

from __future__ import annotations

import multiprocessing as mp
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Iterator

if TYPE_CHECKING:
    from gpusim.cluster import Cluster
    from gpusim.config import LockSettings
    from gpusim.engines.replication import ReplicationResult
    from gpusim.traces.format import Trace

_shared: dict = {}


def _init(trace: "Trace", cluster: "Cluster", settings: "LockSettings",
          changes: tuple = ()) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C for the group
    if hasattr(signal, "pthread_sigmask"):
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})  # blocked at fork
    _shared.update(trace=trace, cluster=cluster, settings=settings, changes=changes)


def _one(args: tuple[int, int, str, float]) -> "ReplicationResult":
    from gpusim.engines.replication import run_replication
    seed, rep, engine, time_scale = args
    return run_replication(_shared["trace"], _shared["cluster"], _shared["settings"],
                           seed=seed, replication=rep, engine=engine, time_scale=time_scale,
                           changes=_shared["changes"])


@contextmanager
def _sigint_held() -> Iterator[None]:
    """Block SIGINT while workers are forked: a child must not get a Ctrl-C before `_init`
    ignores it, and the parent gets a Ctrl-C sent meanwhile as soon as this ends."""
    can = hasattr(signal, "pthread_sigmask") and threading.current_thread() is \
        threading.main_thread()
    if can:
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        yield
    finally:
        if can:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def _stop(pool: ProcessPoolExecutor) -> None:
    """Kill the workers (their compiled loops do not look at signals) and drop queued work."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        if proc.is_alive():
            proc.terminate()
    pool.shutdown(wait=True, cancel_futures=True)


def run_parallel(trace: "Trace", cluster: "Cluster", settings: "LockSettings", seed: int,
                 replications: int, engine: str, time_scale: float,
                 jobs: int, changes: tuple = ()) -> list["ReplicationResult"]:
    method = "fork" if "fork" in mp.get_all_start_methods() else "spawn"
    pool = ProcessPoolExecutor(max_workers=min(jobs, replications),
                               mp_context=mp.get_context(method), initializer=_init,
                               initargs=(trace, cluster, settings, tuple(changes)))
    futures: list[Future] = []
    try:
        with _sigint_held():  # fork starts every worker at the first submit
            futures = [pool.submit(_one, (seed, r, engine, time_scale))
                       for r in range(replications)]
        results = [f.result() for f in futures]
    except BaseException:
        _stop(pool)
        raise
    pool.shutdown(wait=True)
    return results
