"""Real replays side by side (`run_real(lanes=N)`): more paired runs in the same minutes.

Why: a validation's intervals shrink with the number of real runs, and the runs are what take
the time (the reference trace, 337 tasks at 100x, replays in 76 s). A replay is mostly sleeping
threads, though: four lanes and their simulation kept 46% of one core busy on the project's
2-core VM, so runs beside each other cost little timing. Measured there on the reference case,
2026-11-28: 2 lanes x 3 rounds, 6 runs in 4 min 10 s with the whole validation (3 runs one after
another: 4 min 05 s), sleep overshoot p95 0.16 ms; 4 lanes x 3 rounds, 12 runs in 4 min 18 s,
p95 0.35 ms and (another seed) 0.16-0.18 ms, SET errors -0.4% and +1.8% (one at a time: 0.2-0.3
ms). Session 6 had seen 0.8-1.4 ms with four lanes on those cores, once. Session 8: 6 lanes x 3
rounds, 18 runs in 4 min 18 s, p95 0.19-0.25 ms in every run (worst single sleep 11 ms); 8 lanes
x 3 rounds were fine in the first round (p95 0.3 ms) but not after (a run's p95 up to 4.5 ms,
single stalls of 0.3-1.8 s, SET counts 11% high: the replay no longer kept its schedule). Hence
the default, three lanes per usable core (`default_lanes`); the overshoot is reported with every
validation.

How: each lane is a process of its own (threads of one interpreter would share its GIL and the
switch interval a run lowers) and replays against a private redis-server of its own, so INFO
commandstats and the server's CPU stay per run. The parent starts the servers, measures the
round trip on each (their median paces every lane and is the model's rtt), starts the lanes
with SIGINT ignored (Ctrl-C is the parent's: it stops the lanes and the servers), and collects
each run as it ends. Run r goes to lane r mod N, so run r still meets replication r's draws.
Not with a Redis you name (one server would mix the runs' counters), a CPU control load or a
YiVideo log file: those replay one run at a time.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import queue as queue_mod
import signal
import sys
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import redis

from gpusim.real.one_run import (RealResult, RedisDiedDuringRun, RedisUnavailable,
                                 _control_client, _cuda_hold_factory, _local_pid, _measure_rtt,
                                 _OneRun, _save_partial)
from gpusim.real.server import PrivateRedis

LANES_PER_CORE = 3
MAX_AUTO_LANES = 8
POLL_S = 0.5  # how often the parent looks for a lane that died without a word


def default_lanes() -> int:
    """LANES_PER_CORE lanes per core this process may run on, at most MAX_AUTO_LANES."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    return max(1, min(LANES_PER_CORE * n, MAX_AUTO_LANES))


@dataclass
class _LaneJob:
    lane: int
    url: str
    runs: list[int]
    plan: list
    hold: str
    opts: dict[str, Any]


def _lane_main(job: _LaneJob, out: Any, stop: Any) -> None:
    """A lane's process: its runs in order, each sent to the parent when it ends."""
    try:
        ctl, _ = _control_client(job.url)
        hold_fn = _cuda_hold_factory() if job.hold == "cuda" else None
        pid = _local_pid(ctl, job.url, None)
        for r in job.runs:
            if stop.is_set():
                break
            run = _OneRun(r, job.plan, job.url, ctl, server_pid=pid, hold_fn=hold_fn,
                          **job.opts).run()
            out.put(("run", job.lane, run))
            if run.partial:
                break
    except (redis.RedisError, OSError, RedisUnavailable) as exc:
        out.put(("redis", job.lane, f"{type(exc).__name__}: {exc}"))
    except BaseException as exc:  # reported by the parent, which decides the exit
        out.put(("error", job.lane, f"{type(exc).__name__}: {exc}"))
    finally:
        out.put(("done", job.lane, None))


class LaneFailed(RuntimeError):
    """A lane's process failed for a reason other than its Redis."""


def replay_in_lanes(plan: list, runs: int, lanes: int, *, hold: str, pace: bool,
                    opts: dict[str, Any], inputs: dict[str, Any],
                    partial_path: str | Path | None,
                    progress: Callable[[str], None] | None) -> RealResult:
    """``runs`` real runs over ``lanes`` processes, each with its own private redis-server.
    Returns a RealResult; raises RedisDiedDuringRun (partial results attached and saved) when a
    lane's Redis failed, LaneFailed when a lane failed otherwise."""
    servers: list[PrivateRedis] = []
    try:
        for _ in range(lanes):
            servers.append(PrivateRedis().start())
        ctls = [_control_client(s.url) for s in servers]
        inputs["redis"] = f"{lanes} private redis-servers (lanes)"
        inputs["redis_version"] = ctls[0][1]
        inputs["lanes"] = lanes
        if pace:
            rtts = [_measure_rtt(c) for c, _ in ctls]
            opts["pace_rtt_s"] = inputs["pace_rtt_s"] = float(np.median(rtts))
            inputs["pace_rtt_s_by_lane"] = rtts
        for c, _ in ctls:
            c.close()
        jobs = [_LaneJob(j, servers[j].url, list(range(j, runs, lanes)), plan, hold, opts)
                for j in range(lanes)]
        if progress:
            progress(f"real runs 1-{runs} in {lanes} lanes side by side")
        done, failure = _collect(jobs, runs, progress)
    finally:
        for s in servers:
            s.stop()
    got = [done[r] for r in sorted(done)]
    if failure is not None and failure[0] == "error":
        raise LaneFailed(f"lane {failure[1]} failed: {failure[2]}")
    broken = next((r for r in got if r.partial), None)
    if failure is None and broken is None and len(got) == runs:
        return RealResult(got, inputs)
    error = (broken.error if broken is not None else failure[2] if failure is not None
             else f"{runs - len(got)} run(s) missing")
    res = RealResult(got, inputs, partial=True, error=error)
    saved = _save_partial(res, partial_path)
    raise RedisDiedDuringRun(
        f"Redis failed during the real runs ({len([r for r in got if not r.partial])} of "
        f"{runs} complete): {error}; " + (f"partial results saved to {saved}" if saved else
                                          "partial results attached (partial=true)"),
        res, saved)


def _collect(jobs: list[_LaneJob], runs: int, progress: Callable[[str], None] | None
             ) -> tuple[dict[int, Any], tuple[str, int, str] | None]:
    """Start the lanes, gather their runs; stop them all on the first failure or Ctrl-C."""
    ctx = mp.get_context("spawn")  # a fresh interpreter: no copy of this one's threads
    out, stop = ctx.Queue(), ctx.Event()
    procs = [ctx.Process(target=_lane_main, args=(job, out, stop), daemon=True,
                         name=f"gpusim-lane-{job.lane}") for job in jobs]
    _start_ignoring_sigint(procs)
    done: dict[int, Any] = {}
    failure: tuple[str, int, str] | None = None
    finished: set[int] = set()
    try:
        while len(finished) < len(procs):
            try:
                kind, lane, item = out.get(timeout=POLL_S)
            except queue_mod.Empty:
                for j, p in enumerate(procs):  # killed without a word (OOM, a signal)
                    if j not in finished and not p.is_alive():
                        finished.add(j)
                        failure = failure or ("redis", j, f"lane {j} exited with code "
                                                          f"{p.exitcode}")
                        stop.set()
                continue
            if kind == "done":
                finished.add(lane)
            elif kind == "run":
                done[item.run] = item
                if item.partial:
                    stop.set()
                if progress:
                    progress(f"real run {item.run + 1} done ({len(done)}/{runs})")
            else:
                failure = failure or (kind, lane, item)
                stop.set()
        for p in procs:
            p.join()
    except BaseException:  # Ctrl-C (or anything else): no lane outlives the parent
        stop.set()
        for p in procs:
            if p.is_alive():
                p.terminate()
        for p in procs:
            p.join(timeout=5)
        raise
    return done, failure


def _start_ignoring_sigint(procs: list[Any]) -> None:
    """Start the lanes with SIGINT ignored (kept across exec; Python then installs no
    KeyboardInterrupt handler), so a terminal's Ctrl-C reaches only the parent, which stops
    them. From a thread other than the main one the disposition cannot be changed: the lanes
    then start as they are."""
    main = threading.current_thread() is threading.main_thread()
    old = signal.signal(signal.SIGINT, signal.SIG_IGN) if main else None
    try:
        with _main_module_hidden():
            for p in procs:
                p.start()
    finally:
        if main:
            signal.signal(signal.SIGINT, old)


@contextmanager
def _main_module_hidden() -> Iterator[None]:
    """A spawned process first runs the parent's main script again (multiprocessing does, so
    that objects pickled from it resolve), and a script that calls `run_real(lanes=...)` without
    an ``if __name__ == "__main__":`` guard would start its whole work again in every lane. A
    lane needs nothing from it (its code and data are in gpusim), so while the lanes start the
    main module shows neither its file nor its spec, from which multiprocessing finds it."""
    main = sys.modules.get("__main__")
    if main is None:
        yield
        return
    saved = {k: vars(main)[k] for k in ("__file__", "__spec__") if k in vars(main)}
    vars(main).pop("__file__", None)
    if "__spec__" in saved:
        main.__spec__ = None
    try:
        yield
    finally:
        vars(main).update(saved)
