"""One real replay of a trace (`_OneRun`) and what it reports (`RealRun`, `RealResult`).

The parts of the real side that one replay needs, used by `gpusim.real.replay.run_real` (runs
one after another) and by `gpusim.real.lanes` (runs side by side, in processes of their own).
See gpusim.real.replay for how a replay works and what it measures.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import threading
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import redis

from gpusim.output import atomic_write_text
from gpusim.protocol import lock_key
from gpusim.real.lock_client import LockClient

__all__ = ["RealRun", "RealResult", "RedisUnavailable", "RedisDiedDuringRun",
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

    def _idle_window(self) -> tuple[tuple[dict[str, int], float, float, float], ...]:
        """One idle window: (INFO commandstats, server CPU, reference CPU, clock) at its start
        and at its end."""
        info0, cpu0 = _info_snapshot(self.ctl)
        start = (info0, cpu0, self.ref_cpu(), self.clock())
        time.sleep(self.idle_window_s)
        info1, cpu1 = _info_snapshot(self.ctl)
        return start, (info1, cpu1, self.ref_cpu(), self.clock())

    def _idle_before(self) -> dict[str, Any]:
        (_, cpu0, rc0, ti), (mid, cpu1, rc1, mid_t) = self._idle_window()
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
        (after, cpu2, rc2, tj), (_, cpu3, rc3, tk) = self._idle_window()
        idle_s = (s["mid_t"] - s["ti"]) + (tk - tj)
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
