"""`gpusim validate`: replay a trace against a real Redis and compare with the simulation.

Real side (`run_real`)
----------------------
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

Redis CPU on a mostly idle host is not a constant per command: each command is a server
wake-up whose cost depends on what else the host runs (gpusim.real.calibrate, "Redis CPU model").
When the Redis is on this host, a control load runs on a second private redis-server during
each run (``RealRun.reference``) and the prediction for run r uses it; the redis-server's
voluntary context switches per client command are reported as a check of "one wake-up per
command" (``RealRun.server_wakeups``).

Comparison (`compare`)
----------------------
For each metric, the real runs give one value per run and the simulation one value per seed.
The error is sim minus real: in points for rates, relative to the real mean otherwise. Its 95%
interval is a Welch-type interval that carries the run-to-run spread of BOTH sides: the standard
error combines ``var_real / n_real`` and ``var_sim / n_sim`` (for relative errors through the
delta method of the ratio of means), with Welch-Satterthwaite degrees of freedom. A side with a
single value borrows the other side's per-sample variance (stated in the output); with one value
on both sides the interval is the point.

Paired (the default of `validate` when seeds >= runs >= 2): real run r replays with the jitter
draws of simulated replication r (common random numbers), so the two differ only by real timing
and the first min(runs, seeds) pairs are judged by a t interval on their paired differences
(``_paired_interval``), which carries the spread of both sides and their correlation; with the
shared draws a polling replay tracks its simulated twin task by task until a race goes the other
way, so far fewer runs are needed than for independent samples. Extra seeds only enter the
distribution tests.

Verdict rule, exactly:
* FAIL when the whole interval lies outside the tolerance band [-tol, +tol] (the data show, at
  95%, an error larger than tolerated);
* INCONCLUSIVE (counted as a failure) when the interval overlaps the band but its half-width
  exceeds 3 x tol: too few runs or seeds to judge, never a free pass;
* PASS otherwise (the interval overlaps the band). ``equivalent`` is additionally true when the
  whole interval lies inside the band (the stronger, TOST-like statement).

Tolerances (defaults; overridable): mean wait 5%, p95 wait 10%, success rate 2 points, GET and SET
counts 5%, Redis CPU 25%. Why these: the wait mean and the command counts are what the simulator
exists to predict and are averages over many polls, so a faithful model should be within a few
percent; a p95 rests on a handful of tasks per run, hence the wider band; success rate is the
spec's gate metric, whose threshold (95%) leaves only a few points of room; Redis CPU depends on
per-command costs calibrated on a noisy machine (see gpusim.real.calibrate), so it is looser. Other rows
(timeout rate, p50, attempts, EVAL, PUBLISH, DEL) are reported without a verdict.

Wait percentiles (p50, p95) are taken over the pooled waits of all runs (all seeds), not averaged
per run (one run's p95 rests on a handful of tasks); their interval is a 95% percentile cluster
bootstrap that resamples whole runs and whole seeds (2000 resamples, fixed seed), which carries
the run-to-run spread of both sides. The same verdict rule applies.

The wait distributions are also compared by a two-sample Kolmogorov-Smirnov test and the
k-sample Anderson-Darling test on the pooled waits. These are information, not a gate: waits are
not independent within a run (a queue couples them), so their p-values are anti-conservative;
immediate acquisitions put an atom at ~2 round trips on both sides, and the simulation's atom is
exactly tied (KS with ties is conservative, and scipy's Anderson-Darling handles ties in its
midrank form).
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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import redis

from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.protocol import lock_key
from gpusim.real.lock_client import LockClient, LockParams

__all__ = ["run_real", "compare", "RealRun", "RealResult", "Comparison", "MetricRow",
           "RedisUnavailable", "RedisDiedDuringRun", "CudaUnavailable", "DEFAULT_TOLERANCES",
           "sim_samples", "real_samples", "CMDS"]

CMDS = ("GET", "SET", "EVAL", "PUBLISH", "DEL")
DEFAULT_TOLERANCES: dict[str, float] = {
    "wait_mean_s": 0.05, "wait_p95_s": 0.10, "success_rate": 0.02, "GET": 0.05, "SET": 0.05,
    "redis_cpu_s": 0.25,
}
# metric name -> (label, kind): "abs" = difference in points, "rel" = relative to real mean
ROWS: tuple[tuple[str, str, str], ...] = (
    ("success_rate", "success rate", "abs"),
    ("timeout_rate", "timeout rate", "abs"),
    ("wait_mean_s", "wait mean (s)", "rel"),
    ("wait_p50_s", "wait p50 (s)", "rel"),
    ("wait_p95_s", "wait p95 (s)", "rel"),
    ("attempts_per_task", "attempts / task", "rel"),
    ("GET", "GET (commandstats)", "rel"),
    ("SET", "SET (commandstats)", "rel"),
    ("EVAL", "EVAL (commandstats)", "rel"),
    ("PUBLISH", "PUBLISH (commandstats)", "rel"),
    ("DEL", "DEL (commandstats)", "rel"),
    ("redis_cpu_s", "Redis CPU (s)", "rel"),
)
WIDTH_GUARD = 3.0  # INCONCLUSIVE when the interval's half-width exceeds WIDTH_GUARD * tol
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


# ------------------------------------------------------------------------------------------
# real replay
# ------------------------------------------------------------------------------------------
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
    # the control load on a reference Redis during this run (see gpusim.real.calibrate.ReferenceLoad)
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


def run_real(trace: Any, lock_config: GpuLockConfig | LockSettings, *,
             redis_url: str | None = None, time_scale: float = 1.0, runs: int = 1,
             hold: str = "sleep", cluster: Any = None, seed: int = 0,
             unique_owner_token: bool | None = None, emergency_delete: bool | None = None,
             partial_path: str | Path | None = None, key_prefix: str | None = None,
             idle_window_s: float | None = None, reference: Any = None,
             progress: Callable[[str], None] | None = None) -> RealResult:
    """Replay ``trace`` ``runs`` times against a real Redis; see the module docstring.

    ``redis_url`` None starts a private redis-server for the duration. Run r feeds each task the
    jitter draws the model's replication r of ``seed`` uses (gpusim.rng), so real run r and
    simulated replication r see the same random numbers. Keys are namespaced under
    ``key_prefix`` (default ``gpusim:validate:<random>:``), so a shared Redis is not disturbed.

    ``reference``: a `gpusim.real.calibrate.ReferenceLoad` on a second Redis of the same host, run
    during every measured window (the CPU control; recorded in ``RealRun.reference``).
    ``idle_window_s`` None: 1% of the replay's length, clipped to [0.5, 2] s.
    """
    from gpusim.cluster import default_cluster

    if not (time_scale > 0 and math.isfinite(time_scale)):
        raise InputError("must be a positive number", field="time_scale")
    if runs < 1:
        raise InputError("must be >= 1", field="runs")
    if hold not in ("sleep", "cuda"):
        raise InputError("must be 'sleep' or 'cuda'", field="hold")
    if len(trace) == 0:
        raise InputError("trace has no tasks", file=getattr(trace, "source", None))
    settings = lock_config.gpu_lock if isinstance(lock_config, LockSettings) else lock_config
    cluster = cluster or default_cluster()
    if cluster.gpu_policy != "pinned":
        raise InputError("a real replay supports gpu_policy 'pinned' only", field="gpu_policy")
    if cluster.options.monitor:
        raise InputError("a real replay does not run the gpu_lock_monitor", field="monitor")
    uot = cluster.options.unique_owner_token if unique_owner_token is None else unique_owner_token
    emd = cluster.options.emergency_delete if emergency_delete is None else emergency_delete
    shared = cluster.options.shared_keys_across_nodes
    nodes = {n.name: n for n in cluster.nodes}
    plan = []
    for task in trace.tasks:
        if task.node is not None:
            if task.node not in nodes:
                raise InputError(f"node {task.node!r} is not in the cluster", field="node",
                                 line=task.line, file=getattr(trace, "source", None))
            node = nodes[task.node]
        elif len(cluster.nodes) == 1:
            node = cluster.nodes[0]
        else:
            raise InputError("a real replay on several nodes needs each task's node",
                             field="node", line=task.line, file=getattr(trace, "source", None))
        gpu = task.gpu if task.gpu is not None else 0
        if gpu >= node.gpus:
            raise InputError(f"gpu {gpu} but node {node.name} has {node.gpus}", field="gpu",
                             line=task.line, file=getattr(trace, "source", None))
        cfg = node.settings.gpu_lock if node.settings is not None else settings
        plan.append((task, node.name, gpu, LockParams.from_config(cfg, time_scale),
                     task.arrival_s / time_scale, task.duration_s / time_scale))
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
    done: list[RealRun] = []
    try:
        try:
            from redis.backoff import NoBackoff
            from redis.retry import Retry
            ctl = redis.Redis.from_url(redis_url, protocol=2, socket_timeout=10,
                                       socket_connect_timeout=5, single_connection_client=True,
                                       retry=Retry(NoBackoff(), 0))
            ctl.ping()
            inputs["redis_version"] = ctl.info("server").get("redis_version")
        except (redis.ConnectionError, redis.TimeoutError, OSError, ValueError) as exc:
            raise RedisUnavailable(f"cannot reach Redis at {redis_url}: {exc}") from None
        for r in range(runs):
            if progress:
                progress(f"real run {r + 1}/{runs}")
            run = _one_run(r, plan, redis_url, ctl, prefix=prefix, shared=shared, uot=uot,
                           emd=emd, seed=seed, hold_fn=hold_fn, idle_window_s=idle_window_s,
                           reference=reference, server_pid=_local_pid(ctl, redis_url, owned))
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
    finally:
        if owned is not None:
            owned.stop()


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
    p.write_text(json.dumps(res.to_json(), indent=2, default=str), encoding="utf-8")
    return p


def _one_run(r: int, plan: list, url: str, ctl: redis.Redis, *, prefix: str, shared: bool,
             uot: bool, emd: bool, seed: int, hold_fn, idle_window_s: float,
             reference: Any = None, server_pid: int | None = None) -> RealRun:
    from gpusim.records import TaskRecord
    from gpusim.rng import stream_key, stream_state, uniform

    clock = time.monotonic
    abort = threading.Event()
    jkey = stream_key(seed, r, "jitter")
    run_prefix = f"{prefix}r{r}:"

    sleeper = _Sleeper(abort, clock)
    abortable_sleep = sleeper.sleep

    # Open every connection before the measured window.
    clients: list[LockClient] = []
    try:
        for task, _node, _gpu, params, _arr, _dur in plan:
            st = stream_state(jkey, task.index)
            clients.append(LockClient(url, params, unique_owner_token=uot, emergency_delete=emd,
                                      uniform_at=lambda k, st=st: uniform(st, k), clock=clock,
                                      sleep=abortable_sleep))
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        for c in clients:
            c.close()
        raise RedisUnavailable(f"cannot open {len(plan)} x 2 connections to Redis: {exc}") \
            from None

    records: list[Any] = [None] * len(plan)
    errors: list[str] = []
    start_late: list[float] = []
    sleep_over: list[float] = []
    hold_over: list[float] = []
    lock = threading.Lock()

    def worker(i: int, t0: float) -> None:
        task, node, gpu, params, arrival, duration = plan[i]
        client = clients[i]
        key = lock_key(node, gpu, shared=shared, prefix=run_prefix)
        due = t0 + arrival
        try:
            sleeper.until(due)
            start = clock()
            res = client.acquire(key, task.task_type, token=str(task.index), start=start)
            gpu_end = release = None
            if res.acquired:
                outcome = "crashed" if task.crashed else "acquired"
                until = res.end + duration
                if hold_fn is not None:
                    hold_fn(until, clock)
                else:
                    sleeper.until(until)
                gpu_end = clock()
                with lock:
                    hold_over.append(gpu_end - until)
                if not task.crashed:
                    rel = client.release(key, task.task_type, token=str(task.index))
                    release = "owner" if rel == "released" else "not_owner"
                end = clock()
            else:
                outcome = "timeout"
                end = res.end
            rec = TaskRecord(
                index=task.index, task_id=task.task_id, task_type=task.task_type, node=node,
                gpu=gpu if res.acquired else None, arrival_s=due - t0, slot_s=start - t0,
                outcome=outcome, mechanism=res.mechanism,
                acquired_s=(res.end - t0) if res.acquired else None,
                gpu_end_s=(gpu_end - t0) if gpu_end is not None else None, end_s=end - t0,
                wait_s=res.wait, attempts=res.attempts, gets=res.attempts, sets=res.sets,
                event_wakeups=res.messages, fell_back=res.fell_back, missed_wakeups=0,
                release=release, deleted_other=False, lost_lock_s=None, lost_reason=None)
            with lock:
                records[i] = rec
                start_late.append(start - due)
                sleep_over.extend(actual - want for want, actual in res.sleeps)
        except (redis.RedisError, OSError) as exc:
            with lock:
                errors.append(f"{type(exc).__name__}: {exc}")
            abort.set()

    ref_cpu = reference.cpu_s if reference is not None else (lambda: 0.0)
    before, cpu0 = _info_snapshot(ctl)
    rc0 = ref_cpu()
    ti = clock()
    time.sleep(idle_window_s)
    mid, cpu1 = _info_snapshot(ctl)
    rc1 = ref_cpu()
    mid_t = clock()
    vcs0 = _voluntary_switches(server_pid)
    idle_rate = max(0.0, (cpu1 - cpu0) / (mid_t - ti))
    old_switch = sys.getswitchinterval()
    sys.setswitchinterval(SWITCH_INTERVAL_S)
    threads: list[threading.Thread] = []
    try:
        t0 = clock() + CONNECT_LEAD_S
        if reference is not None:
            reference.start()
        order = sorted(range(len(plan)), key=lambda i: (plan[i][4], plan[i][0].index))
        for i in order:  # start each thread a little before its arrival (bounded thread count)
            if abort.is_set():
                break
            d = t0 + plan[i][4] - 0.05 - clock()
            if d > 0:
                abort.wait(d)
            th = threading.Thread(target=worker, args=(i, t0), daemon=True)
            th.start()
            threads.append(th)
        for th in threads:
            th.join()
        t_end = clock()
    finally:
        sys.setswitchinterval(old_switch)
        ref_cmds = reference.stop() if reference is not None else 0
    error = "; ".join(sorted(set(errors))) if errors else None
    vcs1 = _voluntary_switches(server_pid)
    ref: dict[str, float] | None = None
    try:
        after, cpu2 = _info_snapshot(ctl)
        rc2 = ref_cpu()
        # a second idle window after the run (connections still open): the idle rate is the
        # mean of both windows, which halves the noise of a single short window
        tj = clock()
        time.sleep(idle_window_s)
        _, cpu3 = _info_snapshot(ctl)
        rc3 = ref_cpu()
        idle_s = (mid_t - ti) + (clock() - tj)
        idle_rate = max(0.0, ((cpu1 - cpu0) + (cpu3 - cpu2)) / idle_s)
        if reference is not None:
            ref_idle = max(0.0, ((rc1 - rc0) + (rc3 - rc2)) / idle_s)
            ref_cpu_s = (rc2 - rc1) - ref_idle * (t_end - t0)
            ref = {"commands": ref_cmds, "cpu_raw_s": rc2 - rc1, "idle_cpu_s_per_s": ref_idle,
                   "cpu_s": ref_cpu_s, "gap_s": reference.gap_s,
                   "chain_mean": reference.chain_mean,
                   "us_per_command": ref_cpu_s * 1e6 / ref_cmds if ref_cmds else None,
                   "error": reference.error}
    except (redis.RedisError, OSError) as exc:
        error = error or f"{type(exc).__name__}: {exc}"
        after, cpu2 = mid, cpu1
    for c in clients:
        c.close()
    elapsed = t_end - t0
    delta = {k: after.get(k, 0) - mid.get(k, 0) for k in set(after) | set(mid)}
    delta = {k: v for k, v in delta.items() if v > 0 and k != "INFO"}
    client_cmds: Counter[str] = Counter()
    for c in clients:
        client_cmds.update(c.commands)
    raw_cpu = cpu2 - cpu1
    lateness = {
        "start_p50_s": _pct(start_late, 50), "start_p95_s": _pct(start_late, 95),
        "start_max_s": max(start_late, default=0.0),
        "sleep_overshoot_p50_s": _pct(sleep_over, 50),
        "sleep_overshoot_p95_s": _pct(sleep_over, 95),
        "sleep_overshoot_max_s": max(sleep_over, default=0.0),
        "hold_overshoot_p50_s": _pct(hold_over, 50), "hold_overshoot_p95_s": _pct(hold_over, 95),
        "hold_overshoot_max_s": max(hold_over, default=0.0),
    }
    finished = [rec for rec in records if rec is not None]
    rtts = [x for c in clients for x in c.get_rtts]
    return RealRun(run=r, records=finished, commandstats=dict(sorted(delta.items())),
                   client_commands=dict(sorted(client_cmds.items())),
                   redis_cpu_s=max(0.0, raw_cpu - idle_rate * elapsed), redis_cpu_raw_s=raw_cpu,
                   idle_cpu_s_per_s=idle_rate, elapsed_s=elapsed, lateness=lateness,
                   get_rtt_p50_s=_pct(rtts, 50), reference=ref,
                   server_wakeups=(vcs1 - vcs0) if vcs0 is not None and vcs1 is not None
                   else None,
                   partial=error is not None, error=error)


# ------------------------------------------------------------------------------------------
# comparison
# ------------------------------------------------------------------------------------------
def _metric_values(m: Mapping[str, Any], n_tasks: int | None = None) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for name in ("success_rate", "timeout_rate", "wait_mean_s", "wait_p50_s", "wait_p95_s",
                 "redis_cpu_s"):
        v = m.get(name)
        out[name] = None if v is None else float(v)
    if "attempts_per_task" in m and m["attempts_per_task"] is not None:
        out["attempts_per_task"] = float(m["attempts_per_task"])
    elif m.get("polls") is not None and m.get("tasks"):
        out["attempts_per_task"] = float(m["polls"]) / float(m["tasks"])
    else:
        out["attempts_per_task"] = None
    cs = m.get("redis_commandstats") or {}
    for c in CMDS:
        out[c] = float(cs.get(c, 0))
    return out


def real_samples(real: RealResult | Sequence[RealRun]) -> tuple[list[dict], list[np.ndarray]]:
    """Per-run metric dicts and wait arrays from a real result (complete runs only)."""
    runs = real.runs if isinstance(real, RealResult) else list(real)
    runs = [r for r in runs if not r.partial]
    return ([_metric_values(r.metrics()) for r in runs],
            [np.array([rec.wait_s for rec in r.records], dtype=float) for r in runs])


def _queued_waits(side: Any) -> np.ndarray | None:
    """Waits of the tasks whose first try failed, or None for synthetic inputs."""
    if isinstance(side, tuple):
        return None
    if isinstance(side, RealResult) or (isinstance(side, (list, tuple)) and side
                                        and isinstance(side[0], RealRun)):
        runs = side.runs if isinstance(side, RealResult) else side
        recs = [r for run in runs if not run.partial for r in run.records]
    else:
        items = side if isinstance(side, (list, tuple)) else [side]
        if not items or isinstance(items[0], Mapping):
            return None
        recs = [r for it in items for rep in it.replications for r in rep.records]
    # queued: more than one try (the first try failed), or gave up
    return np.array([r.wait_s for r in recs if r.attempts > 1 or r.acquired_s is None],
                    dtype=float)


def sim_samples(sim: Any) -> tuple[list[dict], list[np.ndarray]]:
    """Per-seed metric dicts and wait arrays from ``simulate(...)`` results.

    ``sim`` is a SimulationResult (each replication is one sample), or a list of them, or a
    list of ``{'metrics': {...}, 'waits': [...]}`` dicts (synthetic inputs for tests).
    """
    items = sim if isinstance(sim, (list, tuple)) else [sim]
    metrics, waits = [], []
    for it in items:
        if isinstance(it, Mapping):
            metrics.append(_metric_values(it["metrics"]))
            waits.append(np.asarray(it.get("waits", []), dtype=float))
            continue
        for rep in it.replications:
            metrics.append(_metric_values(rep.metrics))
            waits.append(np.array([r.wait_s for r in rep.records], dtype=float))
    return metrics, waits


@dataclass
class MetricRow:
    name: str
    label: str
    kind: str                       # abs | rel
    real_mean: float | None
    real_sd: float | None
    sim_mean: float | None
    sim_sd: float | None
    error: float | None             # sim - real (abs) or sim / real - 1 (rel)
    ci_low: float | None
    ci_high: float | None
    tolerance: float | None
    verdict: str                    # PASS | FAIL | INCONCLUSIVE | INFO | N/A
    equivalent: bool | None
    note: str = ""


@dataclass
class Comparison:
    rows: list[MetricRow]
    wait_tests: dict[str, Any]
    n_real: int
    n_sim: int
    lateness: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        judged = [r for r in self.rows if r.tolerance is not None]
        return bool(judged) and all(r.verdict == "PASS" for r in judged)

    def to_json(self) -> dict[str, Any]:
        return {"schema": "gpusim.validate.compare/1", "passed": self.passed,
                "n_real_runs": self.n_real, "n_sim_seeds": self.n_sim,
                "rule": "PASS iff the 95% Welch interval of the error overlaps [-tol, tol] "
                        f"and its half-width <= {WIDTH_GUARD} x tol",
                "rows": [dataclasses.asdict(r) for r in self.rows],
                "wait_tests": self.wait_tests, "lateness": self.lateness, "notes": self.notes}


def _welch_interval(real: np.ndarray, sim: np.ndarray, kind: str
                    ) -> tuple[float, float, float, str]:
    """(error, low, high, note): Welch-type 95% interval on sim - real (abs) or sim/real - 1."""
    from scipy import stats

    nr, ns = len(real), len(sim)
    mr, ms = float(real.mean()), float(sim.mean())
    vr = float(real.var(ddof=1)) if nr > 1 else None
    vs = float(sim.var(ddof=1)) if ns > 1 else None
    note = ""
    if vr is None and vs is None:
        vr = vs = 0.0
        note = "one value per side: no spread, interval is the point"
    elif vr is None:
        vr, note = vs, "one real run: its spread is taken from the simulation's"
    elif vs is None:
        vs, note = vr, "one seed: its spread is taken from the real runs'"
    if kind == "abs":
        err = ms - mr
        ar, as_ = vr / nr, vs / ns
    else:
        if mr == 0:
            if ms == 0:
                return 0.0, 0.0, 0.0, "both zero"
            return math.inf, math.inf, math.inf, "real mean is zero"
        err = ms / mr - 1.0
        ar, as_ = (ms ** 2) * vr / nr / mr ** 4, vs / ns / mr ** 2
    se = math.sqrt(ar + as_)
    if se == 0:
        return err, err, err, note
    dof_den = (ar ** 2 / (nr - 1) if nr > 1 else 0.0) + (as_ ** 2 / (ns - 1) if ns > 1 else 0.0)
    df = (ar + as_) ** 2 / dof_den if dof_den > 0 else max(1, nr + ns - 2)
    t = float(stats.t.ppf(0.975, df))
    return err, err - t * se, err + t * se, note


BOOTSTRAP_REPS = 2000


def _pooled_pct_row(name: str, label: str, rw: list[np.ndarray], sw: list[np.ndarray],
                    q: float, tol: float | None, *, paired: bool = False) -> "MetricRow":
    """A wait percentile of the pooled waits (all runs / all seeds), its relative error, and a
    95% cluster-bootstrap interval that resamples whole runs and whole seeds (so run-to-run
    spread on both sides is carried; a single run's p95 rests on a handful of tasks)."""
    rng = np.random.default_rng(0)  # fixed: the same inputs give the same table
    real_p = float(np.percentile(np.concatenate(rw), q))
    sim_p = float(np.percentile(np.concatenate(sw), q))
    per_r = [float(np.percentile(w, q)) for w in rw]
    per_s = [float(np.percentile(w, q)) for w in sw]
    note = ("pooled waits; cluster bootstrap over "
            + ("CRN pairs" if paired else "runs and seeds"))
    if real_p <= 0:
        err = 0.0 if sim_p == real_p else math.inf
        lo = hi = err
    else:
        err = sim_p / real_p - 1.0
        stats_ = np.empty(BOOTSTRAP_REPS)
        for b in range(BOOTSTRAP_REPS):
            ir = rng.integers(0, len(rw), len(rw))
            is_ = ir if paired else rng.integers(0, len(sw), len(sw))
            br = np.concatenate([rw[i] for i in ir])
            bs = np.concatenate([sw[i] for i in is_])
            pr = np.percentile(br, q)
            stats_[b] = (np.percentile(bs, q) / pr - 1.0) if pr > 0 else math.inf
        lo, hi = (float(x) for x in np.percentile(stats_, [2.5, 97.5]))
        if len(rw) < 2 or len(sw) < 2:
            note += "; one run or seed: its spread is not carried"
    verdict, equiv = _verdict(lo, hi, tol)
    return MetricRow(name, label, "rel", real_p, float(np.std(per_r, ddof=1)) if len(per_r) > 1
                     else None, sim_p, float(np.std(per_s, ddof=1)) if len(per_s) > 1 else None,
                     err, lo, hi, tol, verdict, equiv, note)


def _paired_interval(real: np.ndarray, sim: np.ndarray, kind: str
                     ) -> tuple[float, float, float, str]:
    """(error, low, high, note) from pairs (real run r, simulated replication r) that share the
    jitter streams (common random numbers): a t interval on the paired differences, for
    relative errors on the linearised ratio ``(sim_r - R real_r) / mean(real)``, R = ratio of
    means. The differences carry both sides' spread and their correlation."""
    from scipy import stats

    n = len(real)
    if n < 2:
        return _welch_interval(real, sim, kind)
    mr, ms = float(real.mean()), float(sim.mean())
    if kind == "abs":
        err, z = ms - mr, sim - real
    else:
        if mr == 0:
            if ms == 0:
                return 0.0, 0.0, 0.0, "both zero"
            return math.inf, math.inf, math.inf, "real mean is zero"
        err = ms / mr - 1.0
        z = (sim - (ms / mr) * real) / mr
    se = float(z.std(ddof=1)) / math.sqrt(n)
    if se == 0:
        return err, err, err, "paired; identical pairs"
    t = float(stats.t.ppf(0.975, n - 1))
    return err, err - t * se, err + t * se, f"paired over {n} CRN pairs"


def _verdict(lo: float, hi: float, tol: float | None) -> tuple[str, bool | None]:
    if tol is None:
        return "INFO", None
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return "FAIL", False
    if hi < -tol or lo > tol:
        return "FAIL", False
    if (hi - lo) / 2 > WIDTH_GUARD * tol:
        return "INCONCLUSIVE", False
    return "PASS", (lo >= -tol and hi <= tol)


def compare(real: RealResult | Sequence[RealRun] | tuple[list[dict], list[np.ndarray]],
            sim: Any, *, tolerances: Mapping[str, float | None] | None = None,
            paired: bool = False, sim_cpu: Sequence[float] | None = None) -> Comparison:
    """Side-by-side table of real runs vs simulated seeds; see the module docstring for the rule.

    ``tolerances`` overrides the defaults per metric; a tolerance of None reports the metric
    without judging it. ``paired=True`` (real run r and simulated replication r used the same
    jitter streams, as `run_real` and `simulate` do for one seed) judges the first
    min(runs, seeds) pairs by their paired differences; further seeds then only enter the wait
    distribution tests.

    ``real`` may be a RealResult, a list of RealRun, or pre-extracted ``(metrics, waits)``;
    ``sim`` anything `sim_samples` accepts (or pre-extracted ``(metrics, waits)``).
    ``sim_cpu``: the simulated Redis CPU per sample, replacing ``redis_cpu_s`` (validate uses it
    to predict each CRN twin with its own run's CPU control).
    """
    from scipy import stats

    tol: dict[str, float | None] = dict(DEFAULT_TOLERANCES)
    if tolerances:
        unknown = set(tolerances) - {n for n, _, _ in ROWS}
        if unknown:
            raise InputError(f"unknown tolerance(s) {sorted(unknown)}", field="tolerances")
        tol.update(tolerances)
    queued = _queued_waits(real), _queued_waits(sim)
    if isinstance(real, tuple) and len(real) == 2 and isinstance(real[0], list):
        rm, rw = real
    else:
        rm, rw = real_samples(real)  # type: ignore[arg-type]
    if isinstance(sim, tuple) and len(sim) == 2 and isinstance(sim[0], list):
        sm, sw = sim
    else:
        sm, sw = sim_samples(sim)
    if sim_cpu is not None:
        if len(sim_cpu) != len(sm):
            raise InputError("sim_cpu needs one value per simulated sample", field="sim_cpu")
        sm = [{**m, "redis_cpu_s": float(c)} for m, c in zip(sm, sim_cpu)]
    if not rm:
        raise InputError("no complete real run to compare", field="runs")
    if not sm:
        raise InputError("no simulated seed to compare", field="seeds")
    all_rw, all_sw = rw, sw
    n_pairs = min(len(rm), len(sm))
    paired = paired and n_pairs >= 2 and len(rw) == len(rm) and len(sw) == len(sm)
    if paired:
        rm, rw, sm, sw = rm[:n_pairs], rw[:n_pairs], sm[:n_pairs], sw[:n_pairs]
    rows = []
    pct_rows = {"wait_p50_s": 50.0, "wait_p95_s": 95.0}
    for name, label, kind in ROWS:
        if name in pct_rows and len(rw) == len(rm) and len(sw) == len(sm) and \
                all(len(w) for w in rw) and all(len(w) for w in sw):
            rows.append(_pooled_pct_row(name, label, rw, sw, pct_rows[name], tol.get(name),
                                        paired=paired))
            continue
        rv = np.array([m[name] for m in rm if m.get(name) is not None], dtype=float)
        sv = np.array([m[name] for m in sm if m.get(name) is not None], dtype=float)
        t = tol.get(name)
        if len(rv) == 0 or len(sv) == 0:
            rows.append(MetricRow(name, label, kind, None, None, None, None, None, None, None, t,
                                  "N/A", None, "missing on one side"))
            continue
        if paired and len(rv) == len(sv):
            err, lo, hi, note = _paired_interval(rv, sv, kind)
        else:
            err, lo, hi, note = _welch_interval(rv, sv, kind)
        verdict, equiv = _verdict(lo, hi, t)
        rows.append(MetricRow(
            name, label, kind, float(rv.mean()), float(rv.std(ddof=1)) if len(rv) > 1 else None,
            float(sv.mean()), float(sv.std(ddof=1)) if len(sv) > 1 else None, err, lo, hi, t,
            verdict, equiv, note))
    real_w = np.concatenate(all_rw) if all_rw else np.array([])
    sim_w = np.concatenate(all_sw) if all_sw else np.array([])
    tests: dict[str, Any] = {"n_real": int(len(real_w)), "n_sim": int(len(sim_w))}
    if len(real_w) >= 2 and len(sim_w) >= 2:
        ks = stats.ks_2samp(real_w, sim_w)
        tests["ks_statistic"] = float(ks.statistic)
        tests["ks_pvalue"] = float(ks.pvalue)
        try:
            import warnings
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ad = stats.anderson_ksamp([real_w, sim_w])
            tests["ad_statistic"] = float(ad.statistic)
            tests["ad_pvalue_capped"] = float(ad.pvalue)  # scipy caps it to [0.001, 0.25]
        except ValueError as exc:
            tests["ad_error"] = str(exc)
        tests["ties_real"] = int(len(real_w) - len(np.unique(real_w)))
        tests["ties_sim"] = int(len(sim_w) - len(np.unique(sim_w)))
        tests["note"] = ("information only: waits within a run are dependent, so p-values are "
                         "anti-conservative; ties (immediate acquisitions) make KS conservative. "
                         "Over all waits the immediate acquisitions dominate (simulated: exactly "
                         "one modelled round trip; real: the spread of measured round trips), so "
                         "the ks_queued_* test repeats KS on the tasks whose first try failed")
        qr, qs = queued
        if qr is not None and qs is not None and len(qr) >= 2 and len(qs) >= 2:
            kq = stats.ks_2samp(qr, qs)
            tests["n_queued_real"], tests["n_queued_sim"] = int(len(qr)), int(len(qs))
            tests["ks_queued_statistic"] = float(kq.statistic)
            tests["ks_queued_pvalue"] = float(kq.pvalue)
    out = Comparison(rows, tests, len(rm), len(sm))
    if paired:
        out.notes.append(f"paired: real run r vs simulated replication r (same jitter streams), "
                         f"{n_pairs} pairs")
    return out


# ------------------------------------------------------------------------------------------
# one call: real + sim + compare
# ------------------------------------------------------------------------------------------
def validation_cluster(cluster: Any, n_tasks: int, *, rtt_s: float | None = None,
                       cpu_us: Mapping[str, float] | None = None) -> Any:
    """The cluster the simulation runs for a validation: one worker slot per task, so no task
    queues for a slot (the real replay runs one worker per task); optionally calibrated Redis."""
    from gpusim.cluster import default_cluster

    cluster = cluster or default_cluster()
    services = None
    if cluster.services is not None:
        services = {k: v.model_copy(update={"workers": max(n_tasks, 1)})
                    for k, v in cluster.services.items()}
    cluster = dataclasses.replace(cluster, workers_per_service=max(n_tasks, 1),
                                  services=services)
    changes: dict[str, Any] = {}
    if rtt_s is not None:
        changes["rtt_s"] = rtt_s
    if cpu_us is not None:
        changes["cpu_us"] = {**cluster.redis.cpu_us, **cpu_us}
    if changes:
        cluster = cluster.with_redis(**changes)
    return cluster


def wakeups(sim: Any) -> tuple[int, int, float | None]:
    """(commands, server wake-ups, mean gap between wake-ups) predicted by a simulation.

    An idle Redis pays a wake-up for the first command of each independent chain, and little
    for a command sent one round trip after another (SET after its GET, PUBLISH after EVAL, the
    woken waiters' GETs after a PUBLISH, UNSUBSCRIBE after the winning SET). Chains start at
    every try that no release message triggered (arrival tries and polls) and at every
    release: wake-ups = sum(attempts - event_wakeups) + EVALs.
    """
    rep = sim.replications[0]
    cmds = rep.metrics["redis_commands"]
    n_cmds = int(sum(cmds.values()))
    n_wake = int(sum(r.attempts - r.event_wakeups for r in rep.records) + cmds.get("EVAL", 0))
    horizon = rep.metrics.get("horizon_s") or 0.0
    return n_cmds, n_wake, (horizon / n_wake if n_wake and horizon > 0 else None)


def summarize_lateness(real: RealResult) -> dict[str, float]:
    keys = ("start_p95_s", "start_max_s", "sleep_overshoot_p95_s", "sleep_overshoot_max_s",
            "hold_overshoot_p95_s", "hold_overshoot_max_s")
    out = {}
    for k in keys:
        vals = [r.lateness.get(k, 0.0) for r in real.runs]
        out[k] = max(vals) if vals else 0.0
    return out


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse
    try:
        host = urlparse(url).hostname or ""
    except ValueError:
        return False
    return host in ("127.0.0.1", "localhost", "::1") or url.startswith("unix:")


def validate(trace: Any, settings: GpuLockConfig | LockSettings, *, redis_url: str | None = None,
             time_scale: float = 1.0, runs: int = 3, seeds: int = 10, seed: int = 0,
             hold: str = "sleep", cluster: Any = None, calibrate: bool | None = None,
             tolerances: Mapping[str, float | None] | None = None,
             partial_path: str | Path | None = None, paired: bool = True,
             reference: bool | None = None, progress: Callable[[str], None] | None = None
             ) -> tuple[Comparison, RealResult, Any, dict[str, Any] | None]:
    """Real replay + simulation + comparison. Returns (comparison, real, sim, calibration).

    With no cluster file (``calibrate`` None -> True), the Redis model is calibrated on the same
    server (`gpusim.real.calibrate.calibrate_redis`), so Redis CPU is compared on this machine's own
    per-command costs; a given cluster file is used as it is.

    ``reference`` (None: on when calibrating against a Redis on this host): a second, private
    redis-server receives a known control load during every real run
    (`gpusim.real.calibrate.ReferenceLoad`, GETs at the command rate the model predicts);
    the CPU per command it measures is the host's cost of a lock command at that moment, and the
    prediction for real run r uses the control of run r. See the calibrate module docstring.
    """
    from gpusim.simulation import simulate
    from gpusim.real.server import PrivateRedis

    if calibrate is None:
        calibrate = cluster is None
    owned = ref_srv = ref_load = None
    if redis_url is None:
        owned = PrivateRedis().start()
        redis_url = owned.url
    if reference is None:
        reference = bool(calibrate) and _is_loopback(redis_url)
    try:
        n_cmds = n_wake = 0
        gap = wake_gap = pre = None
        if calibrate:
            # The command rate the model predicts (one uncalibrated replication: the rate barely
            # depends on CPU costs) sets the control load's rate / the wake-up probe's gap.
            pre = simulate(trace, settings, validation_cluster(cluster, len(trace)), seed=seed,
                           replications=1, time_scale=time_scale)
            n_cmds, n_wake, wake_gap = wakeups(pre)
            horizon = pre.replications[0].metrics.get("horizon_s") or 0.0
            gap = horizon / n_cmds if n_cmds and horizon > 0 else None
        if reference and gap:
            from gpusim.real.calibrate import ReferenceLoad
            ref_srv = PrivateRedis().start()
            ref_load = ReferenceLoad(ref_srv.url, gap, connections=min(len(trace), 64),
                                     seed=seed, chain_mean=max(1.0, n_cmds / max(1, n_wake)))
        real = run_real(trace, settings, redis_url=redis_url, time_scale=time_scale, runs=runs,
                        hold=hold, cluster=cluster, seed=seed, partial_path=partial_path,
                        reference=ref_load, progress=progress)
        rtt = float(np.median([r.get_rtt_p50_s for r in real.runs if r.get_rtt_p50_s > 0]
                              or [0]))
        cal = None
        if calibrate:
            from gpusim.real.calibrate import CalibrationError, calibrate_redis
            if progress:
                progress("calibrating Redis" + (f" (mean gap between commands {gap * 1e3:.1f} ms)"
                                                if gap else ""))
            try:
                if ref_load is not None:
                    cal = calibrate_redis(redis_url, seconds_per_command=0.15, idle_s=1.0,
                                          seed=seed)
                else:
                    cal = calibrate_redis(redis_url, seconds_per_command=0.15, idle_s=1.0,
                                          wakeup_gap_s=wake_gap, wakeup_seconds=1.5,
                                          wakeup_connections=min(len(trace), 64),
                                          chain_gap_s=rtt if rtt > 0 else None, seed=seed)
            except CalibrationError as exc:
                raise RedisUnavailable(str(exc)) from None
    finally:
        if ref_load is not None:
            ref_load.close()
        if ref_srv is not None:
            ref_srv.stop()
        if owned is not None:
            owned.stop()
    # The model's round trip is the one the replay's workers measured (median GET round trip,
    # thread wake-up and GIL included): an input of the model measured on this machine, like
    # the CPU costs; no compared output is fitted.
    cpu_us = None
    per_run_extra: list[float] | None = None
    if cal:
        dense = cal["details"]["dense_cpu_us"]
        if ref_load is not None:
            # every command is one server wake-up (see the calibrate docstring): a command costs
            # its dense cost plus what a GET costs on this host at the run's command rate beyond
            # the dense GET, as the control measured during each run
            per_run_extra = [r.reference["us_per_command"] - dense["GET"]
                             if r.reference and r.reference.get("us_per_command") is not None
                             else math.nan for r in real.runs]
            ok = [x for x in per_run_extra if math.isfinite(x)]
            extra = float(np.mean(ok)) if ok else 0.0
            per_run_extra = [x if math.isfinite(x) else extra for x in per_run_extra]
            cal["reference_extra_us_by_run"] = per_run_extra
            cal["method"] = "dense per-command cost + control (reference Redis) excess per command"
        else:
            # dense per-command cost + the wake-up cost spread over the commands in the ratio the
            # (pre-)simulation predicts: wake-ups / commands (see `wakeups`)
            share = n_wake / n_cmds if n_cmds else 0.0
            w = cal["details"].get("wakeup_us", 0.0)
            ch = min(w, cal["details"].get("chain_us", 0.0))
            extra = ch + (w - ch) * share
            cal["wakeups_per_command"] = share
            cal["method"] = "dense per-command cost + sparse-GET wake-up probe after the runs"
        cpu_us = {k: (v if k == "PUBLISH_PER_SUBSCRIBER" else max(0.0, v + extra))
                  for k, v in dense.items()}
        cal["validation_cpu_us"] = cpu_us
        cal["extra_us_per_command"] = extra
    sim_cluster = validation_cluster(
        cluster, len(trace), rtt_s=rtt if rtt > 0 else (cal["redis"]["rtt_s"] if cal else None),
        cpu_us=cpu_us)
    if progress:
        progress(f"simulating {seeds} seeds")
    sim = simulate(trace, settings, sim_cluster, seed=seed, replications=seeds,
                   time_scale=time_scale)
    sim_cpu = None
    if per_run_extra is not None and cpu_us is not None:
        # replication r (the CRN twin of real run r) is predicted with run r's control; the
        # model's CPU is linear in the per-command costs, so only the extra term is swapped
        sim_cpu = []
        for i, rep in enumerate(sim.replications):
            base = float(rep.metrics["redis_cpu_s"])
            if i < len(per_run_extra):
                n = sum(v for k, v in rep.metrics["redis_commands"].items()
                        if k in cpu_us and k != "PUBLISH_PER_SUBSCRIBER")
                base += (per_run_extra[i] - cal["extra_us_per_command"]) * 1e-6 * n
            sim_cpu.append(max(0.0, base))
        cal["sim_redis_cpu_s_by_replication"] = sim_cpu
    cmp_ = compare(real, sim, tolerances=tolerances, paired=paired and seeds >= runs >= 2,
                   sim_cpu=sim_cpu)
    cmp_.lateness = summarize_lateness(real)
    cfg = settings.gpu_lock if isinstance(settings, LockSettings) else settings
    smallest = min(cfg.poll_interval, cfg.fallback_timeout) / time_scale
    cmp_.notes.append(f"smallest scaled interval {smallest * 1e3:.2f} ms; worst p95 sleep "
                      f"overshoot {cmp_.lateness['sleep_overshoot_p95_s'] * 1e3:.2f} ms")
    if per_run_extra is not None:
        refs = [r.reference for r in real.runs if r.reference]
        cmp_.notes.append(
            "Redis CPU predicted from dense costs + a control load on a reference Redis during "
            "each run: " + ", ".join(f"{x['us_per_command']:.1f}" for x in refs
                                     if x.get("us_per_command") is not None)
            + f" us per control GET (dense GET {cal['details']['dense_cpu_us']['GET']:.1f} us)")
    wk = [(r.server_wakeups, sum(r.client_commands.values()))
          for r in real.runs if r.server_wakeups is not None]
    if wk:
        cmp_.notes.append("redis-server wake-ups (voluntary context switches) per client "
                          "command: " + ", ".join(f"{w / max(1, n):.2f}" for w, n in wk))
    return cmp_, real, sim, cal
