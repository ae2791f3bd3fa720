"""The SimPy model of YiVideo's GPU lock: tasks, worker slots, the lock protocol and Redis.

This module is the executable specification (`--engine reference`): every poll is a SimPy
event. gpusim.engines.compiled transcribes it into a compiled state machine (the default engine),
and tests/test_differential.py holds the two to identical output.

Timing conventions (seconds; time 0 is the first arrival):
- A command sent at client time c reaches the server at c + h and its reply is back at
  (c + h) + h, with h = rtt_s / 2. Times are accumulated in exactly this order, so both engines
  produce bit-identical floats.
- Events at one instant run in (priority, insertion) order; every event a task schedules has
  priority 2 + task index, so commands that reach the server at the same instant are applied in
  task-index (arrival) order. Two waiters whose GETs both see the key free both send SET NX;
  the lower index wins, the other's SET fails (the GET-then-SET race).
- A key set at server time t with TTL L is present for commands at times < t + L.
"""

from __future__ import annotations

import gc
from dataclasses import dataclass
from heapq import heappush
from typing import Any, Generator, Sequence

import simpy
from simpy.events import Event

from gpusim.cluster import Cluster
from gpusim.config import LockSettings
from gpusim.protocol import BACKOFF_FACTOR, channel_for, lock_key, owner_value
from gpusim.records import (HoldEnd, KeyHold, LostReason, Mechanism, Outcome, Release, RunLog,
                            TaskRecord)
from gpusim.model.params import (PRIO_TASK0, LockParams, MonitorParams, check_one_per_node,
                                 config_timeline, max_wait_by_type)
from gpusim.schedule import ConfigChange
from gpusim.model.redis import RedisServerModel, Subscription
from gpusim.rng import jitter_factor, stream_key, stream_state, uniform
from gpusim.model.slots import make_pools
from gpusim.traces.format import Task, Trace

_jitter_factor = jitter_factor


class Env(simpy.Environment):
    """SimPy environment that schedules at absolute times (no now + (t - now) rounding)."""

    def event(self) -> Event:
        return Event(self)

    def at(self, t: float, prio: int) -> Event:
        ev = Event(self)
        ev._ok = True
        ev._value = None
        heappush(self._queue, (t, prio, next(self._eid), ev))
        return ev

    def fire(self, ev: Event, value: Any, t: float, prio: int) -> None:
        ev._ok = True
        ev._value = value
        heappush(self._queue, (t, prio, next(self._eid), ev))


@dataclass(slots=True)
class TaskRun:
    """Mutable per-task state during a run; frozen into a TaskRecord at the end."""

    task: Task
    prio: int
    node: int = -1
    service: str = ""
    params: LockParams | None = None
    config_index: int = 0  # which config it read when it started acquiring (0: the initial)
    max_wait: float = float("nan")  # its node's max_wait, or its type's override
    wait_gpu: int | None = None     # the GPU whose key it polls (None: probe_all, every key)
    owner: str = ""
    jitter_state: int = 0
    delivery_state: int = -1   # the task's wake-up jitter stream, made on first use
    deliveries: int = 0
    slot_s: float = float("nan")
    acquired_s: float | None = None
    acquired_key: str | None = None
    gpu: int | None = None
    gpu_end_s: float | None = None
    end_s: float = float("nan")
    wait_s: float = float("nan")
    outcome: Outcome | None = None
    mechanism: Mechanism | None = None
    attempts: int = 0
    gets: int = 0
    sets: int = 0
    event_wakeups: int = 0
    fell_back: bool = False
    missed_wakeups: int = 0
    release: Release | None = None
    deleted_other: bool = False
    # event-driven wait state
    flag: bool = False
    waiting: Event | None = None
    wait_gen: int = 0


class Model:
    """One replication of one trace under one cluster and per-node lock settings."""

    engine_name = "reference"

    def __init__(self, trace: Trace, cluster: Cluster, settings: list[LockSettings], *,
                 seed: int, replication: int = 0, time_scale: float = 1.0,
                 changes: Sequence[ConfigChange] = ()):
        check_one_per_node(cluster, settings)
        self.trace = trace
        self.cluster = cluster
        self.time_scale = float(time_scale)
        self.env = Env()
        self.h = cluster.redis.rtt_s / 2.0
        self.subscribe_delay = cluster.redis.client_subscribe_delay_s
        self.wake_jitter = cluster.redis.pubsub_wakeup_jitter_s
        # one row per node's initial settings, then one per config change
        self.timeline = config_timeline(cluster, settings, changes, time_scale)
        self.params = [LockParams.from_config(s.gpu_lock, time_scale)
                       for s in self.timeline.settings]
        self.monitor_params = [MonitorParams.from_settings(s, time_scale) for s in settings]
        self.max_wait_by_type = max_wait_by_type(cluster, time_scale)
        self.opts = cluster.options
        self.server = RedisServerModel()
        self.jitter_key = stream_key(seed, replication, "jitter")
        self.delivery_key = stream_key(seed, replication, "delivery")
        self.runs: list[TaskRun] = []
        self.node_names = [n.name for n in cluster.nodes]
        self.node_index = {n.name: n.index for n in cluster.nodes}
        self.all_nodes = tuple(range(len(cluster.nodes)))
        services = {}
        for t in trace.task_types:
            svc = cluster.service_of(t)
            services[svc] = cluster.workers_of(svc)
        self.pools = make_pools(services, len(cluster.nodes))
        self.rr_counter = [0] * len(cluster.nodes)
        self.type_owner: dict[str, str] = {}  # one owner string per task type, not per task
        self.pending_sub: dict[str, set[int]] = {}
        self.remaining = len(trace)
        self.monitor_prio = PRIO_TASK0 + len(trace)

    # -- keys ----------------------------------------------------------------------------------
    def key_name(self, node: int, gpu: int) -> str:
        return lock_key(self.node_names[node], gpu, shared=self.opts.shared_keys_across_nodes)

    def all_keys(self) -> list[str]:
        keys = {self.key_name(n.index, g) for n in self.cluster.nodes for g in range(n.gpus)}
        return sorted(keys)

    def keys_for(self, run: TaskRun) -> list[tuple[str, int]]:
        node = self.cluster.nodes[run.node]
        policy = self.cluster.gpu_policy
        if policy == "probe_all":
            return [(self.key_name(run.node, g), g) for g in range(node.gpus)]
        if policy == "round_robin":
            g = self.rr_counter[run.node] % node.gpus
            self.rr_counter[run.node] += 1
        else:
            g = run.task.gpu if run.task.gpu is not None else 0
        run.wait_gpu = g
        return [(self.key_name(run.node, g), g)]

    # -- run -----------------------------------------------------------------------------------
    def run(self) -> RunLog:
        self.env.process(self._arrivals())
        if self.opts.monitor:
            self.env.process(self._monitor())
        # The run allocates millions of short-lived objects and frees them by reference
        # counting; the cyclic collector's repeated full passes over a million live tasks cost
        # 10-20% of the time and find nothing, so it is paused for the run.
        gc_was_on = gc.isenabled()
        gc.disable()
        try:
            self.env.run()
            horizon = max((r.end_s for r in self.runs), default=0.0)
            self.server.close(horizon)
            return self._log(horizon)
        finally:
            if gc_was_on:
                gc.enable()

    def _arrivals(self) -> Generator[Event, Any, None]:
        for task in self.trace.tasks:
            run = TaskRun(task, PRIO_TASK0 + task.index)
            self.runs.append(run)
            yield self.env.at(task.arrival_s / self.time_scale, run.prio)
            self.env.process(self._task(run))

    def _task(self, run: TaskRun) -> Generator[Event, Any, None]:
        env, task = self.env, run.task
        run.service = self.cluster.service_of(task.task_type)
        pool = self.pools[run.service]
        allowed = ((self.node_index[task.node],) if task.node is not None
                   else self.all_nodes)
        node = pool.take(run, allowed, run)
        if node is None:
            run.waiting = env.event()
            node = yield run.waiting
            run.waiting = None
        run.node = node
        run.slot_s = env.now
        # it starts acquiring now and reads the config in force on its node (GPU_LOCK_CONFIG_003)
        row = self.timeline.row_at(node, env.now)
        run.params = p = self.params[row]
        run.config_index = self.timeline.index[row]
        run.max_wait = self.max_wait_by_type.get(task.task_type, p.max_wait)
        run.owner = (owner_value(task.task_type, task.index) if self.opts.unique_owner_token
                     else self.type_owner.setdefault(task.task_type,
                                                     owner_value(task.task_type)))
        run.jitter_state = stream_state(self.jitter_key, task.index)
        keys = self.keys_for(run)
        start = env.now
        if p.event_driven:
            won, c = yield from self._acquire_event(run, keys, start)
        else:
            won, c = yield from self._poll_phase(run, keys, start, start)
        run.wait_s = c - start
        if won is None:
            run.outcome = Outcome.TIMEOUT
            yield env.at(c, run.prio)
            self._finish(run, c)
            return
        run.acquired_s = c
        run.acquired_key, run.gpu = won
        run.gpu_end_s = c + task.duration_s / self.time_scale
        yield env.at(run.gpu_end_s, run.prio)
        if task.crashed:
            run.outcome = Outcome.CRASHED
            self._finish(run, run.gpu_end_s)
            return
        run.outcome = Outcome.ACQUIRED
        end = yield from self._release(run)
        yield env.at(end, run.prio)  # the slot frees when the last reply is back
        self._finish(run, end)

    def _finish(self, run: TaskRun, t: float) -> None:
        run.end_s = t
        self.remaining -= 1
        granted = self.pools[run.service].give_back(run.node)
        if granted is not None:
            waiter, node = granted
            self.env.fire(waiter.waiting, node, t, waiter.prio)

    # -- one try: GET, and SET NX when the key looks free ---------------------------------------
    def _try_once(self, run: TaskRun, keys: list[tuple[str, int]],
                  c: float) -> Generator[Event, Any, tuple[tuple[str, int] | None, float]]:
        """One attempt started at client time c; returns (won key or None, client time after)."""
        run.attempts += 1
        won, c, _ = yield from self._try_keys(run, keys, 0, c + self.h)
        return won, c

    def _try_keys(self, run: TaskRun, keys: list[tuple[str, int]], m0: int, g: float
                  ) -> Generator[Event, Any, tuple[tuple[str, int] | None, float, bool]]:
        """GET keys[m0:] in turn (the first at server time g), SET NX a key that looks free.

        Returns (won key or None, client time after, whether any SET NX was sent)."""
        env, h, srv = self.env, self.h, self.server
        had_set = False
        c = g
        for m in range(m0, len(keys)):
            key = keys[m]
            if m > m0:
                g = c + h
            yield env.at(g, run.prio)
            run.gets += 1
            value = srv.get(key[0], g, run.task.index)
            c = g + h
            if value is not None:
                continue
            s = c + h
            yield env.at(s, run.prio)
            run.sets += 1
            had_set = True
            ok = srv.set_nx(key[0], run.owner, run.task.index, s, run.params.ttl)
            c = s + h
            if ok:
                return key, c, had_set
        return None, c, had_set

    # -- polling path ----------------------------------------------------------------------------
    def next_sleep(self, run: TaskRun, cur: float, k: int) -> tuple[float, float]:
        """(sleep, new cur) before attempt k+1; YiVideo multiplies before the first sleep."""
        p = run.params
        if not p.backoff:
            return p.poll_interval, cur
        cur = min(cur * BACKOFF_FACTOR, p.max_poll)
        return cur * _jitter_factor(uniform(run.jitter_state, k)), cur

    def _poll_phase(self, run: TaskRun, keys: list[tuple[str, int]], start: float,
                    c: float) -> Generator[Event, Any, tuple[tuple[str, int] | None, float]]:
        """Poll by poll: `while now - start < max_wait: try; sleep`. Returns (key, client t)."""
        p = run.params
        cur, k = p.poll_interval, 0
        while c - start < run.max_wait:
            won, c = yield from self._try_once(run, keys, c)
            if won is not None:
                if run.mechanism is None:
                    run.mechanism = Mechanism.POLLING
                return won, c
            sleep, cur = self.next_sleep(run, cur, k)
            k += 1
            c = c + sleep
        return None, c

    # -- event-driven path -------------------------------------------------------------------------
    def channel(self, key: str) -> str:
        return channel_for(key)

    def _acquire_event(self, run: TaskRun, keys: list[tuple[str, int]],
                       start: float) -> Generator[Event, Any, tuple[tuple[str, int] | None, float]]:
        env, h, p = self.env, self.h, run.params
        max_wait = run.max_wait
        for key, _ in keys:  # from its first GET on, a release it is not subscribed to is missed
            self.pending_sub.setdefault(key, set()).add(run.task.index)
        won, c = yield from self._try_once(run, keys, start)
        if won is not None:
            for key, _ in keys:
                self.pending_sub[key].discard(run.task.index)
            run.mechanism = Mechanism.IMMEDIATE
            return won, c
        # SUBSCRIBE is sent after some client-side work and takes effect when it reaches the
        # server: a release published before then is never seen (the lost wake-up window).
        sub_at = (c + self.subscribe_delay) + h
        for key, _ in keys:
            env.at(sub_at, run.prio).callbacks.append(
                lambda ev, key=key: self._subscribe(run, key, self.env.now))
        won = None
        while c - start < max_wait:
            wait = min(max_wait - (c - start), p.fallback)
            if not run.flag:
                run.wait_gen += 1
                run.waiting = env.event()
                env.at(c + wait, run.prio).callbacks.append(
                    lambda ev, gen=run.wait_gen: self._wake(run, gen, None))
                woke_at = yield run.waiting
                run.waiting = None
            else:
                woke_at = c
            if woke_at is None:  # no release message within `wait`: fall back to polling
                c = c + wait
                break
            c = woke_at
            run.event_wakeups += 1
            won, c = yield from self._try_once(run, keys, c)
            if won is not None:
                run.mechanism = Mechanism.EVENT
                break
            run.flag = False  # wait_event.clear(): messages that came during the try are lost
        if won is None:
            run.fell_back = True
            won, c = yield from self._poll_phase(run, keys, start, c)
        for key, _ in keys:  # finally: unsubscribe
            env.at(c + h, run.prio).callbacks.append(
                lambda ev, key=key: self.server.unsubscribe(self.channel(key), run.task.index,
                                                            self.env.now))
        return won, c

    def _subscribe(self, run: TaskRun, key: str, t: float) -> None:
        self.pending_sub[key].discard(run.task.index)
        self.server.subscribe(self.channel(key), Subscription(
            run.task.index, lambda pub_t: self._deliver(run, pub_t)), t)

    def _deliver(self, run: TaskRun, pub_t: float) -> None:
        t = pub_t + self.h
        if self.wake_jitter > 0:
            if run.delivery_state < 0:
                run.delivery_state = stream_state(self.delivery_key, run.task.index)
            t = t + self.wake_jitter * uniform(run.delivery_state, run.deliveries)
            run.deliveries += 1
        self.env.at(t, run.prio).callbacks.append(lambda ev: self._message(run, t))

    def _message(self, run: TaskRun, t: float) -> None:
        run.flag = True
        self._wake(run, run.wait_gen, t)

    def _wake(self, run: TaskRun, gen: int, value: float | None) -> None:
        if run.waiting is not None and gen == run.wait_gen and not run.waiting.triggered:
            self.env.fire(run.waiting, value, self.env.now, run.prio)

    # -- release ---------------------------------------------------------------------------------
    def _release(self, run: TaskRun) -> Generator[Event, Any, float]:
        env, h, srv = self.env, self.h, self.server
        key = run.acquired_key
        e = run.gpu_end_s + h
        yield env.at(e, run.prio)
        ok, holder = srv.eval_compare_and_delete(key, run.owner, e, run.task.index)
        c = e + h
        if ok:
            run.release = Release.OWNER
            run.deleted_other = holder != run.task.index
            pub = c + h
            yield env.at(pub, run.prio)
            for key_waiter in self.pending_sub.get(key, ()):
                self.runs[key_waiter].missed_wakeups += 1
            for sub in srv.publish(self.channel(key), pub, run.task.index):
                sub.deliver(pub)
            return pub + h
        run.release = Release.NOT_OWNER
        g = c + h
        yield env.at(g, run.prio)
        srv.get(key, g, run.task.index)  # read the current value for the log line
        c = g + h
        if not self.opts.emergency_delete:
            return c
        d = c + h
        yield env.at(d, run.prio)
        if srv.delete(key, d, run.task.index, HoldEnd.EMERGENCY_DELETED) >= 0:
            run.deleted_other = True
        return d + h

    # -- optional gpu_lock_monitor ---------------------------------------------------------------
    def _monitor(self) -> Generator[Event, Any, None]:
        """YiVideo's monitor loop, assuming it sees every acquisition (the optimistic case)."""
        env, srv, prio = self.env, self.server, self.monitor_prio
        mp = self.monitor_params[0]
        keys = self.all_keys()
        t = 0.0
        while self.remaining > 0:
            t = t + mp.interval
            yield env.at(t, prio)
            for key in keys:
                srv.count("GET", t)
                srv.count("TTL", t)
                st = srv.peek(key, t)
                if st.value is None:
                    continue
                age = t - st.set_s
                holder = self.runs[st.holder]
                dead = (holder.task.crashed and holder.gpu_end_s is not None
                        and t >= holder.gpu_end_s + mp.heartbeat_timeout)
                if age >= mp.hard or (age >= mp.soft and dead):
                    if age < mp.hard:
                        srv.count("EXISTS", t)
                    srv.count("GET", t)
                    srv.delete(key, t, None, HoldEnd.MONITOR_DELETED)
                elif age >= mp.soft:
                    srv.count("EXISTS", t)

    # -- results ---------------------------------------------------------------------------------
    def _log(self, horizon: float) -> RunLog:
        srv = self.server
        hold_of: dict[int, KeyHold] = {}
        for hold in srv.holds:
            hold_of.setdefault(hold.holder, hold)
        records = []
        runs, self.runs = self.runs, []
        for i, run in enumerate(runs):
            runs[i] = None  # type: ignore[call-overload]  # free as we go: halves peak memory
            lost_s = lost_reason = None
            hold = hold_of.get(run.task.index)
            if hold is not None and run.gpu_end_s is not None and hold.end_s < run.gpu_end_s \
                    and hold.ended_by != run.task.index:
                lost_s = hold.end_s
                lost_reason = {HoldEnd.EXPIRED: LostReason.EXPIRED,
                               HoldEnd.RELEASED: LostReason.RELEASED_BY_OTHER}.get(
                    hold.end_reason, LostReason.DELETED)
            records.append(TaskRecord(
                index=run.task.index, task_id=run.task.task_id, task_type=run.task.task_type,
                node=self.node_names[run.node], gpu=run.gpu, arrival_s=run.task.arrival_s /
                self.time_scale, slot_s=run.slot_s, outcome=run.outcome,
                mechanism=run.mechanism, acquired_s=run.acquired_s, gpu_end_s=run.gpu_end_s,
                end_s=run.end_s, wait_s=run.wait_s, attempts=run.attempts, gets=run.gets,
                sets=run.sets, event_wakeups=run.event_wakeups, fell_back=run.fell_back,
                missed_wakeups=run.missed_wakeups, release=run.release,
                deleted_other=run.deleted_other, lost_lock_s=lost_s, lost_reason=lost_reason,
                wait_gpu=run.wait_gpu, config_index=run.config_index))
        from gpusim.cluster import COMMANDS
        minute_cmds, minute_dels = srv.minute_arrays(horizon)
        gpus = tuple((n.name, g) for n in self.cluster.nodes for g in range(n.gpus))
        return RunLog(
            records=tuple(records), holds=tuple(srv.holds),
            commands={c: srv.commands[i] for i, c in enumerate(COMMANDS)},
            commandstats={c: srv.commandstats[i] for i, c in enumerate(COMMANDS)},
            deliveries=srv.deliveries, minute_commands=minute_cmds,
            minute_deliveries=minute_dels, gpus=gpus, horizon_s=horizon)
