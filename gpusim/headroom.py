"""Headroom: how much of each task's lock wait its key was really held by someone else.

A task waits for the lock over [slot_s, slot_s + wait_s]. Part of that the key is held by another
task (`held_wait_s`): a lock setting shortens it only by shortening the queue ahead (or by letting
tasks give up). The rest (`free_wait_s`) the key is free and the task has not got it yet: the
notice delay of polling, lost GET-then-SET races, lost wake-ups, its own SET round trip. That part
is what a better `gpu_lock` setting wins back directly; where it is large, the queue it feeds
shrinks too, so the achievable cut can exceed it (the advisor measures that with a near-ideal
lock).

Computed after the run from the records and the key incarnations (RunLog.holds), so every engine
gets it the same way:
- a task that polls one key (`wait_gpu` set): held = the overlap of that key's incarnations with
  [slot_s, stop), where stop is the set time of the task's own incarnation when it has one (so
  its own SET round trip counts as free), else slot_s + wait_s;
- probe_all (`wait_gpu` None): held = the time in [slot_s, stop) when every key of its node was
  held (with one free key it could have had the GPU);
- free = wait - held.

Vectorised: per key (or per node's key set) a cumulative held-time function over the sorted,
disjoint incarnations, queried with np.searchsorted for every task window at once.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import numpy as np

from gpusim.cluster import Cluster
from gpusim.protocol import lock_key
from gpusim.records import HoldTable, KeyHold, RunLog, TaskRecord, TaskTable

# Rounding noise a split may show (free a hair below zero, held a hair above the wait): every
# quantity is a difference of times close together, so the noise is a few ulps of a wait (at most
# a day: ~1e-11 s). Anything beyond this is a bug, not noise.
NOISE_S = 1e-9


def with_headroom(log: RunLog, cluster: Cluster) -> RunLog:
    """`log` with its records' held_wait_s and free_wait_s filled in."""
    table = TaskTable.from_records(log.records)
    held, free = split_waits(table, log.holds, cluster)
    return dataclasses.replace(log, records=table.with_columns(held_wait_s=held,
                                                               free_wait_s=free))


def split_waits(records: Sequence[TaskRecord] | TaskTable,
                holds: Sequence[KeyHold] | HoldTable,
                cluster: Cluster) -> tuple[np.ndarray, np.ndarray]:
    """(held_wait_s, free_wait_s) per task, in the records' order."""
    t = TaskTable.from_records(records)
    n = len(t)
    key, key_names, holder, set_s, end_s = _hold_columns(holds)
    # the task's own incarnation (a task sets a key at most once): its set time ends the window
    own = np.full(n, np.inf)
    if n:
        pos = np.full(int(t.index.max()) + 1, -1, np.int64)
        pos[t.index] = np.arange(n)
        mine = (holder >= 0) & (holder < len(pos))
        rows = pos[holder[mine]]
        np.minimum.at(own, rows[rows >= 0], set_s[mine][rows >= 0])
    wait = t.wait_s
    span = np.where(np.isfinite(own), own - t.slot_s, wait)  # window length from slot_s
    intervals = _Intervals(key, set_s, end_s)
    set_of, sets = _task_sets(t, cluster, {k: c for c, k in enumerate(key_names)})
    # tasks grouped by key set (stable: arrival order within a group); one slice per group
    order = np.argsort(_small(set_of, len(sets)), kind="stable")
    set_sorted, a, w = set_of[order], t.slot_s[order], span[order]
    bounds = np.concatenate(([0], np.flatnonzero(np.diff(set_sorted)) + 1, [n]))
    held_sorted = np.zeros(n)
    for lo, hi in zip(bounds[:-1].tolist(), bounds[1:].tolist()):
        if hi > lo:
            S, E = intervals.all_held(sets[int(set_sorted[lo])])
            held_sorted[lo:hi] = _held_in(S, E, a[lo:hi], w[lo:hi])
    held = np.empty(n)
    held[order] = held_sorted
    free = wait - held
    _check(held, free, wait)
    return np.maximum(held, 0.0), np.maximum(free, 0.0)


def _check(held: np.ndarray, free: np.ndarray, wait: np.ndarray) -> None:
    bad = (held < -NOISE_S) | (free < -NOISE_S) | ~np.isfinite(free)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise AssertionError(f"wait split out of range for task row {i}: wait {wait[i]!r}, "
                             f"held {held[i]!r}, free {free[i]!r}")


def _hold_columns(holds: Sequence[KeyHold] | HoldTable
                  ) -> tuple[np.ndarray, tuple[str, ...], np.ndarray, np.ndarray, np.ndarray]:
    """(key code, key names, holder (-1 none), set_s, end_s) of every incarnation."""
    if isinstance(holds, HoldTable):
        return (np.asarray(holds.key, np.int64), holds.key_names,
                np.asarray(holds.holder, np.int64), np.asarray(holds.set_s, float),
                np.asarray(holds.end_s, float))
    names = tuple(sorted({h.key for h in holds}))
    code = {k: c for c, k in enumerate(names)}
    return (np.array([code[h.key] for h in holds], np.int64), names,
            np.array([h.holder for h in holds], np.int64),
            np.array([h.set_s for h in holds], float), np.array([h.end_s for h in holds], float))


def _task_sets(t: TaskTable, cluster: Cluster, code: dict[str, int]
               ) -> tuple[np.ndarray, list[tuple[int, ...]]]:
    """Per task the id of the key set it waits on, and the sets (tuples of key codes; a key
    never set has code -1: never held). One key for most; every key of its node for probe_all."""
    shared = cluster.options.shared_keys_across_nodes
    gpus_of = {nd.name: nd.gpus for nd in cluster.nodes}
    sets: list[tuple[int, ...]] = []
    set_id: dict[tuple[int, ...], int] = {}

    def id_of(names: list[str]) -> int:
        codes = tuple(code.get(k, -1) for k in names)
        if codes not in set_id:
            set_id[codes] = len(sets)
            sets.append(codes)
        return set_id[codes]

    if (t.wait_gpu < 0).any() and cluster.gpu_policy != "probe_all":
        raise ValueError("records without wait_gpu outside gpu_policy probe_all: the split "
                         "needs the key each task polled")
    # one name lookup per distinct (node, wait_gpu) pair, not per task (a table over the
    # pairs, not np.unique: no sort of 10^6 tasks)
    width = int(t.wait_gpu.max(initial=0)) + 2
    pair = t.node * width + (t.wait_gpu + 1)
    table = np.full(len(t.node_names) * width, -1, np.int64)
    table[pair] = 0
    for p in np.flatnonzero(table == 0).tolist():
        node, g = t.node_names[p // width], p % width - 1
        table[p] = id_of([lock_key(node, g, shared=shared)] if g >= 0 else
                         [lock_key(node, k, shared=shared) for k in range(gpus_of[node])])
    return table[pair], sets


def _small(codes: np.ndarray, count: int) -> np.ndarray:
    """Codes below `count` in the narrowest integer type: numpy sorts 16-bit integers stably by
    radix, in linear time, and larger ones by merge sort."""
    return codes.astype(np.int16) if count < 2 ** 15 else codes


class _Intervals:
    """Each key's incarnations, sorted by set time (a key's incarnations never overlap: SET NX
    succeeds only on an absent key)."""

    def __init__(self, key: np.ndarray, set_s: np.ndarray, end_s: np.ndarray):
        keep = end_s > set_s  # an empty incarnation holds nothing
        key, set_s, end_s = key[keep], set_s[keep], end_s[keep]
        # by key, then set time (two stable sorts: the log is nearly in time order already)
        order = np.argsort(set_s, kind="stable")
        order = order[np.argsort(_small(key[order], int(key.max(initial=0)) + 1),
                                 kind="stable")]
        self.key, self.S, self.E = key[order], set_s[order], end_s[order]

    def of(self, k: int) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = np.searchsorted(self.key, [k, k + 1]) if k >= 0 else (0, 0)
        return self.S[lo:hi], self.E[lo:hi]

    def all_held(self, codes: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        """Sorted disjoint intervals during which every key in `codes` was held."""
        if len(codes) == 1:
            return self.of(codes[0])
        parts = [self.of(k) for k in codes]
        times = np.concatenate([p for S, E in parts for p in (S, E)])
        step = np.concatenate([np.full(len(p), d) for S, E in parts
                               for p, d in ((S, 1), (E, -1))])
        order = np.lexsort((step, times))  # at one instant ends first: no key counts twice
        times, level = times[order], np.cumsum(step[order])
        on = (level[:-1] == len(codes)) & (times[1:] > times[:-1])
        return times[:-1][on], times[1:][on]


def _prefix(lengths: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Compensated prefix sums: sum(lengths[:k]) = hi[k] + lo[k] to about one ulp of the sum
    (hi is the plain running sum, lo the running sum of its exact rounding errors, Knuth's
    TwoSum), so a difference of two prefixes is good to a few ulps of the difference."""
    hi = np.concatenate(([0.0], np.cumsum(lengths)))
    a, s = hi[:-1], hi[1:]
    bb = s - a
    err = (a - (s - bb)) + (lengths - bb)
    return hi, np.concatenate(([0.0], np.cumsum(err)))


def _held_in(S: np.ndarray, E: np.ndarray, a: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Total overlap of the disjoint sorted intervals [S, E) with each window [a, a + w).

    Computed from offsets to a (E - a, S - a, w), never from a + w, so the result is good to a
    few ulps of w wherever in a long trace the window lies."""
    if not len(S):
        return np.zeros(len(a))
    hi, lo = _prefix(E - S)
    ja = np.searchsorted(S, a, side="right") - 1         # last interval starting at or before a
    jb = np.searchsorted(S, a + w, side="right") - 1      # ... before the window's end
    ca, cb = np.maximum(ja, 0), np.maximum(jb, 0)
    # the interval holding a (if any): overlap from a to its end, cut at the window's end
    first = np.where(ja >= 0, np.clip(E[ca] - a, 0.0, None), 0.0)
    same = jb == ja
    held_same = np.minimum(first, w)
    # several intervals: whole ones strictly between, and the part of the last one in the window
    k0 = ja + 1
    middle = (hi[cb] - hi[k0]) + (lo[cb] - lo[k0])
    last = np.clip(np.minimum(w - (S[cb] - a), E[cb] - S[cb]), 0.0, None)
    return np.where(same, held_same, first + np.maximum(middle, 0.0) + last)
