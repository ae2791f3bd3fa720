"""The parked engine (`--engine parked`): the model in pure Python, a failed poll arithmetic.

It was the first fast engine; the compiled engine (gpusim.engine_compiled) replaced it as the
default. It stays as a second, independent way of skipping polls (waiters park and are woken by
key frees) that the differential tests also hold to the reference.

A polling waiter's future is a fixed schedule as long as every GET finds the key held: attempt
times follow from its start, the round trip and its own jitter stream. So the waiter computes
that schedule in vectorised blocks (the same floating-point additions, in the same order, as the
poll-by-poll engine) and parks. It wakes only when

- one of its keys is freed (release, emergency or monitor DEL, TTL expiry): it is resumed at its
  first scheduled GET after the free, as a real command, so races are played out exactly;
- its schedule reaches max_wait_time: it times out at the same instant the reference would.

The GETs it skipped were all made while the key was held, so they are only counted (per task,
per command, per minute). Everything else (slots, event-driven waits, releases, the monitor)
is the reference model's code running on a lean kernel (gpusim.kernel).
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right
from typing import Any, Generator

import numpy as np

from gpusim.kernel import FastEnv, FastEvent
from gpusim.model import BACKOFF_FACTOR, Model, TaskRun
from gpusim.redis_model import CMD_INDEX, MINUTE
from gpusim.rng import GAMMA, JITTER_LO, JITTER_SPAN, MASK, U53, uniforms

GET = CMD_INDEX["GET"]
FIRST_BLOCK = 4
NUMPY_BLOCK = 32
MAX_BLOCK = 1 << 16
EXPIRY_PRIO = 1  # a key expiring at E is gone for every command at E, whatever its priority


class PollSchedule:
    """Attempt times of one waiter from an anchor, assuming every GET finds its key held.

    c[i] is the client time attempt j0 + i starts (its loop test), gets[m][i] the server time
    of its GET on key m, sleeps[i] the sleep after it, timeout_i the first i whose loop test
    fails (None until the schedule has been computed that far).
    """

    __slots__ = ("run", "g", "h", "start", "max_wait", "j0", "c", "gets", "sleeps", "curs",
                 "timeout_i", "prev_cur")

    def __init__(self, run: TaskRun, g: int, h: float, start: float, c0: float, j0: int,
                 prev_cur: float):
        p = run.params
        self.run, self.g, self.h, self.start, self.max_wait = run, g, h, start, p.max_wait
        self.j0, self.prev_cur = j0, prev_cur
        self.c = [c0]
        self.gets: list[list[float]] = [[] for _ in range(g)]
        self.sleeps: list[float] = []
        self.curs: list[float] = []
        self.timeout_i = None if c0 - start < p.max_wait else 0

    def extend(self, to_max_wait: bool = False) -> None:
        """Compute the next block of attempts (until the loop test fails).

        Blocks double in size, or (`to_max_wait`) grow up to 4x toward the rest of the wait;
        small ones are computed in plain Python (cheaper than numpy's call overhead), large
        ones vectorised. Both perform the same additions in the same order as the
        poll-by-poll engine, so the times are bit-identical.
        """
        if self.timeout_i is not None:
            return
        done = len(self.sleeps)
        n = max(FIRST_BLOCK, done)
        if to_max_wait:
            p = self.run.params
            shortest = (p.poll_interval if not p.backoff else
                        JITTER_LO * min(self.curs[-1] if self.curs else self.prev_cur,
                                        p.max_poll)) + 2 * self.g * self.h
            left = self.max_wait - (self.c[-1] - self.start)
            n = max(n, min(int(left / shortest) + 2, 4 * n))  # never far past the need
        n = min(n, MAX_BLOCK)
        if n < NUMPY_BLOCK:
            self._extend_python(n)
        else:
            self._extend_numpy(n)

    def _next_curs(self, n: int) -> list[float]:
        p = self.run.params
        if not p.backoff:
            return [p.poll_interval] * n
        cur = self.curs[-1] if self.curs else self.prev_cur
        curs = []
        for _ in range(n):
            cur = min(cur * BACKOFF_FACTOR, p.max_poll)
            curs.append(cur)
            if cur == p.max_poll:
                curs.extend([cur] * (n - len(curs)))
                break
        return curs

    def _extend_python(self, n: int) -> None:
        p, g, h = self.run.params, self.g, self.h
        j = self.j0 + len(self.sleeps)
        curs = self._next_curs(n)
        state, backoff = self.run.jitter_state, p.backoff
        start, max_wait = self.start, self.max_wait
        c = self.c[-1]
        gets, sleeps, cs = self.gets, self.sleeps, self.c
        z0 = state + (j + 1) * GAMMA
        for k in range(n):
            for m in range(g):
                t = c + h
                gets[m].append(t)
                c = t + h
            cur = curs[k]
            if backoff:  # rng.uniform(state, j + k), inlined: this loop is the hot path
                z = (z0 + k * GAMMA) & MASK
                z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
                z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
                sleep = cur * (JITTER_LO + JITTER_SPAN * (((z ^ (z >> 31)) >> 11) * U53))
            else:
                sleep = cur
            sleeps.append(sleep)
            self.curs.append(cur)
            c = c + sleep
            cs.append(c)
            if not (c - start < max_wait):
                self.timeout_i = len(sleeps)
                return

    def _extend_numpy(self, n: int) -> None:
        p, g, h = self.run.params, self.g, self.h
        done = len(self.sleeps)
        j = self.j0 + done
        curs = self._next_curs(n)
        if p.backoff:
            sleeps = np.array(curs) * (JITTER_LO + JITTER_SPAN
                                       * uniforms(self.run.jitter_state, j, n))
        else:
            sleeps = np.full(n, p.poll_interval)
        width = 2 * g + 1
        steps = np.empty((n, width))
        steps[:, :2 * g] = h
        steps[:, 2 * g] = sleeps
        acc = np.add.accumulate(np.concatenate(([self.c[-1]], steps.ravel())))
        starts = acc[width::width]
        late = np.flatnonzero(starts - self.start >= self.max_wait)
        keep = int(late[0]) + 1 if len(late) else n
        for m in range(g):
            self.gets[m].extend(acc[2 * m + 1: width * keep: width].tolist())
        self.sleeps.extend(sleeps[:keep].tolist())
        self.curs.extend(curs[:keep])
        self.c.extend(starts[:keep].tolist())
        if len(late):
            self.timeout_i = done + keep

    def computed(self) -> int:
        """Attempts whose GET times are known."""
        return len(self.sleeps)

    def slot_after(self, m: int, t: float, q: int, prio: int, i_from: int) -> int | None:
        """First attempt >= i_from whose GET on key m comes after the event (t, q)."""
        while True:
            col = self.gets[m]
            i = (bisect_left if prio > q else bisect_right)(col, t, i_from)
            if i < len(col):
                return i
            if self.timeout_i is not None:
                return None
            self.extend()


class Waiter:
    """A polling task's parking state. `unseen[m]` is the earliest free of key m that the task
    has not observed since (by a real GET, or by finding the key held at a scheduled GET)."""

    __slots__ = ("run", "keys", "pos", "sched", "i", "active", "unseen", "event", "gen",
                 "target")

    def __init__(self, run: TaskRun, keys: list[tuple[str, int]], sched: PollSchedule):
        self.run, self.keys, self.sched = run, keys, sched
        self.pos = {k[0]: m for m, k in enumerate(keys)}
        self.i = 0
        self.active = True
        self.unseen: dict[int, tuple[float, int]] = {}
        self.event: FastEvent | None = None
        self.gen = 0
        self.target: tuple[int, int] | None = None

    def next_target(self) -> tuple[int, int] | None:
        """(attempt, key position) of the first scheduled GET after an unobserved free."""
        best = None
        for m, (t, q) in self.unseen.items():
            i = self.sched.slot_after(m, t, q, self.run.prio, self.i)
            if i is not None and (best is None or (i, m) < best):
                best = (i, m)
        return best


class ParkedModel(Model):
    engine_name = "parked"

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.waiters: dict[str, list[Waiter]] = {}
        self.expiry_watch: dict[str, float] = {}

    def make_env(self) -> FastEnv:  # type: ignore[override]
        return FastEnv()

    # -- key frees ---------------------------------------------------------------------------
    def _on_free(self, key: str, t: float, prio: int) -> None:
        for w in self.waiters.get(key, ()):
            self._notify(w, w.pos[key], t, prio)

    def _acquired_key(self, key: str) -> None:
        if self.waiters.get(key):
            self._watch_expiry(key)

    def _watch_expiry(self, key: str) -> None:
        """Make a TTL expiry an event, so parked waiters hear of it like of a release."""
        st = self.server.keys.get(key)
        if st is None or st.value is None or self.expiry_watch.get(key) == st.expires_at:
            return
        expires = st.expires_at
        self.expiry_watch[key] = expires

        def expire(_ev: FastEvent) -> None:
            cur = self.server.keys[key]
            # after the last task the run is over: the reference closes such a key as open
            if self.remaining and cur.value is not None and cur.expires_at == expires:
                self.server.peek(key, expires)  # ends the incarnation as expired
                self._on_free(key, expires, EXPIRY_PRIO)

        self.env.call_at(expires, EXPIRY_PRIO, expire)

    def _notify(self, w: Waiter, m: int, t: float, q: int) -> None:
        if m in w.unseen:
            return  # an earlier unobserved free of this key already sets the wake-up
        w.unseen[m] = (t, q)
        if w.active:
            return  # the attempt under way looks at the key itself, or parks afterwards
        i = w.sched.slot_after(m, t, q, w.run.prio, w.i)
        if i is not None and (w.target is None or (i, m) < w.target):
            self._arm(w, (i, m))

    # -- parking -------------------------------------------------------------------------------
    def _arm(self, w: Waiter, target: tuple[int, int] | None) -> None:
        """One live timer per parked waiter: at its resume GET, or at its schedule's horizon."""
        w.gen += 1
        gen = w.gen
        w.target = target
        sched = w.sched
        if target is not None:
            i, m = target
            self.env.call_at(sched.gets[m][i], w.run.prio,
                             lambda ev: self._resume_due(w, gen))
            return
        if sched.timeout_i is not None:
            self.env.call_at(sched.c[sched.timeout_i], w.run.prio,
                             lambda ev: self._timeout_due(w, gen))
        else:
            self.env.call_at(sched.c[sched.computed()], w.run.prio,
                             lambda ev: self._horizon_due(w, gen))

    def _resume_due(self, w: Waiter, gen: int) -> None:
        if gen != w.gen:
            return
        i, m = w.target
        key = w.keys[m][0]
        if self.server.peek(key, self.env.now).value is not None:
            # Taken again before this GET: it would only see the key held. Stay parked; the
            # skipped GET is counted with the others when the waiter moves on.
            del w.unseen[m]
            self._arm(w, w.next_target())
            return
        self.env.fire(w.event, ("resume", i, m), self.env.now, w.run.prio)

    def _timeout_due(self, w: Waiter, gen: int) -> None:
        if gen == w.gen:
            self.env.fire(w.event, ("timeout", w.sched.timeout_i, 0), self.env.now, w.run.prio)

    def _horizon_due(self, w: Waiter, gen: int) -> None:
        if gen == w.gen:
            w.sched.extend(to_max_wait=True)  # a long wait: finish its schedule in one go
            self._arm(w, None)

    def _count_skipped(self, w: Waiter, i_to: int, m_to: int) -> None:
        """GETs of attempts w.i .. i_to - 1 (all keys) and of attempt i_to on keys < m_to."""
        run, sched, srv = w.run, w.sched, self.server
        i0 = w.i
        n = 0
        for m, col in enumerate(sched.gets):
            hi = i_to + 1 if m < m_to else i_to
            if hi <= i0:
                continue
            n += hi - i0
            self._count_minutes(col, i0, hi)
            if srv.command_log is not None:
                srv.command_log.extend((t, "GET", w.keys[m][0], run.task.index)
                                       for t in col[i0:hi])
        run.attempts += i_to - i0
        run.gets += n
        srv.commands[GET] += n
        srv.commandstats[GET] += n

    def _count_minutes(self, times: list[float], lo: int, hi: int) -> None:
        minute = self.server.minute_commands
        while lo < hi:
            m = int(times[lo] // MINUTE)
            j = bisect_left(times, (m + 1) * MINUTE, lo, hi)
            minute[(m, GET)] += j - lo
            lo = j

    # -- the polling phase -----------------------------------------------------------------------
    def _poll_phase(self, run: TaskRun, keys: list[tuple[str, int]], start: float,
                    c: float) -> Generator[Any, Any, tuple[tuple[str, int] | None, float]]:
        p = run.params
        if not (c - start < p.max_wait):
            return None, c
        env, h, g = self.env, self.h, len(keys)
        w = Waiter(run, keys, PollSchedule(run, g, h, start, c, 0, p.poll_interval))
        for key, _ in keys:
            self.waiters.setdefault(key, []).append(w)
            self._watch_expiry(key)
        try:
            m0 = 0
            while True:
                sched, i = w.sched, w.i
                if sched.computed() <= i:
                    sched.extend()
                # attempt j0 + i for real, from key position m0 (earlier keys were held)
                run.attempts += 1
                w.active = True
                won, c, had_set = yield from self._try_keys(
                    run, keys, m0, sched.gets[m0][i], lambda m: w.unseen.pop(m, None))
                if won is not None:
                    if run.mechanism is None:
                        run.mechanism = "polling"
                    return won, c
                w.active = False
                c_next = c + sched.sleeps[i]
                if had_set:  # the SET round trip shifted the schedule: re-anchor it
                    w.sched = PollSchedule(run, g, h, start, c_next, sched.j0 + i + 1,
                                           sched.curs[i])
                    w.i = 0
                    if w.sched.timeout_i == 0:
                        return None, c_next
                else:
                    w.i = i + 1
                w.event = env.event()
                self._arm(w, w.next_target())
                kind, i_next, m0 = yield w.event
                self._count_skipped(w, i_next, m0)
                if kind == "timeout":
                    return None, w.sched.c[i_next]
                w.i = i_next
        finally:
            w.gen += 1  # retire any live timer
            for key, _ in keys:
                self.waiters[key].remove(w)
