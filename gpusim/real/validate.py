"""`gpusim validate`: replay a trace against a real Redis, simulate it, and judge the model.

One call, `validate(...)`, in named steps:
1. a pre-simulation (one replication, uncalibrated) predicts the command rate, which sets the
   rate of the CPU control load / the wake-up probe (`_pre_simulate`);
2. the real replay (`gpusim.real.replay.run_real`), with a control load on a second private
   redis-server when the Redis is on this host (`_start_reference`);
3. calibration of the Redis model on the same server (`gpusim.real.calibrate.calibrate_redis`)
   and the per-command costs the simulation uses (`_validation_costs`);
4. the simulation, each CRN twin's Redis CPU predicted with its own run's control
   (`_sim_cpu_by_replication`);
5. the comparison (`gpusim.real.comparison.compare`, statistics in `gpusim.stats`) and notes.

Redis CPU on a mostly idle host is not a constant per command: each command is a server
wake-up whose cost depends on what else the host runs (gpusim.real.calibrate, "Redis CPU model").
When the Redis is on this host, a control load runs on a second private redis-server during
each run (``RealRun.reference``) and the prediction for run r uses it.

The model's round trip is the one the replay's workers measured (median GET round trip, thread
wake-up and GIL included): an input of the model measured on this machine, like the CPU costs;
no compared output is fitted.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from gpusim.config import GpuLockConfig, LockSettings
from gpusim.real.cycles import regeneration_cycles
from gpusim.real.task_outcomes import TaskOutcomes
from gpusim.real.comparison import (CMDS, DEFAULT_TOLERANCES, ROWS, Comparison, MetricRow,
                                    advice, compare, real_samples, sim_samples)
from gpusim.real.replay import (CudaUnavailable, RealResult, RealRun, RedisDiedDuringRun,
                                RedisUnavailable, run_real, summarize_lateness)

# The replay and comparison names are re-exported: `from gpusim.real.validate import ...` was
# the one module before the split, and notebooks and scripts import from it.
__all__ = ["validate", "validate_observed", "validation_cluster", "wakeups", "run_real",
           "compare", "advice",
           "RealRun", "RealResult", "Comparison", "MetricRow", "RedisUnavailable",
           "RedisDiedDuringRun", "CudaUnavailable", "DEFAULT_TOLERANCES", "ROWS", "CMDS",
           "sim_samples", "real_samples", "summarize_lateness"]


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


def _is_loopback(url: str) -> bool:
    from urllib.parse import urlparse
    try:
        host = urlparse(url).hostname or ""
    except ValueError:
        return False
    return host in ("127.0.0.1", "localhost", "::1") or url.startswith("unix:")


def _pre_simulate(trace: Any, settings: Any, cluster: Any, seed: int, time_scale: float
                  ) -> tuple[int, int, float | None, float | None]:
    """(commands, wake-ups, mean gap between wake-ups, mean gap between commands) that one
    uncalibrated replication predicts (the rate barely depends on CPU costs)."""
    from gpusim.simulation import simulate

    pre = simulate(trace, settings, validation_cluster(cluster, len(trace)), seed=seed,
                   replications=1, time_scale=time_scale)
    n_cmds, n_wake, wake_gap = wakeups(pre)
    horizon = pre.replications[0].metrics.get("horizon_s") or 0.0
    gap = horizon / n_cmds if n_cmds and horizon > 0 else None
    return n_cmds, n_wake, wake_gap, gap


def _start_reference(gap: float, n_tasks: int, seed: int, n_cmds: int, n_wake: int
                     ) -> tuple[Any, Any]:
    """A second private redis-server and the control load (GETs at the predicted rate)."""
    from gpusim.real.calibrate import ReferenceLoad
    from gpusim.real.server import PrivateRedis

    srv = PrivateRedis().start()
    try:
        load = ReferenceLoad(srv.url, gap, connections=min(n_tasks, 64), seed=seed,
                             chain_mean=max(1.0, n_cmds / max(1, n_wake)))
    except BaseException:
        srv.stop()
        raise
    return srv, load


def _calibrate(redis_url: str, *, with_reference: bool, wake_gap: float | None, rtt: float,
               n_tasks: int, seed: int) -> dict[str, Any]:
    """Dense per-command costs; without a control load also the sparse-GET wake-up probe."""
    from gpusim.real.calibrate import CalibrationError, calibrate_redis

    try:
        if with_reference:
            return calibrate_redis(redis_url, seconds_per_command=0.15, idle_s=1.0, seed=seed)
        return calibrate_redis(redis_url, seconds_per_command=0.15, idle_s=1.0,
                               wakeup_gap_s=wake_gap, wakeup_seconds=1.5,
                               wakeup_connections=min(n_tasks, 64),
                               chain_gap_s=rtt if rtt > 0 else None, seed=seed)
    except CalibrationError as exc:
        raise RedisUnavailable(str(exc)) from None


def _validation_costs(cal: dict[str, Any], real: RealResult, with_reference: bool,
                      n_cmds: int, n_wake: int) -> tuple[dict[str, float], list[float] | None]:
    """(cpu_us for the simulation, per-run extra us per command or None); notes into ``cal``."""
    dense = cal["details"]["dense_cpu_us"]
    per_run_extra: list[float] | None = None
    if with_reference:
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
    return cpu_us, per_run_extra


def _sim_cpu_by_replication(sim: Any, per_run_extra: list[float], cpu_us: dict[str, float],
                            cal: dict[str, Any]) -> list[float]:
    """Replication r (the CRN twin of real run r) is predicted with run r's control; the
    model's CPU is linear in the per-command costs, so only the extra term is swapped."""
    sim_cpu = []
    for i, rep in enumerate(sim.replications):
        base = float(rep.metrics["redis_cpu_s"])
        if i < len(per_run_extra):
            n = sum(v for k, v in rep.metrics["redis_commands"].items()
                    if k in cpu_us and k != "PUBLISH_PER_SUBSCRIBER")
            base += (per_run_extra[i] - cal["extra_us_per_command"]) * 1e-6 * n
        sim_cpu.append(max(0.0, base))
    cal["sim_redis_cpu_s_by_replication"] = sim_cpu
    return sim_cpu


def _real_side(trace: Any, settings: Any, redis_url: str | None, *, calibrate: bool,
               reference: bool | None, time_scale: float, runs: int, hold: str, cluster: Any,
               seed: int, partial_path: Any, progress: Callable[[str], None] | None,
               yivideo_log: str | Path | None = None, changes: Any = (), pace: bool = True,
               lanes: int = 1
               ) -> tuple[RealResult, float, dict[str, Any] | None, tuple[int, int], bool]:
    """Steps 1-3: (real result, the model's rtt, calibration, (commands, wake-ups) predicted,
    whether a control load ran). Every server this starts is stopped before it returns."""
    from gpusim.real.server import PrivateRedis

    owned = ref_srv = ref_load = None
    given_url = redis_url  # lanes replay on servers of their own; a given one is refused there
    if redis_url is None:
        owned = PrivateRedis().start()
        redis_url = owned.url
    if reference is None:  # a control load runs beside one run at a time (gpusim.real.lanes)
        reference = bool(calibrate) and _is_loopback(redis_url) and lanes == 1
    try:
        n_cmds = n_wake = 0
        gap = wake_gap = None
        if calibrate:
            n_cmds, n_wake, wake_gap, gap = _pre_simulate(trace, settings, cluster, seed,
                                                          time_scale)
        if reference and gap:
            ref_srv, ref_load = _start_reference(gap, len(trace), seed, n_cmds, n_wake)
        real = run_real(trace, settings, redis_url=redis_url if lanes == 1 else given_url,
                        time_scale=time_scale, runs=runs, hold=hold, cluster=cluster, seed=seed,
                        partial_path=partial_path, reference=ref_load, progress=progress,
                        yivideo_log=yivideo_log, changes=changes, pace=pace, lanes=lanes)
        rtt = float(np.median([r.get_rtt_p50_s for r in real.runs if r.get_rtt_p50_s > 0]
                              or [0]))
        # the model charges the round trip the paced clients kept their schedule with
        model_rtt = real.inputs.get("pace_rtt_s", rtt)
        cal = None
        if calibrate:
            if progress:
                progress("calibrating Redis" + (f" (mean gap between commands {gap * 1e3:.1f} ms)"
                                                if gap else ""))
            cal = _calibrate(redis_url, with_reference=ref_load is not None, wake_gap=wake_gap,
                             rtt=rtt, n_tasks=len(trace), seed=seed)
    finally:
        if ref_load is not None:
            ref_load.close()
        if ref_srv is not None:
            ref_srv.stop()
        if owned is not None:
            owned.stop()
    return real, model_rtt, cal, (n_cmds, n_wake), ref_load is not None


LATE_KEYS = ("start_max_s", "sleep_overshoot_max_s", "hold_overshoot_max_s")
# a stall this many smallest scaled intervals long skips several polls of the stalled client
STALL_INTERVALS = 5.0


def off_schedule(real: RealResult, smallest_s: float) -> str | None:
    """Which real runs lost the replay's schedule, and by how much; None when none did. A run
    loses it when a task started, a sleep ended or a hold ended more than STALL_INTERVALS
    smallest scaled intervals (the shortest poll or fallback sleep at replay speed) late: such
    a stall skips several polls, and a late hold end delays every waiter behind it. Measured on
    the 2-core VM (reference case, 20 ms smallest interval, 170 runs of sessions 7-8): 137 runs
    were never more than 75 ms late (p95 overshoot 0.12-0.47 ms) and counted 344 SETs on
    average; 33 stalled by 106-1809 ms (a host crowded by 8 lanes, or hiccups of the VM that
    hit every lane at once) and counted 386 (+12%: stalled clients lose GET-then-SET races)."""
    stalls = _stalls(real)
    limit = STALL_INTERVALS * smallest_s
    lost = [(r.run, late) for r, late in zip(real.runs, stalls) if late > limit]
    if not lost:
        return None
    return (f"{len(lost)} of {len(real.runs)} real runs lost the replay's schedule (run "
            + ", ".join(str(run + 1) for run, _ in lost)
            + f": stalled up to {max(s for _, s in lost) * 1e3:.0f} ms, beyond "
              f"{STALL_INTERVALS:g} x the smallest scaled interval, {limit * 1e3:.0f} ms)")


def _stalls(real: RealResult) -> list[float]:
    """Each run's longest delay: a task's start, a sleep's or a hold's end."""
    return [max(r.lateness.get(k, 0.0) for k in LATE_KEYS) for r in real.runs]


def judge_schedule(cmp_: Comparison, real: RealResult, smallest_s: float,
                   rejudge: Callable[[list[int]], Comparison]) -> None:
    """Runs that lost the replay's schedule (`off_schedule`) are named in a note. A FAIL then
    stands only if the runs that kept it FAIL on their own (``rejudge``: the comparison of the
    runs at those positions with their twins); otherwise the verdict is INCONCLUSIVE
    (``cmp_.off_schedule`` set): the stalls, not the model, may be what differs."""
    why = off_schedule(real, smallest_s)
    if why is None:
        return
    if cmp_.rows_verdict != "FAIL":
        cmp_.notes.append(why)
        return
    kept = [i for i, late in enumerate(_stalls(real)) if late <= STALL_INTERVALS * smallest_s]
    if len(kept) >= 2 and rejudge(kept).rows_verdict == "FAIL":
        cmp_.notes.append(f"{why}: the FAIL stands, the {len(kept)} runs that kept it FAIL on "
                          "their own")
        return
    cmp_.off_schedule = why
    cmp_.notes.append(f"{why}: the FAIL is judged INCONCLUSIVE, the {len(kept)} runs that kept "
                      "it do not FAIL on their own")


def _smallest_interval(settings: Any, time_scale: float) -> float:
    """The shortest poll or fallback sleep at replay speed."""
    cfg = settings.gpu_lock if isinstance(settings, LockSettings) else settings
    return min(cfg.poll_interval, cfg.fallback_timeout) / time_scale


def _add_notes(cmp_: Comparison, real: RealResult, settings: Any, time_scale: float,
               cal: dict[str, Any] | None, with_reference: bool) -> None:
    cmp_.lateness = summarize_lateness(real)
    smallest = _smallest_interval(settings, time_scale)
    cmp_.notes.append(f"smallest scaled interval {smallest * 1e3:.2f} ms; worst p95 sleep "
                      f"overshoot {cmp_.lateness['sleep_overshoot_p95_s'] * 1e3:.2f} ms")
    if with_reference and cal:
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


def validate(trace: Any, settings: GpuLockConfig | LockSettings, *, redis_url: str | None = None,
             time_scale: float = 1.0, runs: int = 3, seeds: int = 10, seed: int = 0,
             hold: str = "sleep", cluster: Any = None, calibrate: bool | None = None,
             tolerances: Mapping[str, float | None] | None = None,
             partial_path: str | Path | None = None, paired: bool = True,
             reference: bool | None = None, progress: Callable[[str], None] | None = None,
             yivideo_log: str | Path | None = None, changes: Any = (), pace: bool = True,
             lanes: int = 1) -> tuple[Comparison, RealResult, Any, dict[str, Any] | None]:
    """Real replay + simulation + comparison. Returns (comparison, real, sim, calibration).

    With no cluster file (``calibrate`` None -> True), the Redis model is calibrated on the same
    server (`gpusim.real.calibrate.calibrate_redis`), so Redis CPU is compared on this machine's own
    per-command costs; a given cluster file is used as it is.

    ``reference`` (None: on when calibrating against a Redis on this host): a second, private
    redis-server receives a known control load during every real run
    (`gpusim.real.calibrate.ReferenceLoad`, GETs at the command rate the model predicts);
    the CPU per command it measures is the host's cost of a lock command at that moment, and the
    prediction for real run r uses the control of run r. See the calibrate module docstring.
    ``comparison.verdict`` is PASS, FAIL or INCONCLUSIVE (`gpusim.real.comparison`).
    ``pace`` (`run_real`): the real clients keep the model's schedule, and the model's round
    trip is the one they kept it with (``real.inputs["pace_rtt_s"]``).
    ``lanes`` (`run_real`): runs replayed side by side, each against a private redis-server of
    its own; with more than one, no control load runs (``reference`` None means off) and the
    Redis calibration, if any, is made on a server of its own after the runs.
    """
    from gpusim.simulation import simulate

    if calibrate is None:
        calibrate = cluster is None
    real, rtt, cal, (n_cmds, n_wake), with_ref = _real_side(
        trace, settings, redis_url, calibrate=calibrate, reference=reference,
        time_scale=time_scale, runs=runs, hold=hold, cluster=cluster, seed=seed,
        partial_path=partial_path, progress=progress, yivideo_log=yivideo_log, changes=changes,
        pace=pace, lanes=lanes)
    cpu_us = per_run_extra = None
    if cal:
        cpu_us, per_run_extra = _validation_costs(cal, real, with_ref, n_cmds, n_wake)
    sim_cluster = validation_cluster(
        cluster, len(trace), rtt_s=rtt if rtt > 0 else (cal["redis"]["rtt_s"] if cal else None),
        cpu_us=cpu_us)
    if progress:
        progress(f"simulating {seeds} seeds")
    sim = simulate(trace, settings, sim_cluster, seed=seed, replications=seeds,
                   time_scale=time_scale, changes=changes)  # config changes: gpusim.schedule
    sim_cpu = None
    if per_run_extra is not None and cpu_us is not None:
        sim_cpu = _sim_cpu_by_replication(sim, per_run_extra, cpu_us, cal)
    cycles = regeneration_cycles(trace, settings, cluster)
    cmp_ = compare(real, sim, tolerances=tolerances, paired=paired, sim_cpu=sim_cpu,
                   cycles=cycles, time_scale=time_scale)
    _add_notes(cmp_, real, settings, time_scale, cal, per_run_extra is not None)

    def rejudge(kept: list[int]) -> Comparison:  # the kept runs with their own twins
        twins = dataclasses.replace(sim, replications=[sim.replications[i] for i in kept])
        return compare(RealResult([real.runs[i] for i in kept], real.inputs),
                       twins if paired else sim, tolerances=tolerances, paired=paired,
                       sim_cpu=sim_cpu if sim_cpu is None or not paired else
                       [sim_cpu[i] for i in kept], cycles=cycles, time_scale=time_scale)

    judge_schedule(cmp_, real, _smallest_interval(settings, time_scale), rejudge)
    return cmp_, real, sim, cal


def validate_observed(trace: Any, settings: GpuLockConfig | LockSettings, *, cluster: Any = None,
                      seeds: int = 10, seed: int = 0,
                      tolerances: Mapping[str, float | None] | None = None
                      ) -> tuple[Comparison, Any, dict[str, Any]]:
    """The model's prediction for a trace's recorded arrivals and holds beside the outcomes the
    trace observed (`gpusim.traces.observed`): the observed record is the real side (one run),
    ``seeds`` simulated replications the model side, judged by the same rows and rule as
    `validate`. Returns (comparison, simulation, info).

    Tasks that timed out in the record have no hold; they are given their type's median
    observed hold (`fill_unknown_holds`; ``info['holds_filled']`` says how many). Rows that
    need Redis counters a trace does not carry (GET, SET, EVAL, PUBLISH, DEL, Redis CPU) are
    N/A. The cluster is used as given (default: `gpusim.cluster.default_cluster`): a task's
    simulated wait, like the observed one, runs from starting to acquire."""
    from gpusim.cluster import default_cluster
    from gpusim.errors import InputError
    from gpusim.simulation import simulate
    from gpusim.traces.observed import fill_unknown_holds

    obs = trace.observed
    if obs is None:
        raise InputError("the trace has no observed outcomes (wait_s, outcome, attempts)",
                         file=getattr(trace, "source", None), field="wait_s")
    filled, n_filled = fill_unknown_holds(trace)
    cluster = cluster or default_cluster()
    sim = simulate(filled, settings, cluster, seed=seed, replications=seeds)
    real = TaskOutcomes.from_observed(obs)
    n_wait = int(np.isfinite(real.wait_s).sum())
    cmp_ = compare(real, sim, tolerances=tolerances,
                   cycles=regeneration_cycles(filled, settings, cluster))
    cmp_.notes.append(f"observed record: {n_wait} of {len(trace)} tasks give a wait; "
                      f"{n_filled} unknown holds (timed out in the record) filled with their "
                      "type's median observed hold")
    from gpusim.config import config_digest

    mine = config_digest(settings)
    other = sum(1 for d in obs.config_digest if d is not None and d != mine)
    if other:
        cmp_.notes.append(f"{other} tasks ran under another gpu_lock config than the one "
                          f"simulated ({mine}), by their config_digest")
    return cmp_, sim, {"holds_filled": n_filled, "tasks_with_wait": n_wait,
                       "tasks_other_config": other}
