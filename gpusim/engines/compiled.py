"""The compiled engine (`--engine fast`, the default): the reference model as a numba state machine.

It is gpusim.model.reference (the executable specification) transcribed, generator by
generator, into one compiled event loop over arrays: the same events, at the same (time,
priority, insertion) order, with the same floating-point operations in the same order and the
same counter-based random streams (gpusim.rng), so it writes bit-identical records
(tests/test_differential.py holds it to that).

What makes its cost independent of the poll rate is one rule: a GET in the polling phase whose
server time g is earlier than the key's *change horizon* is not scheduled as an event but done on
the spot, because its answer is already known (held) and nothing it does can be seen by anyone
else. A held key can only change by
- its TTL running out (expires_at, known),
- a command of a task that set it and has not yet finished releasing it (its EVAL time is fixed
  when it acquires: end of GPU work + h; after a failed EVAL, its emergency DEL time),
- the monitor's next tick;
new changers can only appear after the key is free again. So the horizon is the earliest of those
(`_key_horizon`), and every GET before it would find the key held in the reference too. At the
top of the polling loop a task runs all its failed polls before the horizon at once
(`_failed_polls`: a tight loop; with backoff off a binade's worth of polls in closed form, exact,
see `_steady_jump`), stopping before the first GET at or after the horizon, which becomes an
event as in the reference. Skipped GETs are still counted (per task, per command, per minute).
The event-driven path's fallback polling is the same loop; its other tries (the first one, and
the one after each wake-up) stay events (why: at Q_TRY_KEY).
"""

from __future__ import annotations

import functools
import math
import signal
import sys
import threading
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Sequence

import numba
import numpy as np
from numba import njit

from gpusim.cluster import COMMANDS, Cluster
from gpusim.config import LockSettings
from gpusim.model.params import (PRIO_TASK0, LockParams, MonitorParams, check_one_per_node,
                                 config_timeline, max_wait_by_type)
from gpusim.records import (HOLD_REASONS, LOST_REASONS, MECHANISMS, OUTCOMES, RELEASES, HoldEnd,
                            HoldTable, LostReason, Mechanism, Outcome, Release, RunLog, TaskTable)
from gpusim.protocol import BACKOFF_FACTOR, lock_key
from gpusim.engines.jit_rng import jitter_factor, minute_of, task_state, uniform
from gpusim.engines import jit_rng
from gpusim.engines.numba_cache import drop_stale, load_cached
from gpusim.rng import stream_key
from gpusim.schedule import ConfigChange
from gpusim.timebins import MINUTE_S
from gpusim.traces.format import Trace

C_GET, C_SET, C_EVAL, C_DEL, C_PUBLISH, C_SUBSCRIBE, C_UNSUBSCRIBE, C_TTL, C_EXISTS = range(9)
assert COMMANDS == ("GET", "SET", "EVAL", "DEL", "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "TTL",
                    "EXISTS")

# event kinds
E_ARRIVAL, E_RESUME, E_SUB, E_UNSUB, E_WAKE, E_MSG, E_MONITOR = range(7)
# resume points (where a task's generator is suspended in gpusim.model.reference)
P_INIT, P_SLOT, P_GET, P_SET, P_EV_WOKE, P_FINISH, P_GPU_DONE, P_EVAL, P_PUB, P_REL_GET, \
    P_REL_DEL = range(11)
# internal steps (no event between them)
Q_SETUP, Q_POLL_TOP, Q_TRY_START, Q_TRY_KEY, Q_TRY_NEXT, Q_TRY_WON, Q_TRY_FAIL, Q_EV_LOOP, \
    Q_FALLBACK, Q_EV_END, Q_AFTER, Q_WOKE, Q_YIELD = range(100, 113)
# try contexts
X_POLL, X_EV_FIRST, X_EV_WOKEN, X_EV_POLL = range(4)
# record codes: positions in gpusim.records' enums
O_ACQUIRED, O_CRASHED, O_TIMEOUT = (OUTCOMES.index(o) for o in
                                    (Outcome.ACQUIRED, Outcome.CRASHED, Outcome.TIMEOUT))
M_IMMEDIATE, M_EVENT, M_POLLING = (MECHANISMS.index(m) for m in
                                   (Mechanism.IMMEDIATE, Mechanism.EVENT, Mechanism.POLLING))
R_OWNER, R_NOT_OWNER = RELEASES.index(Release.OWNER), RELEASES.index(Release.NOT_OWNER)
L_EXPIRED, L_RELEASED_BY_OTHER, L_DELETED = (
    LOST_REASONS.index(r) for r in
    (LostReason.EXPIRED, LostReason.RELEASED_BY_OTHER, LostReason.DELETED))
H_RELEASED, H_EXPIRED, H_EMERGENCY, H_MONITOR, H_OPEN = (
    HOLD_REASONS.index(r) for r in (HoldEnd.RELEASED, HoldEnd.EXPIRED, HoldEnd.EMERGENCY_DELETED,
                                    HoldEnd.MONITOR_DELETED, HoldEnd.OPEN))
POLICIES = {"pinned": 0, "round_robin": 1, "probe_all": 2}
# The event loop reads its stop flag every STOP_CHECK_EVERY events (a power of two): about a
# millisecond of work, so a Ctrl-C ends it at once, and a test-and-branch too rare to measure.
STOP_CHECK_EVERY = 1 << 16
_STOP_MASK = STOP_CHECK_EVERY - 1

_INF = math.inf


@njit(cache=True, inline="always")
def _count(MC, commands, cstats, cmd, t, max_minute):
    """One client command at server time t: totals, INFO commandstats, its minute's count."""
    commands[cmd] += 1
    cstats[cmd] += 1
    row = minute_of(t)
    if row >= MC.shape[0]:  # grown by a call only when it must (see _push)
        MC = _grow_rows(MC, row)
    MC[row, cmd] += 1
    return MC, max(max_minute, row)


@njit(cache=True, inline="always")
def _end_hold(HL, hn, kval, kholder, kset, K, end, reason, by):
    """Key K's incarnation ends at `end` (a hold row is logged) and the key is free."""
    if hn >= HL.shape[0]:
        HL = _grow_holds(HL, hn)
    HL[hn, 0] = K
    HL[hn, 1] = kholder[K]
    HL[hn, 2] = kset[K]
    HL[hn, 3] = end
    HL[hn, 4] = reason
    HL[hn, 5] = by
    kval[K] = -1
    kholder[K] = -1
    return HL, hn + 1


# Two steps are written out where they are used, not called: numba hands an inlined helper its
# array arguments as new references (an atomic add and subtract each) that it cannot drop when the
# helper branches, and these run on most events (loop -8%, 2-core VM):
# - Redis' lazy expiry: a command at t >= expires_at finds key K gone (its hold ended at expiry):
#   `if kval[K] >= 0 and t >= kexp[K]: HL, hn = _end_hold(..., kexp[K], H_EXPIRED, -1)`;
# - task i's m-th key: its one chosen key, or (probe_all) GPU m's key on its node:
#   `ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]`.


# -- intrusive doubly linked lists over preallocated arrays (head/tail per list) ---------------
@njit(cache=True, inline="always")
def _push_front(head, nxt, prv, x, L):
    prv[x] = -1
    nxt[x] = head[L]
    if head[L] >= 0:
        prv[head[L]] = x
    head[L] = x


@njit(cache=True, inline="always")
def _append(head, tail, nxt, prv, x, L):
    nxt[x] = -1
    prv[x] = tail[L]
    if tail[L] >= 0:
        nxt[tail[L]] = x
    else:
        head[L] = x
    tail[L] = x


@njit(cache=True, inline="always")
def _unlink(head, nxt, prv, x, L):
    if prv[x] >= 0:
        nxt[prv[x]] = nxt[x]
    else:
        head[L] = nxt[x]
    if nxt[x] >= 0:
        prv[nxt[x]] = prv[x]


@njit(cache=True, inline="always")
def _unlink_fifo(head, tail, nxt, prv, x, L):
    if nxt[x] < 0:
        tail[L] = prv[x]
    _unlink(head, nxt, prv, x, L)


# -- the event heap: rows (time, priority, sequence, kind, task, int arg, float arg) ------------
@njit(cache=True, inline="always")
def _before(t1, p1, s1, t2, p2, s2):
    if t1 != t2:
        return t1 < t2
    if p1 != p2:
        return p1 < p2
    return s1 < s2


@njit(cache=True, inline="always")
def _push(H, n, seq, t, prio, kind, task, arg, val):
    """Schedule an event (sequence number `seq`); returns (heap, size, next sequence number).

    Inlined, and the heap goes through a call that returns it only when it must grow: numba
    counts references to an array a call returns (an atomic add and subtract), and perf put a
    third of the event loop's time on the week of 16 GPUs in such counting."""
    if n == H.shape[0]:
        H = _grow_heap(H)
    _sift_up(H, n, seq, t, prio, kind, task, arg, val)
    return H, n + 1, seq + 1


@njit(cache=True)
def _grow_heap(H):
    G = np.empty((2 * H.shape[0], 7))
    G[:H.shape[0]] = H
    return G


@njit(cache=True)
def _sift_up(H, j, seq, t, prio, kind, task, arg, val):
    """Put the new row at row j, the end, and sift it up, moving parents down into the hole
    (not swapping)."""
    while j > 0:
        p = (j - 1) >> 1
        if _before(t, prio, seq, H[p, 0], H[p, 1], H[p, 2]):
            for q in range(7):
                H[j, q] = H[p, q]
            j = p
        else:
            break
    H[j, 0] = t
    H[j, 1] = prio
    H[j, 2] = seq
    H[j, 3] = kind
    H[j, 4] = task
    H[j, 5] = arg
    H[j, 6] = val


@njit(cache=True)
def _pop(H, n, out):
    """Take the first row into `out`; sift the last row down from the top."""
    for q in range(7):
        out[q] = H[0, q]
    n -= 1
    if n > 0:
        t, p, s = H[n, 0], H[n, 1], H[n, 2]
        j = 0
        while True:
            c = 2 * j + 1
            if c >= n:
                break
            if c + 1 < n and _before(H[c + 1, 0], H[c + 1, 1], H[c + 1, 2],
                                     H[c, 0], H[c, 1], H[c, 2]):
                c += 1
            if _before(H[c, 0], H[c, 1], H[c, 2], t, p, s):
                for q in range(7):
                    H[j, q] = H[c, q]
                j = c
            else:
                break
        if j != n:
            for q in range(7):
                H[j, q] = H[n, q]
    return n


@njit(cache=True)
def _grow_rows(M, row):
    if row < M.shape[0]:
        return M
    size = M.shape[0]
    while size <= row:
        size *= 2
    G = np.zeros((size, M.shape[1]), dtype=M.dtype)
    G[:M.shape[0]] = M
    return G


@njit(cache=True)
def _grow_holds(HL, n):
    if n < HL.shape[0]:
        return HL
    G = np.empty((2 * HL.shape[0], 6))
    G[:n] = HL[:n]
    return G


# -- failed polls before a key's change horizon, without events ---------------------------------
@njit(cache=True, inline="always")
def _key_horizon(K, now, kval, kexp, thead, tnext, touch_t, mon_next):
    """The earliest time at which anything can change what a GET of key K returns, as seen at
    `now`; -inf when the key is free now (or its TTL has run out: then it is free for Redis).

    A held key changes only by its TTL running out (kexp), by a command of a task that set it
    and has not finished releasing it (touch_t: its EVAL, or after a failed EVAL its emergency
    DEL), or by the monitor's next tick (mon_next). Anyone else needs the key free first, which
    is itself a change. So a GET at a server time strictly before the horizon finds the key held,
    in the reference too, whatever events run in between."""
    if kval[K] < 0 or not (now < kexp[K]):
        return -_INF
    t = min(kexp[K], mon_next)
    j = thead[K]
    while j >= 0:
        t = min(t, touch_t[j])
        j = tnext[j]
    return t


@njit(cache=True, inline="always")
def _tally(MC, row, bound, cnt, g):
    """Count a GET at server time g into a running count `cnt` for minute `row`, which ends at
    `bound`; a GET in a later minute flushes the count (times must not decrease along a run).

    Exact: minute_of(g) is Python's g // 60.0, which for 0 <= g < 2**47 is the exact floor of
    g / 60 (fmod is exact, and g - fmod(g, 60) is a multiple of 60 that is a float), so the
    minute changes exactly when g >= 60 * (row + 1), a float itself."""
    if g >= bound:
        if cnt > 0:
            MC[row, C_GET] += cnt
        row = minute_of(g)
        bound = (row + 1) * MINUTE_S
        cnt = 0
    return row, bound, cnt + 1


@njit(cache=True)
def _ulps(c, q, u):
    """c + q ulps (q >= 0, the result in c's binade): exact."""
    return c + float(q) * u


@njit(cache=True)
def _first_reaching(c, u, d, off, start, target, jlo, jhi):
    """The first j in [jlo, jhi) with not (x_j - start < target), x_j = c + (j*d + off) ulps u
    (a predicate that, once true, stays true as j grows); jhi when there is none. Starts at the
    arithmetic guess and its neighbour (it is rarely off by more than one), then bisects."""
    if jhi <= jlo:
        return jhi
    guess = (target - (_ulps(c, off, u) - start)) / (d * u)  # nan or inf: clamped below
    if guess >= jhi - 1 or not (guess == guess):
        m = jhi - 1
    elif guess <= jlo:
        m = jlo
    else:
        m = int(math.ceil(guess))
    a, b, tries = jlo - 1, jhi, 0  # not reaching up to a, reaching from b on
    while b - a > 1:
        if tries >= 2 or m <= a or m >= b:
            m = (a + b) >> 1
        tries += 1
        if not (_ulps(c, m * d + off, u) - start < target):
            b, m = m, m - 1
        else:
            a, m = m, m + 1
    return b


@njit(cache=True)
def _steady_jump(c, start, mw, h, horizon, poll, MC, top):
    """Backoff off: the failed polls from client time c that stay in c's binade, at once.

    In a binade [lo, 2 lo) floats are the multiples of one ulp u, so adding h to a multiple of u
    rounds to the same multiple Hu of u every time (unless h / u is an exact tie, then parity
    decides: no jump). A poll is c -> g = c + h -> g + h -> + poll, so while all of it stays in
    the binade the reference's own one-by-one additions give c_j = c + j*D exactly, D = 2 Hu + Pu,
    and g_j = c_j + Hu. The loop's tests (c_j - start < mw, g_j < horizon) and the GET's minute
    (g_j >= 60 (r + 1)) only change once as j grows, so each is found by a search over j with the
    reference's own float expressions evaluated at the exact c_j and g_j.

    Returns (c after the polls, polls done, highest minute row, time before which not to retry
    when no jump is possible here)."""
    if not (c > 0.0):
        return c, 0, top, c
    ex = math.frexp(c)[1]              # c in [2**(ex-1), 2**ex)
    lo = math.ldexp(0.5, ex)
    u = math.ldexp(1.0, ex - 53)
    hq, pq = h / u, poll / u           # exact: scaling by a power of two
    if ex < -960 or not (h < lo) or not (poll < lo) or hq - math.floor(hq) == 0.5 \
            or pq - math.floor(pq) == 0.5:
        return c, 0, top, lo + lo
    hu = int(math.floor(hq + 0.5))
    d = 2 * hu + int(math.floor(pq + 0.5))
    if d <= 0:
        return c, 0, top, lo + lo
    nb = ((1 << 52) - 1 - int((c - lo) / u)) // d   # polls whose every value stays below 2 lo
    jn = _first_reaching(c, u, d, 0, start, mw, 0, nb)
    jn = _first_reaching(c, u, d, hu, 0.0, horizon, 0, jn)
    j0 = 0
    while j0 < jn:  # the GETs' minutes
        row = minute_of(_ulps(c, j0 * d + hu, u))
        j1 = _first_reaching(c, u, d, hu, 0.0, (row + 1) * MINUTE_S, j0 + 1, jn)
        MC[row, C_GET] += j1 - j0
        top = max(top, row)
        j0 = j1
    return _ulps(c, jn * d, u), jn, top, -_INF


@njit(cache=True, inline="always")
def _failed_polls(c, start, mw, h, horizon, backoff, poll, maxpoll, cur, js, k, MC):
    """Run the polling loop (`while c - start < mw: GET; sleep`) for as long as its one key's
    GETs fall strictly before `horizon`: every such GET fails, and nothing but the task's own
    clock and counters moves. The floats are the reference's, in its order: g = c + h, c = g + h,
    then c = c + sleep, one add at a time (with backoff off, a binade's worth at once by
    `_steady_jump`, exactly), and the backoff sleep uses the reference's counter-based draw k.

    Returns (c, cur, k, attempts done, MC, highest minute row or -1); it stops at the top of the
    loop, before the first GET at or after the horizon, or when the wait has run out."""
    last = minute_of(((start + mw) + h) + 1.0)  # past any GET of the loop
    if last >= MC.shape[0]:
        MC = _grow_rows(MC, last)
    if backoff:
        c, cur, n, top = _jittered_polls(c, start, mw, h, horizon, maxpoll, cur, js, k, MC)
    else:
        c, n, top = _steady_polls(c, start, mw, h, horizon, poll, MC)
    return c, cur, k + n, n, MC, top


@njit(cache=True)
def _jittered_polls(c, start, mw, h, horizon, maxpoll, cur, js, k, MC):
    """`_failed_polls` with backoff on: one poll at a time (about 5 ns: a draw and three
    dependent adds; counting the sleeps in ulps instead, as `_steady_jump` does, measured no
    faster). The minute count is written out, not called: as an inlined helper returning a
    tuple it doubled the cost of a poll."""
    n, row, bound, n0 = 0, -1, -_INF, 0
    while c - start < mw:
        g = c + h
        if not (g < horizon):
            break
        if g >= bound:  # a new minute (see _tally)
            if n > n0:
                MC[row, C_GET] += n - n0
            row = minute_of(g)
            bound = (row + 1) * MINUTE_S
            n0 = n
        cur = min(cur * BACKOFF_FACTOR, maxpoll)
        c = (g + h) + cur * jitter_factor(uniform(js, k + n))
        n += 1
    if n > n0:
        MC[row, C_GET] += n - n0
    return c, cur, n, row


@njit(cache=True)
def _steady_polls(c, start, mw, h, horizon, poll, MC):
    """`_failed_polls` with backoff off: a poll one add at a time, then the rest of the binade
    at once (`_steady_jump`), and again from the next binade."""
    row, bound, cnt, n, top, retry = -1, -_INF, 0, 0, -1, -_INF
    while c - start < mw:
        g = c + h
        if not (g < horizon):
            break
        row, bound, cnt = _tally(MC, row, bound, cnt, g)
        c = (g + h) + poll
        n += 1
        if c >= retry:
            c, jn, top, retry = _steady_jump(c, start, mw, h, horizon, poll, MC, top)
            n += jn
    if cnt > 0:
        MC[row, C_GET] += cnt
    return c, n, max(top, row)


@njit(cache=True)
def _failed_probe_polls(c, start, mw, h, hz, nk, backoff, poll, maxpoll, cur, js, k, MC):
    """`_failed_polls` for a task that GETs its node's keys in turn (probe_all), key m before
    its own horizon hz[m]: only whole attempts are done here, each only when all its GETs fall
    before their keys' horizons (checked first, then counted, with the same adds)."""
    MC = _grow_rows(MC, minute_of(((start + mw) + nk * (h + h)) + 1.0))
    row, bound, cnt, n = -1, -_INF, 0, 0
    while c - start < mw:
        x = c
        for m in range(nk):
            g = x + h
            if not (g < hz[m]):
                break
            x = g + h
        else:
            for m in range(nk):
                g = c + h
                row, bound, cnt = _tally(MC, row, bound, cnt, g)
                c = g + h
            if backoff:
                cur = min(cur * BACKOFF_FACTOR, maxpoll)
                c = c + cur * jitter_factor(uniform(js, k))
            else:
                c = c + poll
            k += 1
            n += 1
            continue
        break
    if cnt > 0:
        MC[row, C_GET] += cnt
    return c, cur, k, n, MC, row


# nogil: the loop runs in a worker thread while the main thread waits, interruptibly, for it
@njit(cache=True, nogil=True)
def _simulate(arr, dur, crashed, svc, allowed, pin_gpu, owner_of, t_maxwait,
              n_nodes, node_gpus, keymap, n_keys, key_order,
              p_poll, p_maxwait, p_ttl, p_backoff, p_maxpoll, p_event, p_fallback,
              tl_t, tl_row, tl_end, workers, policy, h, sub_delay, wake_jitter, jkey, dkey,
              emergency, monitor, m_interval, m_soft, m_hard, m_hb, stop):
    """The whole run; `stop` (int64[1]) nonzero makes it return early with partial state
    (within STOP_CHECK_EVERY events), which the caller must discard. `t_maxwait[i]` is task i's
    max wait when its type has one (option max_wait_time_by_type), else NaN: its node's.
    The p_* arrays are config rows; node nd's row from time tl_t[q] on is tl_row[q], q from
    tl_pos[nd] (initially nd's first entry, time -inf) below tl_end[nd] (config changes)."""
    n = arr.shape[0]
    maxk = keymap.shape[1] if policy == 2 else 1
    # ---- per-task state and results
    pc = np.full(n, P_INIT, np.int64)
    node = np.full(n, -1, np.int64)
    slot_s = np.full(n, np.nan)
    jstate = np.zeros(n, np.uint64)
    dstate = np.zeros(n, np.uint64)
    dmade = np.zeros(n, np.bool_)
    ndeliv = np.zeros(n, np.int64)
    acquired_s = np.full(n, np.nan)
    acq_key = np.full(n, -1, np.int64)
    gpu = np.full(n, -1, np.int64)
    gpu_end = np.full(n, np.nan)
    end_s = np.full(n, np.nan)
    wait_s = np.full(n, np.nan)
    outcome = np.full(n, -1, np.int64)
    mech = np.full(n, -1, np.int64)
    attempts = np.zeros(n, np.int64)
    gets = np.zeros(n, np.int64)
    sets = np.zeros(n, np.int64)
    wakeups = np.zeros(n, np.int64)
    fell_back = np.zeros(n, np.bool_)
    missed = np.zeros(n, np.int64)
    release = np.full(n, -1, np.int64)
    deleted_other = np.zeros(n, np.bool_)
    flag = np.zeros(n, np.bool_)
    waiting = np.zeros(n, np.int64)        # 0 none, 1 slot, 2 event wait
    triggered = np.zeros(n, np.bool_)
    wait_gen = np.zeros(n, np.int64)
    # generator locals
    c_ = np.zeros(n)
    g_ = np.zeros(n)
    start_ = np.zeros(n)
    cur_ = np.zeros(n)
    kk_ = np.zeros(n, np.int64)
    m_ = np.zeros(n, np.int64)
    ctx_ = np.zeros(n, np.int64)
    won_ = np.zeros(n, np.bool_)
    wonm_ = np.zeros(n, np.int64)
    waitv_ = np.zeros(n)
    nk_ = np.ones(n, np.int64)
    ksel_ = np.full(n, -1, np.int64)
    kgpu_ = np.full(n, -1, np.int64)      # the GPU whose key it polls; -1: probe_all
    mw_ = np.zeros(n)                      # its max wait (node's, or its type's override)
    cfg_ = np.full(n, -1, np.int64)        # its config row, read when it starts acquiring
    tl_pos = np.empty(n_nodes, np.int64)   # each node's row in force: time only moves on
    for nd in range(n_nodes):
        tl_pos[nd] = 0 if nd == 0 else tl_end[nd - 1]
    hzs = np.empty(maxk)                   # scratch: the change horizon of each key it probes
    # ---- keys: value (owner code, -1 none), holder, set time, expiry; and who may still touch
    kval = np.full(n_keys, -1, np.int64)
    kholder = np.full(n_keys, -1, np.int64)
    kset = np.zeros(n_keys)
    kexp = np.zeros(n_keys)
    thead = np.full(n_keys, -1, np.int64)
    tnext = np.full(n, -1, np.int64)
    tprev = np.full(n, -1, np.int64)
    tin = np.zeros(n, np.bool_)
    touch_t = np.full(n, _INF)
    # ---- pub/sub: per key, subscribers in subscription order, and tasks between first GET
    # and SUBSCRIBE (the lost wake-up window); nodes are (task, key position) ids
    ns = n * maxk
    chead = np.full(n_keys, -1, np.int64)
    ctail = np.full(n_keys, -1, np.int64)
    cnext = np.full(ns, -1, np.int64)
    cprev = np.full(ns, -1, np.int64)
    cin = np.zeros(ns, np.bool_)
    phead = np.full(n_keys, -1, np.int64)
    pnext = np.full(ns, -1, np.int64)
    pprev = np.full(ns, -1, np.int64)
    pin = np.zeros(ns, np.bool_)
    # ---- slots: free per (service, node), FIFO queue per service
    n_svc = workers.shape[0]
    free = np.empty((n_svc, n_nodes), np.int64)
    for s in range(n_svc):
        for nd in range(n_nodes):
            free[s, nd] = workers[s]
    qhead = np.full(n_svc, -1, np.int64)
    qtail = np.full(n_svc, -1, np.int64)
    qnext = np.full(n, -1, np.int64)
    qprev = np.full(n, -1, np.int64)
    rr = np.zeros(n_nodes, np.int64)
    # ---- accounting
    commands = np.zeros(9, np.int64)
    cstats = np.zeros(9, np.int64)
    MC = np.zeros((64, 9), np.int64)
    MD = np.zeros((64, 1), np.int64)  # PUBLISH fan-out per minute
    max_minute = -1
    deliveries = 0
    HL = np.empty((max(16, n), 6))
    hn = 0
    # ---- events
    H = np.empty((1024, 7))
    hsize = 0
    seq = 0.0
    ev = np.empty(7)
    remaining = n
    mprio = float(PRIO_TASK0 + n)
    mon_next = _INF
    if n > 0:
        H, hsize, seq = _push(H, hsize, seq, arr[0], PRIO_TASK0, E_ARRIVAL, 0, 0, 0.0)
    if monitor and n > 0:
        mon_next = 0.0 + m_interval
        H, hsize, seq = _push(H, hsize, seq, mon_next, mprio, E_MONITOR, -1, 0, 0.0)

    n_events = 0
    while hsize > 0:
        if (n_events & _STOP_MASK) == 0 and stop[0] != 0:
            break
        hsize = _pop(H, hsize, ev)
        n_events += 1
        now = ev[0]
        kind = int(ev[3])
        i = int(ev[4])
        if kind == E_ARRIVAL:
            H, hsize, seq = _push(H, hsize, seq, now, 0.0, E_RESUME, i, 0, np.nan)
            if i + 1 < n:
                H, hsize, seq = _push(H, hsize, seq, arr[i + 1], PRIO_TASK0 + i + 1, E_ARRIVAL,
                                 i + 1, 0, 0.0)
            continue
        if kind == E_MONITOR:
            t = now
            for q in range(key_order.shape[0]):
                K = key_order[q]
                for cmd in (C_GET, C_TTL):
                    MC, max_minute = _count(MC, commands, cstats, cmd, t, max_minute)
                if kval[K] >= 0 and t >= kexp[K]:  # Redis' lazy expiry
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
                if kval[K] < 0:
                    continue
                age = t - kset[K]
                j = kholder[K]
                dead = crashed[j] and not np.isnan(gpu_end[j]) and t >= gpu_end[j] + m_hb
                if age >= m_hard or (age >= m_soft and dead):
                    if age < m_hard:
                        MC, max_minute = _count(MC, commands, cstats, C_EXISTS, t, max_minute)
                    MC, max_minute = _count(MC, commands, cstats, C_GET, t, max_minute)
                    MC, max_minute = _count(MC, commands, cstats, C_DEL, t, max_minute)
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, t, H_MONITOR, -1)
                elif age >= m_soft:
                    MC, max_minute = _count(MC, commands, cstats, C_EXISTS, t, max_minute)
            if remaining > 0:
                mon_next = t + m_interval
                H, hsize, seq = _push(H, hsize, seq, mon_next, mprio, E_MONITOR, -1, 0, 0.0)
            else:
                mon_next = _INF
            continue
        prio = float(PRIO_TASK0 + i)
        if kind == E_SUB or kind == E_UNSUB:
            m = int(ev[5])
            K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
            sid = i * maxk + m
            cmd = C_SUBSCRIBE if kind == E_SUB else C_UNSUBSCRIBE
            MC, max_minute = _count(MC, commands, cstats, cmd, now, max_minute)
            if kind == E_SUB:
                if pin[sid]:
                    pin[sid] = False
                    _unlink(phead, pnext, pprev, sid, K)
                if not cin[sid]:
                    cin[sid] = True
                    _append(chead, ctail, cnext, cprev, sid, K)
            elif cin[sid]:
                cin[sid] = False
                _unlink_fifo(chead, ctail, cnext, cprev, sid, K)
            continue
        if kind == E_WAKE or kind == E_MSG:
            if kind == E_MSG:
                flag[i] = True
                gen = wait_gen[i]
                value = ev[6]
            else:
                gen = int(ev[5])
                value = np.nan
            if waiting[i] == 2 and gen == wait_gen[i] and not triggered[i]:
                triggered[i] = True
                H, hsize, seq = _push(H, hsize, seq, now, prio, E_RESUME, i, 0, value)
            continue

        # ---- E_RESUME: run task i's generator until it yields --------------------------------
        value = ev[6]
        step = pc[i]
        while True:
            if step == P_INIT:
                s = svc[i]
                best = -1
                if allowed[i] >= 0:
                    if free[s, allowed[i]] > 0:
                        best = allowed[i]
                else:
                    for nd in range(n_nodes):
                        if free[s, nd] > 0 and (best < 0 or free[s, nd] > free[s, best]):
                            best = nd
                if best < 0:
                    _append(qhead, qtail, qnext, qprev, i, s)
                    waiting[i] = 1
                    pc[i] = P_SLOT
                    break
                free[s, best] -= 1
                node[i] = best
                step = Q_SETUP
            elif step == P_SLOT:
                waiting[i] = 0
                node[i] = int(ev[5])
                step = Q_SETUP
            elif step == Q_SETUP:
                nd = node[i]
                slot_s[i] = now
                jstate[i] = task_state(jkey, i)
                q = tl_pos[nd]  # the config in force on its node now (a change at now applies)
                while q + 1 < tl_end[nd] and tl_t[q + 1] <= now:
                    q += 1
                tl_pos[nd] = q
                pr = tl_row[q]
                cfg_[i] = pr
                mw_[i] = p_maxwait[pr] if np.isnan(t_maxwait[i]) else t_maxwait[i]
                if policy == 2:
                    nk_[i] = node_gpus[nd]
                    ksel_[i] = -1
                    kgpu_[i] = -1
                else:
                    if policy == 1:
                        gg = rr[nd] % node_gpus[nd]
                        rr[nd] += 1
                    else:
                        gg = pin_gpu[i]
                    nk_[i] = 1
                    ksel_[i] = keymap[nd, gg]
                    kgpu_[i] = gg
                start_[i] = now
                c_[i] = now
                if p_event[pr]:
                    for m in range(nk_[i]):
                        K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
                        sid = i * maxk + m
                        if not pin[sid]:
                            pin[sid] = True
                            _push_front(phead, pnext, pprev, sid, K)
                    ctx_[i] = X_EV_FIRST
                    step = Q_TRY_START
                else:
                    cur_[i] = p_poll[pr]
                    kk_[i] = 0
                    ctx_[i] = X_POLL
                    step = Q_POLL_TOP
            elif step == Q_POLL_TOP:
                if c_[i] - start_[i] < mw_[i]:
                    # the failed polls before the key's change horizon, in one tight loop
                    pr = cfg_[i]
                    if nk_[i] == 1:
                        K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], 0]
                        hz1 = _key_horizon(K, now, kval, kexp, thead, tnext, touch_t, mon_next)
                        c_[i], cur_[i], kk_[i], nskip, MC, row = _failed_polls(
                            c_[i], start_[i], mw_[i], h, hz1, p_backoff[pr], p_poll[pr],
                            p_maxpoll[pr], cur_[i], jstate[i], kk_[i], MC)
                    else:
                        for m in range(nk_[i]):
                            K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
                            hzs[m] = _key_horizon(K, now, kval, kexp, thead, tnext, touch_t,
                                                  mon_next)
                        c_[i], cur_[i], kk_[i], nskip, MC, row = _failed_probe_polls(
                            c_[i], start_[i], mw_[i], h, hzs, nk_[i], p_backoff[pr],
                            p_poll[pr], p_maxpoll[pr], cur_[i], jstate[i], kk_[i], MC)
                    if nskip > 0:
                        attempts[i] += nskip
                        gets[i] += nskip * nk_[i]
                        commands[C_GET] += nskip * nk_[i]
                        cstats[C_GET] += nskip * nk_[i]
                        max_minute = max(max_minute, row)
                if c_[i] - start_[i] < mw_[i]:
                    step = Q_TRY_START
                else:
                    won_[i] = False
                    step = Q_AFTER if ctx_[i] == X_POLL else Q_EV_END
            elif step == Q_TRY_START:
                attempts[i] += 1
                m_[i] = 0
                g_[i] = c_[i] + h
                step = Q_TRY_KEY
            elif step == Q_TRY_KEY:
                m = m_[i]
                K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
                g = g_[i]
                skip = False
                # Only polling-phase GETs are done on the spot (here one key of a probe_all try;
                # whole polls at Q_POLL_TOP). The event-driven path's other tries stay events:
                # - after a wake-up (X_EV_WOKEN) the reference clears the wake flag at the
                #   failed GET's own event, so a message that reaches the task between now and
                #   then is dropped; done now, that message would wake the next wait instead.
                #   Which messages are in flight is not tracked, so this cannot be ruled out.
                # - after its first try (X_EV_FIRST) the task schedules its SUBSCRIBE and its
                #   wait timeout; done now, they would take sequence numbers ahead of events
                #   the reference inserts first, and ties at one instant run in insertion
                #   order: harmless only by a case-by-case argument nobody has checked.
                # Both come once per task and once per wake-up, never once per poll_interval.
                # Measured on the bench's week (event-driven, backoff off, poll 0.05 s): 72,497
                # such tries failed (69,608 first, 2,889 woken), 3.8% of 1.89 million events,
                # about 28 ms of the loop's 0.72 s at its mean 380 ns an event.
                if (ctx_[i] == X_POLL or ctx_[i] == X_EV_POLL) and kval[K] >= 0 \
                        and now < kexp[K] and g < kexp[K] and g < mon_next:
                    skip = True
                    j = thead[K]
                    while j >= 0:
                        if not (g < touch_t[j]):
                            skip = False
                            break
                        j = tnext[j]
                if skip:  # the reference's GET at g would find the key held: done here
                    gets[i] += 1
                    MC, max_minute = _count(MC, commands, cstats, C_GET, g, max_minute)
                    c_[i] = g + h
                    step = Q_TRY_NEXT
                else:
                    H, hsize, seq = _push(H, hsize, seq, g, prio, E_RESUME, i, 0, np.nan)
                    pc[i] = P_GET
                    break
            elif step == P_GET:
                m = m_[i]
                K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
                g = g_[i]
                gets[i] += 1
                MC, max_minute = _count(MC, commands, cstats, C_GET, g, max_minute)
                if kval[K] >= 0 and g >= kexp[K]:  # Redis' lazy expiry
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
                c = g + h
                c_[i] = c
                if kval[K] >= 0:
                    step = Q_TRY_NEXT
                else:
                    s_t = c + h
                    g_[i] = s_t
                    H, hsize, seq = _push(H, hsize, seq, s_t, prio, E_RESUME, i, 0, np.nan)
                    pc[i] = P_SET
                    break
            elif step == P_SET:
                m = m_[i]
                K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
                s_t = g_[i]
                sets[i] += 1
                MC, max_minute = _count(MC, commands, cstats, C_SET, s_t, max_minute)
                if kval[K] >= 0 and s_t >= kexp[K]:  # Redis' lazy expiry
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
                c = s_t + h
                c_[i] = c
                if kval[K] >= 0:
                    step = Q_TRY_NEXT
                else:
                    kval[K] = owner_of[i]
                    kholder[K] = i
                    kset[K] = s_t
                    kexp[K] = s_t + p_ttl[cfg_[i]]  # its own lock_timeout
                    if not crashed[i]:  # it will send EVAL at (end of GPU work) + h
                        touch_t[i] = (c + dur[i]) + h
                        tin[i] = True
                        _push_front(thead, tnext, tprev, i, K)
                    wonm_[i] = m
                    step = Q_TRY_WON
            elif step == Q_TRY_NEXT:
                m_[i] += 1
                if m_[i] < nk_[i]:
                    g_[i] = c_[i] + h
                    step = Q_TRY_KEY
                else:
                    step = Q_TRY_FAIL
            elif step == Q_TRY_WON:
                x = ctx_[i]
                won_[i] = True
                if x == X_POLL or x == X_EV_POLL:
                    if mech[i] < 0:
                        mech[i] = M_POLLING
                    step = Q_AFTER if x == X_POLL else Q_EV_END
                elif x == X_EV_FIRST:
                    for m in range(nk_[i]):
                        sid = i * maxk + m
                        if pin[sid]:
                            K = ksel_[i] if ksel_[i] >= 0 else keymap[node[i], m]
                            pin[sid] = False
                            _unlink(phead, pnext, pprev, sid, K)
                    mech[i] = M_IMMEDIATE
                    step = Q_AFTER
                else:
                    mech[i] = M_EVENT
                    step = Q_EV_END
            elif step == Q_TRY_FAIL:
                x = ctx_[i]
                pr = cfg_[i]
                if x == X_POLL or x == X_EV_POLL:
                    if p_backoff[pr]:
                        cur_[i] = min(cur_[i] * BACKOFF_FACTOR, p_maxpoll[pr])
                        sleep = cur_[i] * jitter_factor(uniform(jstate[i], kk_[i]))
                    else:
                        sleep = p_poll[pr]
                    kk_[i] += 1
                    c_[i] = c_[i] + sleep
                    step = Q_POLL_TOP
                elif x == X_EV_FIRST:
                    sub_at = (c_[i] + sub_delay) + h
                    for m in range(nk_[i]):
                        H, hsize, seq = _push(H, hsize, seq, sub_at, prio, E_SUB, i, m, 0.0)
                    step = Q_EV_LOOP
                else:
                    flag[i] = False
                    step = Q_EV_LOOP
            elif step == Q_EV_LOOP:
                c = c_[i]
                if c - start_[i] < mw_[i]:
                    w = min(mw_[i] - (c - start_[i]), p_fallback[cfg_[i]])
                    waitv_[i] = w
                    if not flag[i]:
                        wait_gen[i] += 1
                        waiting[i] = 2
                        triggered[i] = False
                        H, hsize, seq = _push(H, hsize, seq, c + w, prio, E_WAKE, i, wait_gen[i],
                                         0.0)
                        pc[i] = P_EV_WOKE
                        break
                    value = c
                    step = Q_WOKE
                else:
                    step = Q_FALLBACK
            elif step == P_EV_WOKE:
                waiting[i] = 0
                step = Q_WOKE
            elif step == Q_WOKE:
                if np.isnan(value):  # no release message within the wait: fall back
                    c_[i] = c_[i] + waitv_[i]
                    step = Q_FALLBACK
                else:
                    c_[i] = value
                    wakeups[i] += 1
                    ctx_[i] = X_EV_WOKEN
                    step = Q_TRY_START
            elif step == Q_FALLBACK:
                fell_back[i] = True
                cur_[i] = p_poll[cfg_[i]]
                kk_[i] = 0
                ctx_[i] = X_EV_POLL
                step = Q_POLL_TOP
            elif step == Q_EV_END:
                for m in range(nk_[i]):
                    H, hsize, seq = _push(H, hsize, seq, c_[i] + h, prio, E_UNSUB, i, m, 0.0)
                step = Q_AFTER
            elif step == Q_AFTER:
                c = c_[i]
                wait_s[i] = c - start_[i]
                if not won_[i]:
                    outcome[i] = O_TIMEOUT
                    H, hsize, seq = _push(H, hsize, seq, c, prio, E_RESUME, i, 0, np.nan)
                    pc[i] = P_FINISH
                    break
                acquired_s[i] = c
                m = wonm_[i]
                if ksel_[i] < 0:
                    acq_key[i] = keymap[node[i], m]
                    gpu[i] = m
                else:
                    acq_key[i] = ksel_[i]
                    gpu[i] = kgpu_[i]
                gpu_end[i] = c + dur[i]
                H, hsize, seq = _push(H, hsize, seq, gpu_end[i], prio, E_RESUME, i, 0, np.nan)
                pc[i] = P_GPU_DONE
                break
            elif step == P_GPU_DONE:
                if crashed[i]:
                    outcome[i] = O_CRASHED
                    step = P_FINISH
                    now = gpu_end[i]
                    continue
                outcome[i] = O_ACQUIRED
                e = gpu_end[i] + h
                g_[i] = e
                H, hsize, seq = _push(H, hsize, seq, e, prio, E_RESUME, i, 0, np.nan)
                pc[i] = P_EVAL
                break
            elif step == P_EVAL:
                K = acq_key[i]
                e = g_[i]
                if kval[K] >= 0 and e >= kexp[K]:  # Redis' lazy expiry
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
                MC, max_minute = _count(MC, commands, cstats, C_EVAL, e, max_minute)
                cstats[C_GET] += 1  # the script's own GET (and DEL below) count in commandstats
                c = e + h
                if kval[K] >= 0 and kval[K] == owner_of[i]:
                    cstats[C_DEL] += 1
                    holder = kholder[K]
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, e, H_RELEASED, i)
                    release[i] = R_OWNER
                    deleted_other[i] = holder != i
                    done_touching = True
                    nxt_t = c + h
                    pc[i] = P_PUB
                else:
                    release[i] = R_NOT_OWNER
                    nxt_t = c + h
                    done_touching = not emergency
                    if emergency:
                        touch_t[i] = ((nxt_t + h) + h)
                    pc[i] = P_REL_GET
                if done_touching and tin[i]:
                    tin[i] = False
                    touch_t[i] = _INF
                    _unlink(thead, tnext, tprev, i, K)
                g_[i] = nxt_t
                H, hsize, seq = _push(H, hsize, seq, nxt_t, prio, E_RESUME, i, 0, np.nan)
                break
            elif step == P_PUB:
                K = acq_key[i]
                pub = g_[i]
                sid = phead[K]
                while sid >= 0:
                    missed[sid // maxk] += 1
                    sid = pnext[sid]
                MC, max_minute = _count(MC, commands, cstats, C_PUBLISH, pub, max_minute)
                sid = chead[K]
                nsub = 0
                while sid >= 0:
                    j = sid // maxk
                    t = pub + h
                    if wake_jitter > 0:
                        if not dmade[j]:
                            dstate[j] = task_state(dkey, j)
                            dmade[j] = True
                        t = t + wake_jitter * uniform(dstate[j], ndeliv[j])
                        ndeliv[j] += 1
                    # A task that has fallen back to polling (X_EV_POLL, for good) never reads
                    # its wake flag again and waits on no event: the message would be a no-op
                    # event (most of them on a busy week), so it is counted but not scheduled.
                    # Skipping an insertion keeps every other event's relative order.
                    if ctx_[j] != X_EV_POLL:
                        H, hsize, seq = _push(H, hsize, seq, t, float(PRIO_TASK0 + j), E_MSG, j,
                                              0, t)
                    nsub += 1
                    sid = cnext[sid]
                deliveries += nsub
                if nsub > 0:
                    row = minute_of(pub)
                    if row >= MD.shape[0]:
                        MD = _grow_rows(MD, row)
                    MD[row, 0] += nsub
                H, hsize, seq = _push(H, hsize, seq, pub + h, prio, E_RESUME, i, 0, np.nan)
                pc[i] = P_FINISH
                break
            elif step == P_REL_GET:
                K = acq_key[i]
                g = g_[i]
                MC, max_minute = _count(MC, commands, cstats, C_GET, g, max_minute)
                if kval[K] >= 0 and g >= kexp[K]:  # Redis' lazy expiry
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
                c = g + h
                if not emergency:
                    H, hsize, seq = _push(H, hsize, seq, c, prio, E_RESUME, i, 0, np.nan)
                    pc[i] = P_FINISH
                    break
                d = c + h
                g_[i] = d
                H, hsize, seq = _push(H, hsize, seq, d, prio, E_RESUME, i, 0, np.nan)
                pc[i] = P_REL_DEL
                break
            elif step == P_REL_DEL:
                K = acq_key[i]
                d = g_[i]
                MC, max_minute = _count(MC, commands, cstats, C_DEL, d, max_minute)
                if kval[K] >= 0 and d >= kexp[K]:  # Redis' lazy expiry
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
                if kval[K] >= 0:
                    HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, d, H_EMERGENCY, i)
                    deleted_other[i] = True
                if tin[i]:
                    tin[i] = False
                    touch_t[i] = _INF
                    _unlink(thead, tnext, tprev, i, K)
                H, hsize, seq = _push(H, hsize, seq, d + h, prio, E_RESUME, i, 0, np.nan)
                pc[i] = P_FINISH
                break
            elif step == P_FINISH:
                end_s[i] = now
                remaining -= 1
                s = svc[i]
                nd = node[i]
                j = qhead[s]
                while j >= 0 and not (allowed[j] < 0 or allowed[j] == nd):
                    j = qnext[j]
                if j >= 0:  # the first queued task allowed on this node takes the slot
                    _unlink_fifo(qhead, qtail, qnext, qprev, j, s)
                    H, hsize, seq = _push(H, hsize, seq, now, float(PRIO_TASK0 + j), E_RESUME, j,
                                     nd, np.nan)
                else:
                    free[s, nd] += 1
                break
            else:
                raise RuntimeError("gpusim compiled engine: unknown step")

    horizon = 0.0
    for i in range(n):
        if end_s[i] > horizon:
            horizon = end_s[i]
    # close: keys still set expire (if due) or stay open, in key-name order
    for q in range(key_order.shape[0]):
        K = key_order[q]
        if kval[K] < 0:
            continue
        if kexp[K] <= horizon:
            HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, kexp[K], H_EXPIRED, -1)
        else:
            HL, hn = _end_hold(HL, hn, kval, kholder, kset, K, horizon, H_OPEN, -1)
    # locks lost while the GPU work still ran (first incarnation each task set)
    first = np.full(n, -1, np.int64)
    for q in range(hn):
        j = int(HL[q, 1])
        if j >= 0 and first[j] < 0:
            first[j] = q
    lost_s = np.full(n, np.nan)
    lost_reason = np.full(n, -1, np.int64)
    for i in range(n):
        q = first[i]
        if q >= 0 and not np.isnan(gpu_end[i]) and HL[q, 3] < gpu_end[i] \
                and int(HL[q, 5]) != i:
            lost_s[i] = HL[q, 3]
            r = int(HL[q, 4])
            lost_reason[i] = (L_EXPIRED if r == H_EXPIRED else
                              (L_RELEASED_BY_OTHER if r == H_RELEASED else L_DELETED))
    return (node, gpu, slot_s, outcome, mech, acquired_s, gpu_end, end_s, wait_s, attempts,
            gets, sets, wakeups, fell_back, missed, release, deleted_other, lost_s,
            lost_reason, kgpu_, cfg_, commands, cstats, deliveries, MC[:max_minute + 1],
            MD[:max_minute + 1, 0].copy(), HL[:hn].copy(), horizon, n_events)


class CompiledModel:
    """Same constructor and `run()` contract as gpusim.model.reference.Model."""

    engine_name = "fast"

    def __init__(self, trace: Trace, cluster: Cluster, settings: list[LockSettings], *,
                 seed: int, replication: int = 0, time_scale: float = 1.0,
                 changes: Sequence[ConfigChange] = ()):
        check_one_per_node(cluster, settings)
        self.trace, self.cluster, self.settings = trace, cluster, settings
        self.seed, self.replication, self.time_scale = seed, replication, float(time_scale)
        self.timeline = config_timeline(cluster, settings, changes, self.time_scale)
        self.events_processed = 0  # events the last run() took off its queue

    def _inputs(self) -> tuple[Any, ...]:
        trace, cluster, f = self.trace, self.cluster, self.time_scale
        cols = trace.columns
        n = len(trace)
        types = list(cols.types)
        services = sorted({cluster.service_of(t) for t in types})
        svc_code = {s: k for k, s in enumerate(services)}
        type_svc = np.array([svc_code[cluster.service_of(t)] for t in types], np.int64)
        node_index = {nd.name: nd.index for nd in cluster.nodes}
        ttype = cols.task_type
        arr = cols.arrival_s / f
        dur = cols.duration_s / f
        crashed = cols.crashed
        to_cluster = np.array([node_index[nd] for nd in cols.nodes] + [-1], np.int64)
        allowed = to_cluster[cols.node]  # code -1 (no node) indexes the trailing -1
        pin_gpu = np.where(cols.gpu < 0, 0, cols.gpu)
        if cluster.options.unique_owner_token:
            owner = np.arange(n, dtype=np.int64)
        else:
            owner = n + ttype
        # keys: one per (node, gpu), or one per gpu index when hosts share key names
        nodes = cluster.nodes
        max_g = max(nd.gpus for nd in nodes)
        keymap = np.full((len(nodes), max_g), -1, np.int64)
        names: dict[str, int] = {}
        for nd in nodes:
            for g in range(nd.gpus):
                name = lock_key(nd.name, g, shared=cluster.options.shared_keys_across_nodes)
                keymap[nd.index, g] = names.setdefault(name, len(names))
        key_names = sorted(names, key=names.__getitem__)
        key_order = np.array([names[k] for k in sorted(names)], np.int64)
        params = [LockParams.from_config(s.gpu_lock, f) for s in self.timeline.settings]
        by_type = max_wait_by_type(cluster, f)
        t_maxwait = np.array([by_type.get(t, np.nan) for t in types] + [np.nan])[ttype]
        mon = MonitorParams.from_settings(self.settings[0], f)
        workers = np.array([cluster.workers_of(s) for s in services], np.int64)
        r = cluster.redis
        args = (arr, dur, crashed, type_svc[ttype], allowed, pin_gpu, owner, t_maxwait,
                len(nodes), np.array([nd.gpus for nd in nodes], np.int64), keymap, len(names),
                key_order,
                np.array([p.poll_interval for p in params]),
                np.array([p.max_wait for p in params]), np.array([p.ttl for p in params]),
                np.array([p.backoff for p in params], np.bool_),
                np.array([p.max_poll for p in params]),
                np.array([p.event_driven for p in params], np.bool_),
                np.array([p.fallback for p in params]), *self._timeline_arrays(),
                workers, POLICIES[cluster.gpu_policy], r.rtt_s / 2.0,
                r.client_subscribe_delay_s, r.pubsub_wakeup_jitter_s,
                np.uint64(stream_key(self.seed, self.replication, "jitter")),
                np.uint64(stream_key(self.seed, self.replication, "delivery")),
                cluster.options.emergency_delete, cluster.options.monitor,
                mon.interval, mon.soft, mon.hard, mon.heartbeat_timeout)
        return args, ttype, arr, types, key_names

    def _timeline_arrays(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Every node's (time, config row) entries, flat in node order, and where each ends."""
        tl = self.timeline
        tl_t = np.array([t for times in tl.times for t in times], np.float64)
        tl_row = np.array([r for rows in tl.rows for r in rows], np.int64)
        return tl_t, tl_row, np.cumsum([len(rows) for rows in tl.rows]).astype(np.int64)

    def run(self) -> RunLog:
        args, ttype, arr, types, key_names = self._inputs()
        (node, gpu, slot_s, outcome, mech, acquired_s, gpu_end, end_s, wait_s, attempts, gets,
         sets, wakeups, fell_back, missed, release, deleted_other, lost_s, lost_reason,
         wait_gpu, cfg_row, commands, cstats, deliveries, mc, md, holds, horizon,
         n_events) = run_interruptibly(args)
        self.events_processed = int(n_events)
        n = len(arr)
        cols = {"index": np.arange(n, dtype=np.int64), "node": node, "gpu": gpu,
                "outcome": outcome, "mechanism": mech, "attempts": attempts, "gets": gets,
                "sets": sets, "event_wakeups": wakeups, "missed_wakeups": missed,
                "release": release, "lost_reason": lost_reason, "task_type": ttype,
                "arrival_s": arr, "slot_s": slot_s, "acquired_s": acquired_s,
                "gpu_end_s": gpu_end, "end_s": end_s, "wait_s": wait_s, "lost_lock_s": lost_s,
                "fell_back": fell_back, "deleted_other": deleted_other, "wait_gpu": wait_gpu,
                "config_index": np.array(self.timeline.index, np.int64)[cfg_row],
                "held_wait_s": np.full(n, np.nan), "free_wait_s": np.full(n, np.nan)}
        cluster = self.cluster
        table = TaskTable(cols, _TaskIds(self.trace), types, [nd.name for nd in cluster.nodes])
        hold_table = HoldTable(holds[:, 0].astype(np.int64), holds[:, 1].astype(np.int64),
                               holds[:, 2].copy(), holds[:, 3].copy(),
                               holds[:, 4].astype(np.int64), holds[:, 5].astype(np.int64),
                               key_names)
        # the reference sizes the per-minute arrays to the horizon's minute at least
        rows = max(int(horizon // MINUTE_S) + 1, len(mc))
        minute_cmds = np.zeros((rows, len(COMMANDS)), np.int64)
        minute_cmds[:len(mc)] = mc
        minute_dels = np.zeros(rows, np.int64)
        minute_dels[:len(md)] = md
        gpus = tuple((nd.name, g) for nd in cluster.nodes for g in range(nd.gpus))
        return RunLog(records=table, holds=hold_table,
                      commands={c: int(commands[i]) for i, c in enumerate(COMMANDS)},
                      commandstats={c: int(cstats[i]) for i, c in enumerate(COMMANDS)},
                      deliveries=int(deliveries), minute_commands=minute_cmds,
                      minute_deliveries=minute_dels, gpus=gpus, horizon_s=float(horizon))


@functools.cache
def _drop_stale_once() -> None:
    """Once a process: the engine's machine code holds what it inlined from jit_rng.py, which
    numba's own cache check does not look at (numba_cache.drop_stale)."""
    drop_stale(_simulate, (Path(__file__), Path(jit_rng.__file__)))


def run_interruptibly(args: tuple[Any, ...]) -> tuple[Any, ...]:
    """`_simulate(*args)` such that Ctrl-C raises KeyboardInterrupt here, within milliseconds.

    Called directly, compiled code cannot run Python's signal handler: the pending SIGINT fires
    in the first bytecode run after the loop, which is numba boxing the result tuple (it
    unpickles a constant through Python). The exception lands mid-boxing, the tuple comes back
    with NULL items and the caller segfaults. So the loop runs in a worker thread (signal
    handlers run only in the main thread) without the GIL, the main thread waits on an Event in
    timed steps, which Ctrl-C interrupts, and then tells the loop to stop through a flag it
    polls; the partial result is dropped and KeyboardInterrupt re-raised."""
    # load (or compile) the machine code here, where Ctrl-C interrupts plain Python
    stop = np.zeros(1, np.int64)
    args = (*args, stop)
    _drop_stale_once()
    load_cached(_simulate, tuple(numba.typeof(a) for a in args))  # numba_cache: no full refresh
    out: dict[str, Any] = {}
    done = threading.Event()

    def work() -> None:
        _name_os_thread(b"gpusim-engine")
        try:
            out["result"] = _simulate(*args)
        except BaseException as e:  # handed to the caller's thread
            out["error"] = e
        finally:
            done.set()

    # Waiting on an Event, not Thread.join: on Python 3.11 a Ctrl-C inside join() marks a
    # thread that still runs as stopped (bpo-45274's handler), so join could not wait again.
    worker = threading.Thread(target=work, name="gpusim-fast-engine", daemon=True)
    started = False
    try:
        with _sigint_deferred():  # no Ctrl-C between starting the thread and knowing it
            worker.start()
            started = True
        while not done.wait(0.5):  # a timed wait: interruptible on every platform
            pass
    except KeyboardInterrupt:
        stop[0] = 1
        if started:
            _wait_anyway(done, worker)
        raise
    worker.join()  # it has set `done`: only its last few bytecodes are left
    if "error" in out:
        raise out["error"]
    return out["result"]


@contextmanager
def _sigint_deferred() -> Iterator[None]:
    """Hold a Ctrl-C back until the block ends (main thread only; elsewhere none arrives)."""
    if threading.current_thread() is not threading.main_thread() \
            or not callable(signal.getsignal(signal.SIGINT)):  # ignored, or not Python's
        yield
        return
    got: list[int] = []
    old = signal.signal(signal.SIGINT, lambda signum, frame: got.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, old)
    if got:
        old(signal.SIGINT, None)  # Python's default handler raises KeyboardInterrupt


def _wait_anyway(done: threading.Event, worker: threading.Thread) -> None:
    """Wait the few milliseconds the loop needs to see its stop flag, even through a second
    Ctrl-C: no engine thread may outlive the call."""
    while not done.is_set():
        try:
            done.wait()
        except KeyboardInterrupt:
            pass
    try:
        worker.join()
    except KeyboardInterrupt:  # a third Ctrl-C: it is past its work, let it end on its own
        pass


def _name_os_thread(name: bytes) -> None:
    """Name the calling OS thread (Linux): `top -H` shows it, and tests see the engine run."""
    if sys.platform.startswith("linux"):
        try:
            import ctypes
            ctypes.CDLL(None).prctl(15, name)  # PR_SET_NAME
        except (OSError, AttributeError):
            pass


class _TaskIds:
    """Task ids read from the trace on demand (building 10^6 strings up front costs time)."""

    def __init__(self, trace: Trace):
        self.trace = trace

    def __len__(self) -> int:
        return len(self.trace)

    def __getitem__(self, i: int) -> str:
        return self.trace.task_ids[i]  # not .tasks: that builds every Task object
