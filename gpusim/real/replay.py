"""The real side of `gpusim validate`: replay a trace against a real Redis (`run_real`).

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

import dataclasses
import json
import math
import sys
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import redis

from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.output import atomic_write_text
from gpusim.protocol import lock_key
from gpusim.real.lock_client import LockClient, LockParams

__all__ = ["run_real", "RealRun", "RealResult", "RedisUnavailable", "RedisDiedDuringRun",
           "CudaUnavailable", "summarize_lateness"]

SWITCH_INTERVAL_S = 0.0002
CONNECT_LEAD_S = 0.25


class RedisUnavailable(RuntimeError):
    """The Redis to validate against cannot be reached."""


class CudaUnavailable(RuntimeError):
    """``hold='cuda'`` without torch + a CUDA device: the CLI reports 'skipped: no CUDA'."""


class RedisDiedDuringRun(RuntimeError):
    """Redis went away mid-run; ``partial`` holds what finished (``partial=True``)."""

    def __init__(self, message: str, partial: "RealResult", saved_to: Path | None):
        super().__init__(message)
        self.partial = partial
        self.saved_to = saved_to


@dataclass
class RealRun:
    """One real replay of the trace."""

    run: int
    records: list[Any]                    # gpusim.records.TaskRecord, one per finished task
    commandstats: dict[str, int]          # INFO commandstats delta (upper-case names)
    client_commands: dict[str, int]       # what the lock clients sent
    redis_cpu_s: float                    # CPU delta minus idle rate x elapsed
    redis_cpu_raw_s: float
    idle_cpu_s_per_s: float
    elapsed_s: float
    lateness: dict[str, float]
    get_rtt_p50_s: float = 0.0            # median GET round trip the workers saw
    # the control load on a reference Redis during this run (calibrate.ReferenceLoad)
    reference: dict[str, float] | None = None
    # voluntary context switches of a local redis-server during the run (its epoll wake-ups)
    server_wakeups: int | None = None
    partial: bool = False
    error: str | None = None

    def metrics(self) -> dict[str, Any]:
        from gpusim.metrics import task_metrics
        m = task_metrics(self.records) if self.records else {}
        n = len(self.records)
        m["attempts_per_task"] = (sum(r.attempts for r in self.records) / n) if n else None
        m["redis_commandstats"] = dict(self.commandstats)
        m["redis_commands"] = dict(self.client_commands)
        m["redis_cpu_s"] = self.redis_cpu_s
        return m

    def to_json(self) -> dict[str, Any]:
        d = {k: v for k, v in dataclasses.asdict(self).items() if k != "records"}
        d["records"] = [r.to_json() for r in self.records]
        d["metrics"] = self.metrics()
        return d


@dataclass
class RealResult:
    runs: list[RealRun]
    inputs: dict[str, Any]
    partial: bool = False
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"schema": "gpusim.validate.real/1", "partial": self.partial, "error": self.error,
                "inputs": self.inputs, "runs": [r.to_json() for r in self.runs]}


def _info_snapshot(c: redis.Redis) -> tuple[dict[str, int], float]:
    stats = {k.removeprefix("cmdstat_").upper(): int(v["calls"])
             for k, v in c.info("commandstats").items()}
    cpu = c.info("cpu")
    return stats, float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _pct(xs: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(xs, dtype=float), q)) if len(xs) else 0.0


def _cuda_hold_factory() -> Callable[[float, Callable[[], float]], None]:
    try:
        import torch  # type: ignore[import-not-found]
    except ImportError:
        raise CudaUnavailable("skipped: no CUDA (torch is not installed; "
                              "pip install 'gpusim[cuda]' on a CUDA host)") from None
    if not torch.cuda.is_available():
        raise CudaUnavailable("skipped: no CUDA (torch finds no CUDA device)")
    dev = torch.device("cuda")
    a = torch.randn(1024, 1024, device=dev)
    b = torch.randn(1024, 1024, device=dev)

    def hold(until: float, clock: Callable[[], float]) -> None:
        # Small matmuls with a sync each, so the loop ends within about one matmul of `until`.
        while clock() < until:
            a @ b
            torch.cuda.synchronize()

    return hold


class _Sleeper:
    """Sleeps that end on time: ``time.sleep`` overshoots by ~0.1-0.3 ms (timer slack, wake-up),
    which a time-compressed replay would magnify F times and accumulate over every poll. Each
    sleep asks for the remaining time minus a running estimate of the overshoot (an EWMA over
    all workers' final chunks), and long sleeps are cut into chunks so an abort is seen within
    50 ms. The measured lateness is still reported, so the compensation is checked, not trusted.
    """

    CHUNK_S = 0.05

    def __init__(self, abort: threading.Event, clock: Callable[[], float]):
        self.abort = abort
        self.clock = clock
        self.bias = 0.0

    def until(self, target: float) -> None:
        clock = self.clock
        while not self.abort.is_set():
            rem = target - clock()
            if rem <= 0:
                return
            if rem > self.CHUNK_S + self.bias:
                time.sleep(self.CHUNK_S)
                continue
            want = rem - self.bias
            if want <= 0:
                return
            t = clock()
            time.sleep(want)
            over = clock() - t - want
            self.bias = min(0.002, max(0.0, self.bias + 0.1 * (over - self.bias)))
            return

    def sleep(self, seconds: float) -> None:
        self.until(self.clock() + seconds)


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


def _control_client(redis_url: str) -> tuple[redis.Redis, str | None]:
    """The control connection (INFO snapshots) and the server's version."""
    try:
        from redis.backoff import NoBackoff
        from redis.retry import Retry
        ctl = redis.Redis.from_url(redis_url, protocol=2, socket_timeout=10,
                                   socket_connect_timeout=5, single_connection_client=True,
                                   retry=Retry(NoBackoff(), 0))
        ctl.ping()
        return ctl, ctl.info("server").get("redis_version")
    except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError) as exc:
        raise RedisUnavailable(f"cannot reach Redis at {redis_url}: {exc}") from None


def run_real(trace: Any, lock_config: GpuLockConfig | LockSettings, *,
             redis_url: str | None = None, time_scale: float = 1.0, runs: int = 1,
             hold: str = "sleep", cluster: Any = None, seed: int = 0,
             unique_owner_token: bool | None = None, emergency_delete: bool | None = None,
             partial_path: str | Path | None = None, key_prefix: str | None = None,
             idle_window_s: float | None = None, reference: Any = None,
             progress: Callable[[str], None] | None = None,
             yivideo_log: str | Path | None = None, changes: Sequence[Any] = (),
             pace: bool = True) -> RealResult:
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
    """
    from gpusim.cluster import default_cluster

    _check_args(trace, time_scale, runs, hold)
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
        from gpusim.real.config_timeline import node_timelines
        from gpusim.simulation import as_settings, check_changes
        changes = check_changes(changes, cluster, as_settings(lock_config))
    hold_fn = _cuda_hold_factory() if hold == "cuda" else None
    if idle_window_s is None:
        span = max(a + d for *_, a, d in plan)
        idle_window_s = min(2.0, max(0.5, 0.01 * span))
    owned = None
    if redis_url is None:
        from gpusim.real.server import PrivateRedis
        owned = PrivateRedis().start()
        redis_url = owned.url
    prefix = key_prefix if key_prefix is not None else f"gpusim:validate:{uuid.uuid4().hex[:8]}:"
    inputs = {"trace": getattr(trace, "source", "<memory>"), "tasks": len(trace),
              "gpu_lock": settings.model_dump(), "time_scale": time_scale, "runs": runs,
              "hold": hold, "seed": seed, "unique_owner_token": uot, "emergency_delete": emd,
              "redis": "private redis-server" if owned else redis_url, "key_prefix": prefix}
    if changes:
        from gpusim.schedule import describe
        inputs["config_changes"] = describe(changes)
    opts = dict(prefix=prefix, shared=cluster.options.shared_keys_across_nodes, uot=uot,
                emd=emd, seed=seed, hold_fn=hold_fn, idle_window_s=idle_window_s,
                reference=reference,
                timelines=node_timelines(cluster, settings, changes, time_scale) if changes
                else None)
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


def _measure_rtt(ctl: redis.Redis, n: int = 41, gap_s: float = 0.005) -> float:
    """Median round trip of ``n`` PINGs on the control connection (s), each after ``gap_s`` of
    sleep: a replay's tries come after sleeps, and a command from an idle client to an idle
    server takes about 0.5 ms on a 2-core VM where back-to-back ones take 0.12 ms (both ends
    wake from idle), so that is the round trip the replay lives with. PING, not GET: it
    touches no key, so a `gpusim trace record` watching the same server sees no extra task."""
    times = []
    try:
        for _ in range(n):
            time.sleep(gap_s)
            t = time.perf_counter()
            ctl.ping()
            times.append(time.perf_counter() - t)
    except (redis.RedisError, OSError) as exc:
        raise RedisUnavailable(f"Redis failed while measuring its round trip: {exc}") from None
    return float(np.median(times))


def _local_pid(ctl: redis.Redis, url: str, owned: Any) -> int | None:
    """The redis-server's pid when it runs on this host (its /proc is readable), else None."""
    try:
        host = ctl.connection_pool.connection_kwargs.get("host", "")
        if owned is None and host not in ("127.0.0.1", "localhost", "::1"):
            return None
        pid = int(ctl.info("server")["process_id"])
        return pid if Path(f"/proc/{pid}/status").exists() else None
    except (redis.RedisError, OSError, KeyError, ValueError):
        return None


def _voluntary_switches(pid: int | None) -> int | None:
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("voluntary_ctxt_switches:"):
                return int(line.split(":")[1])
    except (OSError, ValueError):
        return None
    return None


def _save_partial(res: RealResult, path: str | Path | None) -> Path | None:
    if path is None:
        return None
    p = Path(path)
    if ".partial" not in p.name:
        p = p.with_name(p.stem + ".partial" + (p.suffix or ".json"))
    atomic_write_text(p, json.dumps(res.to_json(), indent=2, default=str))
    return p


class _OneRun:
    """One real replay: connections opened up front, an idle window, one thread per task started
    just before its arrival, a second idle window, then the deltas (see the module docstring)."""

    def __init__(self, r: int, plan: list, url: str, ctl: redis.Redis, *, prefix: str,
                 shared: bool, uot: bool, emd: bool, seed: int, hold_fn: Any,
                 idle_window_s: float, reference: Any = None, server_pid: int | None = None,
                 log: Any = None, timelines: Any = None, pace_rtt_s: float | None = None):
        self.r, self.plan, self.url, self.ctl = r, plan, url, ctl
        self.pace_rtt_s = pace_rtt_s  # paced lock clients (LockClient), or None
        self.timelines = timelines  # per node name: config changes (config_timeline), or None
        self.log = log  # YiVideo's lock log lines (gpusim.real.yivideo_log), or None
        self.shared, self.uot, self.emd, self.seed = shared, uot, emd, seed
        self.hold_fn, self.idle_window_s = hold_fn, idle_window_s
        self.reference, self.server_pid = reference, server_pid
        self.run_prefix = f"{prefix}r{r}:"
        self.clock = time.monotonic
        self.abort = threading.Event()
        self.sleeper = _Sleeper(self.abort, self.clock)
        self.clients: list[LockClient] = []
        self.records: list[Any] = [None] * len(plan)
        self.errors: list[str] = []
        self.start_late: list[float] = []
        self.sleep_over: list[float] = []
        self.hold_over: list[float] = []
        self.lock = threading.Lock()
        self.ref_cpu = reference.cpu_s if reference is not None else (lambda: 0.0)

    def run(self) -> RealRun:
        self._open_clients()
        snaps = self._idle_before()
        t0, t_end, ref_cmds = self._replay()
        return self._result(snaps, t0, t_end, ref_cmds)

    # -- before ------------------------------------------------------------------------------
    def _open_clients(self) -> None:
        """Every connection before the measured window."""
        from gpusim.rng import stream_key, stream_state, uniform

        jkey = stream_key(self.seed, self.r, "jitter")
        try:
            for task, node, _gpu, params, _arr, _dur in self.plan:
                st = stream_state(jkey, task.index)
                tl = self.timelines[node] if self.timelines else None
                self.clients.append(LockClient(
                    self.url, params, unique_owner_token=self.uot, emergency_delete=self.emd,
                    uniform_at=lambda k, st=st: uniform(st, k), clock=self.clock,
                    sleep=self.sleeper.sleep, pubsub=tl.any_event_driven if tl else None,
                    pace_rtt_s=self.pace_rtt_s))
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            for c in self.clients:
                c.close()
            raise RedisUnavailable(f"cannot open {len(self.plan)} x 2 connections to Redis: "
                                   f"{exc}") from None

    def _idle_before(self) -> dict[str, Any]:
        before, cpu0 = _info_snapshot(self.ctl)
        rc0 = self.ref_cpu()
        ti = self.clock()
        time.sleep(self.idle_window_s)
        mid, cpu1 = _info_snapshot(self.ctl)
        rc1 = self.ref_cpu()
        mid_t = self.clock()
        return dict(cpu0=cpu0, rc0=rc0, ti=ti, mid=mid, cpu1=cpu1, rc1=rc1, mid_t=mid_t,
                    vcs0=_voluntary_switches(self.server_pid))

    # -- the replay --------------------------------------------------------------------------
    def _replay(self) -> tuple[float, float, int]:
        """Start each thread a little before its arrival (bounded thread count); join them."""
        plan, clock, abort, reference = self.plan, self.clock, self.abort, self.reference
        old_switch = sys.getswitchinterval()
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        threads: list[threading.Thread] = []
        try:
            t0 = clock() + CONNECT_LEAD_S
            if reference is not None:
                reference.start()
            order = sorted(range(len(plan)), key=lambda i: (plan[i][4], plan[i][0].index))
            for i in order:
                if abort.is_set():
                    break
                d = t0 + plan[i][4] - 0.05 - clock()
                if d > 0:
                    abort.wait(d)
                th = threading.Thread(target=self._worker, args=(i, t0), daemon=True)
                th.start()
                threads.append(th)
            for th in threads:
                th.join()
            t_end = clock()
        finally:
            sys.setswitchinterval(old_switch)
            ref_cmds = reference.stop() if reference is not None else 0
        return t0, t_end, ref_cmds

    def _worker(self, i: int, t0: float) -> None:
        task, node, gpu, params, arrival, duration = self.plan[i]
        client, clock = self.clients[i], self.clock
        key = lock_key(node, gpu, shared=self.shared, prefix=self.run_prefix)
        due = t0 + arrival
        try:
            self.sleeper.until(due)
            config_index = 0
            if self.timelines:  # it reads the config in force now (YiVideo: per call)
                params, config_index = self.timelines[node].at(clock() - t0)
                client.params = params
            if self.log is not None:  # the gpu_lock decorator's line, before start_time
                client.log = self.log
                self.log.begin(task.task_type, key, params.use_event_driven,
                               params.max_wait_time)
            start = clock()
            res = client.acquire(key, task.task_type, token=str(task.index), start=start,
                                 due=due)
            if self.log is not None:
                (self.log.executing(task.task_type) if res.acquired
                 else self.log.gave_up(task.task_type, key))
            if res.acquired:
                outcome = "crashed" if task.crashed else "acquired"
                # a paced client's hold ends on the model's schedule too (see LockClient)
                got = res.due_end if res.due_end is not None else res.end
                gpu_end, release = self._hold_and_release(task, client, key, got + duration)
                end = clock()
            else:
                outcome, gpu_end, release, end = "timeout", None, None, res.end
            rec = self._record(task, node, gpu, res, t0, due, start, outcome, gpu_end, release,
                               end, config_index)
            with self.lock:
                self.records[i] = rec
                self.start_late.append(start - due)
                self.sleep_over.extend(actual - want for want, actual in res.sleeps)
        except (redis.RedisError, OSError) as exc:
            with self.lock:
                self.errors.append(f"{type(exc).__name__}: {exc}")
            self.abort.set()

    def _hold_and_release(self, task: Any, client: LockClient, key: str, until: float
                          ) -> tuple[float, str | None]:
        if self.hold_fn is not None:
            self.hold_fn(until, self.clock)
        else:
            self.sleeper.until(until)
        gpu_end = self.clock()
        with self.lock:
            self.hold_over.append(gpu_end - until)
        release = None
        if not task.crashed:
            if self.log is not None:
                self.log.executed(task.task_type)
            rel = client.release(key, task.task_type, token=str(task.index))
            release = "owner" if rel == "released" else "not_owner"
        return gpu_end, release

    @staticmethod
    def _record(task: Any, node: str, gpu: int, res: Any, t0: float, due: float, start: float,
                outcome: str, gpu_end: float | None, release: str | None, end: float,
                config_index: int = 0) -> Any:
        from gpusim.records import TaskRecord

        return TaskRecord(
            index=task.index, task_id=task.task_id, task_type=task.task_type, node=node,
            gpu=gpu if res.acquired else None, arrival_s=due - t0, slot_s=start - t0,
            outcome=outcome, mechanism=res.mechanism,
            acquired_s=(res.end - t0) if res.acquired else None,
            gpu_end_s=(gpu_end - t0) if gpu_end is not None else None, end_s=end - t0,
            wait_s=res.wait, attempts=res.attempts, gets=res.attempts, sets=res.sets,
            event_wakeups=res.messages, fell_back=res.fell_back, missed_wakeups=0,
            release=release, deleted_other=False, lost_lock_s=None, lost_reason=None,
            config_index=config_index)

    # -- after -------------------------------------------------------------------------------
    def _idle_after(self, s: dict[str, Any], t0: float, t_end: float, ref_cmds: int
                    ) -> tuple[dict[str, int], float, float, dict[str, float] | None]:
        """A second idle window after the run (connections still open): the idle rate is the
        mean of both windows, which halves the noise of a single short window."""
        after, cpu2 = _info_snapshot(self.ctl)
        rc2 = self.ref_cpu()
        tj = self.clock()
        time.sleep(self.idle_window_s)
        _, cpu3 = _info_snapshot(self.ctl)
        rc3 = self.ref_cpu()
        idle_s = (s["mid_t"] - s["ti"]) + (self.clock() - tj)
        idle_rate = max(0.0, ((s["cpu1"] - s["cpu0"]) + (cpu3 - cpu2)) / idle_s)
        ref = None
        if self.reference is not None:
            ref_idle = max(0.0, ((s["rc1"] - s["rc0"]) + (rc3 - rc2)) / idle_s)
            ref_cpu_s = (rc2 - s["rc1"]) - ref_idle * (t_end - t0)
            ref = {"commands": ref_cmds, "cpu_raw_s": rc2 - s["rc1"],
                   "idle_cpu_s_per_s": ref_idle, "cpu_s": ref_cpu_s,
                   "gap_s": self.reference.gap_s, "chain_mean": self.reference.chain_mean,
                   "us_per_command": ref_cpu_s * 1e6 / ref_cmds if ref_cmds else None,
                   "error": self.reference.error}
        return after, cpu2, idle_rate, ref

    def _lateness(self) -> dict[str, float]:
        sl, so, ho = self.start_late, self.sleep_over, self.hold_over
        return {
            "start_p50_s": _pct(sl, 50), "start_p95_s": _pct(sl, 95),
            "start_max_s": max(sl, default=0.0),
            "sleep_overshoot_p50_s": _pct(so, 50), "sleep_overshoot_p95_s": _pct(so, 95),
            "sleep_overshoot_max_s": max(so, default=0.0),
            "hold_overshoot_p50_s": _pct(ho, 50), "hold_overshoot_p95_s": _pct(ho, 95),
            "hold_overshoot_max_s": max(ho, default=0.0),
        }

    def _result(self, s: dict[str, Any], t0: float, t_end: float, ref_cmds: int) -> RealRun:
        error = "; ".join(sorted(set(self.errors))) if self.errors else None
        vcs0, vcs1 = s["vcs0"], _voluntary_switches(self.server_pid)
        idle_rate = max(0.0, (s["cpu1"] - s["cpu0"]) / (s["mid_t"] - s["ti"]))
        ref: dict[str, float] | None = None
        try:
            after, cpu2, idle_rate, ref = self._idle_after(s, t0, t_end, ref_cmds)
        except (redis.RedisError, OSError) as exc:
            error = error or f"{type(exc).__name__}: {exc}"
            after, cpu2 = s["mid"], s["cpu1"]
        for c in self.clients:
            c.close()
        elapsed = t_end - t0
        mid = s["mid"]
        delta = {k: after.get(k, 0) - mid.get(k, 0) for k in set(after) | set(mid)}
        delta = {k: v for k, v in delta.items() if v > 0 and k != "INFO"}
        client_cmds: Counter[str] = Counter()
        for c in self.clients:
            client_cmds.update(c.commands)
        raw_cpu = cpu2 - s["cpu1"]
        rtts = [x for c in self.clients for x in c.get_rtts]
        return RealRun(
            run=self.r, records=[rec for rec in self.records if rec is not None],
            commandstats=dict(sorted(delta.items())),
            client_commands=dict(sorted(client_cmds.items())),
            redis_cpu_s=max(0.0, raw_cpu - idle_rate * elapsed), redis_cpu_raw_s=raw_cpu,
            idle_cpu_s_per_s=idle_rate, elapsed_s=elapsed, lateness=self._lateness(),
            get_rtt_p50_s=_pct(rtts, 50), reference=ref,
            server_wakeups=(vcs1 - vcs0) if vcs0 is not None and vcs1 is not None else None,
            partial=error is not None, error=error)


def summarize_lateness(real: RealResult) -> dict[str, float]:
    """The worst run's start lateness and sleep / hold overshoot (p95 and max)."""
    keys = ("start_p95_s", "start_max_s", "sleep_overshoot_p95_s", "sleep_overshoot_max_s",
            "hold_overshoot_p95_s", "hold_overshoot_max_s")
    out = {}
    for k in keys:
        vals = [r.lateness.get(k, 0.0) for r in real.runs]
        out[k] = max(vals) if vals else 0.0
    return out
