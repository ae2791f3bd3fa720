"""The real side of `gpusim validate`: replay a trace against a real Redis (`run_real`).

`run_real` checks the inputs and runs the replays one after another here, or side by side in
lanes (gpusim.real.lanes); one replay is gpusim.real.one_run's `_OneRun`. What follows is how a
replay works and what it measures.

The trace is replayed in compressed real time: arrivals, hold times and every `gpu_lock`
duration (lock_timeout included, sent as a fractional TTL) are divided by ``time_scale``, which is
exactly what ``simulate(..., time_scale=F)`` does, so the two sides are compared in the same
(compressed) seconds. One worker per task, as in the model's validation convention: a task starts
acquiring at its arrival (no Celery slot queueing), wait = acquired (or gave up) minus start,
attempts = GETs issued by the acquire loop(s).

Workers are threads, one per task, each with its own `LockClient` (own command connection and own
Pub/Sub connection). Why threads: YiVideo's lock code is synchronous redis-py with blocking
sockets and `threading.Event` waits, and a thread per task runs that very code shape. redis-py's
blocking socket calls and `time.sleep` release the GIL, so at any moment almost every worker is
blocked outside the interpreter; the GIL only serialises the few microseconds of Python around
each command. Processes would cost a fork and an interpreter per task (and 2 CPU cores cannot run
hundreds of them); asyncio would be accurate too, but would not be the protocol's own sync code.
To keep GIL hand-offs short during a burst (a thundering herd wakes every waiter at once) the
interpreter's switch interval is lowered to 0.2 ms for the duration of a run and restored after.
Every connection is opened before the measured window, so connection handshakes cost no Redis CPU
and no commands inside it.

Paced clients (``pace=True``, the default): each lock client keeps its tries on the schedule the
model computes for the same draws (`LockClient`'s paced polling: a try is due one measured round
trip per command plus the drawn sleep after the previous one was due; a hold ends its duration
after the winning try was due to end). YiVideo's loop sleeps after each reply, so its own client
time (~0.1 ms a poll on the 2-core VM) is part of its period; at 1x that is nothing against 2-10 s
sleeps, but compressed 100x it is 100x larger against the sleeps, it adds up over hundreds of
polls, and the replay's poll phases drift ~1-2 s of trace time from the model's, so every later
race after a release is decided differently on the two sides. Measured on the reference trace
(337 tasks, 100x): unpaced, 42-46% of tasks waited within 0.5 trace-s of their simulated twin;
paced with a back-to-back round trip, 57-69%; paced with the round trip of a command sent after
a sleep (what a replay's tries are; about 0.5 ms against 0.12 ms back to back), 77%.

Timing accuracy is measured, not assumed: each run reports the start lateness (actual start of
acquisition minus its scheduled time), the overshoot of every polling sleep and of every hold,
as p50 / p95 / max; the comparison prints them next to the smallest scaled interval so a user can
see when the compression is too aggressive for this machine.

Redis accounting: INFO commandstats and INFO cpu (used_cpu_user + used_cpu_sys) are read before
and after each run. Redis CPU of a run = CPU delta minus the idle rate (measured over a short idle
window with all connections open) times the run's length; that is the same quantity
`gpusim calibrate-redis` calibrates per command, so it compares like with like with the model's
``redis_cpu_s``. The idle windows last 1% of the replay (0.5 to 2 s each, before and after):
the idle rate (~2.6 ms/s with 2,000 connections open) times a 4-minute run is a third of the
run's raw CPU, so a 0.5 s window's noise (2.8 vs 3.5 ms/s measured in two runs) mattered.

When the Redis is on this host, a control load runs on a second private redis-server during
each run (``RealRun.reference``; see gpusim.real.calibrate, "Redis CPU model"), and the
redis-server's voluntary context switches per client command are reported as a check of "one
wake-up per command" (``RealRun.server_wakeups``).
"""

from __future__ import annotations

import math
import uuid
from pathlib import Path
from typing import Any, Callable, Sequence

import redis

from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.real.lock_client import LockParams
from gpusim.real.one_run import (CudaUnavailable, RealResult, RealRun, RedisDiedDuringRun,
                                 RedisUnavailable, _control_client, _cuda_hold_factory,
                                 _local_pid, _measure_rtt, _OneRun, _save_partial,
                                 summarize_lateness)

__all__ = ["run_real", "RealRun", "RealResult", "RedisUnavailable", "RedisDiedDuringRun",
           "CudaUnavailable", "summarize_lateness"]


def _check_args(trace: Any, time_scale: float, runs: int, hold: str) -> None:
    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise InputError("must be a positive number", field="time_scale")
    if runs < 1:
        raise InputError("must be >= 1", field="runs")
    if hold not in ("sleep", "cuda"):
        raise InputError("must be 'sleep' or 'cuda'", field="hold")
    if len(trace) == 0:
        raise InputError("trace has no tasks", file=getattr(trace, "source", None))
    from gpusim.traces.observed import check_holds_known
    check_holds_known(trace)  # a task that timed out in the record has no hold to replay


def _plan(trace: Any, cluster: Any, settings: GpuLockConfig, time_scale: float) -> list[tuple]:
    """(task, node name, gpu, lock params, scaled arrival, scaled hold) per task."""
    nodes = {n.name: n for n in cluster.nodes}
    src = getattr(trace, "source", None)
    plan = []
    for task in trace.tasks:
        if task.node is not None:
            if task.node not in nodes:
                raise InputError(f"node {task.node!r} is not in the cluster", field="node",
                                 line=task.line, file=src)
            node = nodes[task.node]
        elif len(cluster.nodes) == 1:
            node = cluster.nodes[0]
        else:
            raise InputError("a real replay on several nodes needs each task's node",
                             field="node", line=task.line, file=src)
        gpu = task.gpu if task.gpu is not None else 0
        if gpu >= node.gpus:
            raise InputError(f"gpu {gpu} but node {node.name} has {node.gpus}", field="gpu",
                             line=task.line, file=src)
        cfg = node.settings.gpu_lock if node.settings is not None else settings
        plan.append((task, node.name, gpu, LockParams.from_config(cfg, time_scale),
                     task.arrival_s / time_scale, task.duration_s / time_scale))
    return plan


def run_real(trace: Any, lock_config: GpuLockConfig | LockSettings, *,
             redis_url: str | None = None, time_scale: float = 1.0, runs: int = 1,
             hold: str = "sleep", cluster: Any = None, seed: int = 0,
             unique_owner_token: bool | None = None, emergency_delete: bool | None = None,
             partial_path: str | Path | None = None, key_prefix: str | None = None,
             idle_window_s: float | None = None, reference: Any = None,
             progress: Callable[[str], None] | None = None,
             yivideo_log: str | Path | None = None, changes: Sequence[Any] = (),
             pace: bool = True, lanes: int = 1) -> RealResult:
    """Replay ``trace`` ``runs`` times against a real Redis; see the module docstring.

    ``redis_url`` None starts a private redis-server for the duration. Run r feeds each task the
    jitter draws the model's replication r of ``seed`` uses (gpusim.rng), so real run r and
    simulated replication r see the same random numbers. Keys are namespaced under
    ``key_prefix`` (default ``gpusim:validate:<random>:``), so a shared Redis is not disturbed.

    ``reference``: a `gpusim.real.calibrate.ReferenceLoad` on a second Redis of the same host, run
    during every measured window (the CPU control; recorded in ``RealRun.reference``).
    ``idle_window_s`` None: 1% of the replay's length, clipped to [0.5, 2] s.
    ``yivideo_log``: a file the lock clients write YiVideo's lock log lines to (all runs;
    gpusim.real.yivideo_log), for `gpusim trace import-yivideo-logs`.
    ``changes``: config changes during the trace (gpusim.schedule, trace seconds): each worker
    reads the config in force on its node when it starts acquiring (gpusim.real.config_timeline).
    ``pace``: the lock clients keep their tries on the model's schedule (`LockClient`'s paced
    polling), with the round trip measured on the server before the first run
    (``inputs["pace_rtt_s"]``, which the validation's model then uses as its ``rtt_s``); False
    runs YiVideo's loop as is, whose per-poll client time the compression magnifies.
    ``lanes``: how many runs replay side by side, each in a process of its own against a
    private redis-server of its own (gpusim.real.lanes); more than 1 needs ``redis_url``,
    ``reference`` and ``yivideo_log`` None.
    """
    from gpusim.cluster import default_cluster

    _check_args(trace, time_scale, runs, hold)
    _check_lanes(lanes, runs, redis_url=redis_url, reference=reference, yivideo_log=yivideo_log)
    settings = lock_config.gpu_lock if isinstance(lock_config, LockSettings) else lock_config
    cluster = cluster or default_cluster()
    if cluster.gpu_policy != "pinned":
        raise InputError("a real replay supports gpu_policy 'pinned' only", field="gpu_policy")
    if cluster.options.monitor:
        raise InputError("a real replay does not run the gpu_lock_monitor", field="monitor")
    uot = cluster.options.unique_owner_token if unique_owner_token is None else unique_owner_token
    emd = cluster.options.emergency_delete if emergency_delete is None else emergency_delete
    plan = _plan(trace, cluster, settings, time_scale)
    if changes:
        from gpusim.simulation import as_settings, check_changes
        changes = check_changes(changes, cluster, as_settings(lock_config))
    hold_fn = _cuda_hold_factory() if hold == "cuda" else None
    if idle_window_s is None:
        span = max(a + d for *_, a, d in plan)
        idle_window_s = min(2.0, max(0.5, 0.01 * span))
    inputs, opts = _inputs_and_options(trace, settings, cluster, changes, time_scale=time_scale,
                                       runs=runs, hold=hold, seed=seed, uot=uot, emd=emd,
                                       redis_url=redis_url, key_prefix=key_prefix,
                                       idle_window_s=idle_window_s)
    if lanes > 1:
        from gpusim.real.lanes import replay_in_lanes
        return replay_in_lanes(plan, runs, lanes, hold=hold, pace=pace, opts=opts,
                               inputs=inputs, partial_path=partial_path, progress=progress)
    owned = None
    if redis_url is None:
        from gpusim.real.server import PrivateRedis
        owned = PrivateRedis().start()
        redis_url = owned.url
        inputs["redis"] = "private redis-server"
    opts.update(hold_fn=hold_fn, reference=reference)
    try:
        ctl, inputs["redis_version"] = _control_client(redis_url)
        if pace:
            opts["pace_rtt_s"] = inputs["pace_rtt_s"] = _measure_rtt(ctl)
        if yivideo_log is None:
            return _runs(plan, redis_url, ctl, runs, inputs, opts, owned, partial_path, progress)
        from gpusim.real.yivideo_log import YiVideoLockLog
        with YiVideoLockLog(yivideo_log) as opts["log"]:
            return _runs(plan, redis_url, ctl, runs, inputs, opts, owned, partial_path, progress)
    finally:
        if owned is not None:
            owned.stop()


def _inputs_and_options(trace: Any, settings: GpuLockConfig, cluster: Any, changes: Any, *,
                        time_scale: float, runs: int, hold: str, seed: int, uot: bool,
                        emd: bool, redis_url: str | None, key_prefix: str | None,
                        idle_window_s: float) -> tuple[dict[str, Any], dict[str, Any]]:
    """What a RealResult records as its inputs, and the options every `_OneRun` shares."""
    prefix = key_prefix if key_prefix is not None else f"gpusim:validate:{uuid.uuid4().hex[:8]}:"
    inputs = {"trace": getattr(trace, "source", "<memory>"), "tasks": len(trace),
              "gpu_lock": settings.model_dump(), "time_scale": time_scale, "runs": runs,
              "hold": hold, "seed": seed, "unique_owner_token": uot, "emergency_delete": emd,
              "redis": redis_url, "key_prefix": prefix}
    opts = dict(prefix=prefix, shared=cluster.options.shared_keys_across_nodes, uot=uot,
                emd=emd, seed=seed, idle_window_s=idle_window_s, timelines=None)
    if changes:
        from gpusim.real.config_timeline import node_timelines
        from gpusim.schedule import describe
        inputs["config_changes"] = describe(changes)
        opts["timelines"] = node_timelines(cluster, settings, changes, time_scale)
    return inputs, opts


def _check_lanes(lanes: int, runs: int, **one_at_a_time: Any) -> None:
    if isinstance(lanes, bool) or not isinstance(lanes, int) or lanes < 1:
        raise InputError(f"must be a whole number >= 1, got {lanes!r}", field="lanes")
    if lanes > runs:
        raise InputError(f"{lanes} lanes for {runs} run(s): at most one lane per run",
                         field="lanes")
    given = [k for k, v in one_at_a_time.items() if v is not None and v is not False]
    if lanes > 1 and given:
        raise InputError(f"lanes replay on private redis-servers, without a control load or a "
                         f"YiVideo log: not with {', '.join(given)} (use lanes=1)",
                         field="lanes")


def _runs(plan: list, redis_url: str, ctl: redis.Redis, runs: int, inputs: dict[str, Any],
          opts: dict[str, Any], owned: Any, partial_path: str | Path | None,
          progress: Callable[[str], None] | None) -> RealResult:
    """The runs one after another; a run that Redis broke ends the replay (partial saved)."""
    done: list[RealRun] = []
    for r in range(runs):
        if progress:
            progress(f"real run {r + 1}/{runs}")
        run = _OneRun(r, plan, redis_url, ctl, server_pid=_local_pid(ctl, redis_url, owned),
                      **opts).run()
        done.append(run)
        if run.partial:
            res = RealResult(done, inputs, partial=True, error=run.error)
            saved = _save_partial(res, partial_path)
            ctl.close()
            raise RedisDiedDuringRun(
                f"Redis failed during real run {r + 1}/{runs}: {run.error}; "
                + (f"partial results saved to {saved}" if saved else
                   "partial results attached (partial=true)"), res, saved)
    ctl.close()
    return RealResult(done, inputs)
