"""`gpusim rollback simulate`: how long after a rollback the waits and timeouts are back to
normal (GPU_LOCK_CONFIG_004 wants it within 5 minutes), and why not when they are not.

Two runs of the same trace with the same seeds (common random numbers): the switched run
(config B until T, then G for every task that starts acquiring from T on: YiVideo reads
gpu_lock per task, so tasks already waiting at T keep B) and the all-good run (G from the
start), whose waits and timeouts are the baseline.

What is compared is what a monitor sees: each task's wait counted in the window in which it
ends (it acquires or gives up), measured from its arrival (the Celery worker-slot wait plus
the lock wait; the lock wait alone when a worker slot is free). A backlog built up under B
then shows as long waits ending after T. Windows of `window_s` start at T.

Why a test and not "at most the baseline plus a margin": a busy minute holds a handful of
ending waits (3.6 on the bundled 2-node day), a wait from arrival spans seconds to half an
hour, and two runs that started T from different queues end different tasks in the same
minute. A fixed margin (5 points of timeout rate is less than one timeout in such a minute)
then calls chance differences "outside", somewhere in every busy hour, and "the last minute
outside the band" measured the end of the busy period, not the rollback. So:

* Windows are judged in blocks: a window joins the next until both runs have `min_tasks`
  ending waits (pooled over replications); a short tail joins the last block.
* A block is outside the band when the switched run is worse than the all-good run by more
  than the tolerance WITH confidence: the mean wait by more than max(wait_abs_tol_s,
  wait_rel_tol x the baseline) by a one-sided Welch t test on the tasks' waits, or the
  timeout rate by more than timeout_abs_tol by a one-sided two-proportion z test (pooled
  variance). Better than the baseline is never outside.
* Recovered: at the start of the first window, once the backlog has drained (below), from
  which no window is outside for the next `settle_s` (10 minutes; to the end of the run if
  that is sooner): a sustained breach, not one chance minute, keeps the run unrecovered.
  The tests in a settle period share the family error `alpha` (Bonferroni: each at alpha / windows per settle period), so a switched
  run that behaves like the baseline is called recovered at once with probability about
  1 - alpha when the tasks are independent. They are not quite (waits ending in the same
  minute of one replication share a queue, which makes the test's error too small): on the
  bundled day, switched at 11, 13, 14 or 16 h, 3 to 17 of 482 to 782 minutes (0.6% to 2.8%)
  are called outside where 0.5% were expected, in stretches of at most 2 minutes, and the
  settle rule absorbs them.
* The window must start while tasks still arrive: a backlog that clears after the last
  arrival is drained by the trace's end, not recovered from.

The drain time is how long the backlog (tasks that have arrived and neither acquired nor given
up) of the switched run takes to come down to the all-good run's at the same instant: the
mean over replications of the paired excess within half a task plus its one-sided 95%
allowance for chance (Student t over the replications' excesses). Recovery is not called
before the drain: a few tasks still waiting under B end later with waits far above the rest,
which a block's test of means can take for a heavy tail. The summary blames the queue only
when the switched backlog at T exceeded the all-good run's, and keys held under B only when
one of them was still held (until its release or B's lock_timeout) when the recovery came.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Sequence

import numpy as np

from gpusim import Cluster, LockSettings, Outcome, Trace, config_digest

from advisor.rollout.rollback import SPEC_RECOVERY_S

_TIMEOUT_CODE = tuple(Outcome).index(Outcome.TIMEOUT)  # TaskTable's outcome code


@dataclass(frozen=True)
class RecoveryOptions:
    window_s: float = 60.0          # a monitor's minute
    min_tasks: int = 5              # ending waits per run a judged block needs (all replications)
    settle_s: float = 600.0         # in band this long after the recovery: not one chance minute
    alpha: float = 0.05             # chance error of one settle period's tests together
    wait_abs_tol_s: float = 1.0     # waits within a second of the baseline are the baseline
    wait_rel_tol: float = 0.10
    timeout_abs_tol: float = 0.05   # the spec's timeout gate is 5%: a margin of that size
    drain_tol_tasks: float = 0.5    # "drained": less than one task more than the baseline
    target_s: float = SPEC_RECOVERY_S
    seed: int = 0
    replications: int = 3

    def check(self) -> None:
        from gpusim import InputError
        for name in ("window_s", "settle_s", "wait_abs_tol_s", "wait_rel_tol",
                     "timeout_abs_tol", "drain_tol_tasks", "target_s"):
            v = getattr(self, name)
            least = 1.0 if name == "window_s" else 0.0
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= least):
                raise InputError(f"must be a finite number >= {least:g}, got {v!r}", field=name)
        if not (isinstance(self.min_tasks, int) and self.min_tasks >= 1):
            raise InputError(f"must be an integer >= 1, got {self.min_tasks!r}",
                             field="min_tasks")
        if not (isinstance(self.alpha, float) and 0.0 < self.alpha < 1.0):
            raise InputError(f"must be between 0 and 1, got {self.alpha!r}", field="alpha")

    @property
    def settle_windows(self) -> int:
        return max(1, math.ceil(self.settle_s / self.window_s - 1e-9))


@dataclass(frozen=True)
class RunTimes:
    """One replication's per-task times, as arrays (task order)."""
    arrival_s: np.ndarray
    slot_s: np.ndarray       # started acquiring
    end_wait_s: np.ndarray   # acquired or gave up
    timeout: np.ndarray      # bool: gave up
    acquired_s: np.ndarray   # NaN: never acquired
    gpu_end_s: np.ndarray    # NaN: never acquired

    @classmethod
    def of(cls, records: Any) -> "RunTimes":
        """From a replication's records: a TaskTable (columns) or TaskRecord objects."""
        cols = getattr(records, "cols", None)
        if cols is None:
            rs = list(records)
            nan = float("nan")
            cols = {"arrival_s": [r.arrival_s for r in rs], "slot_s": [r.slot_s for r in rs],
                    "wait_s": [r.wait_s for r in rs],
                    "outcome": [tuple(Outcome).index(r.outcome) for r in rs],
                    "acquired_s": [nan if r.acquired_s is None else r.acquired_s for r in rs],
                    "gpu_end_s": [nan if r.gpu_end_s is None else r.gpu_end_s for r in rs]}
        slot = np.asarray(cols["slot_s"], dtype=float)
        return cls(np.asarray(cols["arrival_s"], dtype=float), slot,
                   slot + np.asarray(cols["wait_s"], dtype=float),
                   np.asarray(cols["outcome"]) == _TIMEOUT_CODE,
                   np.asarray(cols["acquired_s"], dtype=float),
                   np.asarray(cols["gpu_end_s"], dtype=float))

    def backlog(self, t: np.ndarray) -> np.ndarray:
        """Tasks arrived and still waiting (for a slot or the lock) at each time t."""
        arrived = np.searchsorted(np.sort(self.arrival_s), t, side="right")
        done = np.searchsorted(np.sort(self.end_wait_s), t, side="right")
        return arrived - done

    def key_free_s(self, ttl_s: float) -> np.ndarray:
        """When each acquired task's key went: released at the end of its hold, or expired
        after the TTL if the hold was longer (NaN: never acquired)."""
        return np.minimum(self.gpu_end_s, self.acquired_s + ttl_s)


# -- the simulation (one function: everything else is analysis of its records) -----------------


def simulate_pair(trace: Trace, bad: LockSettings, good: LockSettings, at_s: float,
                  cluster: Cluster | None, opts: RecoveryOptions
                  ) -> tuple[list[RunTimes], list[RunTimes]]:
    """The switched run (B, then G from at_s on every node) and the all-good run, on the same
    seeds: replication r of both draws the same random numbers."""
    import gpusim
    change = gpusim.ConfigChange(at_s=at_s, settings=good, source=good.source)
    switched = gpusim.simulate(trace, bad, cluster, seed=opts.seed,
                               replications=opts.replications, changes=[change])
    base = gpusim.simulate(trace, good, cluster, seed=opts.seed,
                           replications=opts.replications)
    return ([RunTimes.of(r.records) for r in switched.replications],
            [RunTimes.of(r.records) for r in base.replications])


# -- windows, blocks and the band --------------------------------------------------------------


def window_sums(runs: Sequence[RunTimes], edges: np.ndarray) -> np.ndarray:
    """Per window, pooled over replications: [ending waits, sum of waits from arrival, sum of
    their squares, timeouts] (shape 4 x windows)."""
    m = len(edges) - 1
    sums = np.zeros((4, m))
    for r in runs:
        k = np.searchsorted(edges, r.end_wait_s, side="right") - 1
        ok = (k >= 0) & (k < m)
        w = (r.end_wait_s - r.arrival_s)[ok]
        for i, weights in enumerate((None, w, w * w, r.timeout[ok].astype(float))):
            sums[i] += np.bincount(k[ok], weights=weights, minlength=m)
    return sums


def blocks(n_switched: np.ndarray, n_good: np.ndarray, min_tasks: int) -> list[tuple[int, int]]:
    """[first, last + 1) window ranges judged together: each holds min_tasks ending waits of
    both runs; a tail with fewer joins the last block (one block if no range has enough)."""
    out: list[tuple[int, int]] = []
    start, a, b = 0, 0.0, 0.0
    for j in range(len(n_switched)):
        a, b = a + n_switched[j], b + n_good[j]
        if a >= min_tasks and b >= min_tasks:
            out.append((start, j + 1))
            start, a, b = j + 1, 0.0, 0.0
    if start < len(n_switched):
        if out:
            out[-1] = (out[-1][0], len(n_switched))
        else:
            out.append((start, len(n_switched)))
    return out


def _mean_var(s: np.ndarray) -> tuple[float, float, float]:
    """(n, mean, sample variance) of pooled sums; 0 variance below two tasks."""
    n = float(s[0])
    if n == 0:
        return 0.0, 0.0, 0.0
    mean = s[1] / n
    var = max(s[2] / n - mean * mean, 0.0) * n / (n - 1) if n >= 2 else 0.0
    return n, float(mean), float(var)


def judge_block(sw: np.ndarray, gd: np.ndarray, level: float, opts: RecoveryOptions
                ) -> dict[str, Any]:
    """One block: the band's upper edges (baseline + tolerance + the one-sided critical value
    times the difference's standard error, at `level`) and whether the switched run is in it.
    A baseline with no ending waits is no waiting at all: nothing waits in the all-good run."""
    from scipy.special import ndtri, stdtrit
    n1, m1, v1 = _mean_var(sw)
    n2, m2, v2 = _mean_var(gd)
    if n1 == 0:
        return {"inside": True, "band_wait_max_s": None, "band_timeout_rate_max": None}
    a, b = v1 / n1, (v2 / n2 if n2 else 0.0)
    se = math.sqrt(a + b)
    if se > 0:   # Welch-Satterthwaite degrees of freedom
        df = (a + b) ** 2 / ((a * a / (n1 - 1) if a else 0.0) +
                             (b * b / (n2 - 1) if b else 0.0))
        wait_max = m2 + max(opts.wait_abs_tol_s, opts.wait_rel_tol * m2) + \
            float(stdtrit(df, 1 - level)) * se
    else:
        wait_max = m2 + max(opts.wait_abs_tol_s, opts.wait_rel_tol * m2)
    p1, p2 = sw[3] / n1, (gd[3] / n2 if n2 else 0.0)
    pooled = (sw[3] + gd[3]) / (n1 + n2)
    se_p = math.sqrt(pooled * (1 - pooled) * (1 / n1 + (1 / n2 if n2 else 0.0)))
    rate_max = p2 + opts.timeout_abs_tol + float(ndtri(1 - level)) * se_p
    return {"inside": bool(m1 <= wait_max and p1 <= rate_max),
            "band_wait_max_s": wait_max, "band_timeout_rate_max": float(rate_max)}


def _edges(switched: Sequence[RunTimes], good: Sequence[RunTimes], at_s: float,
           window_s: float) -> np.ndarray:
    last = max(float(np.nanmax(r.end_wait_s)) if len(r.end_wait_s) else at_s
               for r in (*switched, *good))
    count = max(1, int(math.floor(max(last - at_s, 0.0) / window_s)) + 1)
    return at_s + window_s * np.arange(count + 1, dtype=float)


def recovery_index(inside: np.ndarray, starts_s: np.ndarray, last_arrival_s: float,
                   settle: int, first: int = 0) -> int | None:
    """The first window from `first` on that starts while tasks still arrive (window 0
    always may) and from which `settle` windows (or all that are left) are inside the band;
    None if there is none."""
    run = 0   # windows inside from j on, counted from the end
    runs = np.zeros(len(inside), dtype=int)
    for j in range(len(inside) - 1, -1, -1):
        run = run + 1 if inside[j] else 0
        runs[j] = run
    for j in range(first, len(inside)):
        if j > 0 and starts_s[j] > last_arrival_s:
            return None
        if runs[j] >= min(settle, len(inside) - j):
            return j
    return None


# -- the verdict -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Recovery:
    at_s: float
    recovery_s: float | None          # None: no settled stretch began while tasks arrived
    within_target: bool
    target_s: float
    settle_s: float                   # how long the run stayed in band after recovery_s
    last_outside_end_s: float         # end of the last window outside the band (0: none)
    outside_after_recovery: int       # windows outside the band after the settled stretch
    longest_outside_after_s: float    # the longest run of them, seconds
    last_arrival_s: float             # the trace's last arrival, seconds after T
    drain_s: float | None             # None: the backlog never came down to the baseline's
    backlog_at_switch: float          # switched run, mean over replications
    baseline_backlog_at_switch: float
    peak_backlog_after_switch: float
    waiting_keep_bad: float           # tasks acquiring at T: they keep B
    holding_at_switch: float          # keys held at T, set under B (B's lock_timeout)
    keys_free_s: float                # when the last key held at T went, seconds after T
    horizon_s: float                  # last wait end, seconds after T
    windows: list[dict[str, Any]]
    summary: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _drain(switched: Sequence[RunTimes], good: Sequence[RunTimes], at_s: float,
           end_s: float, tol: float) -> tuple[float | None, float, float, float]:
    """(drain_s, backlog at T, the baseline's at T, peak after T), means over replications."""
    step = max(1.0, (end_s - at_s) / 200_000)
    t = at_s + step * np.arange(int(math.ceil(max(end_s - at_s, 0.0) / step)) + 1)
    sw = np.array([r.backlog(t) for r in switched], dtype=float)
    gd = np.array([r.backlog(t) for r in good], dtype=float)
    # Replication r of both runs shares its random numbers: the paired excess's spread over
    # replications is what chance alone makes of it (a queue that starts T a few tasks
    # longer by chance is not one to drain). One-sided 95%; no allowance with one replication.
    excess = sw - gd
    allow = 0.0
    if len(excess) >= 2:
        from scipy.special import stdtrit
        allow = float(stdtrit(len(excess) - 1, 0.95)) * excess.std(axis=0, ddof=1) / \
            math.sqrt(len(excess))
    ok = np.flatnonzero(excess.mean(axis=0) <= tol + allow)
    sw, gd = sw.mean(axis=0), gd.mean(axis=0)
    drain = float(t[ok[0]] - at_s) if len(ok) else None
    return drain, float(sw[0]), float(gd[0]), float(sw.max())


def _at_switch(switched: Sequence[RunTimes], at_s: float, ttl_s: float
               ) -> tuple[float, float, float]:
    """Tasks acquiring at T (they keep B), keys held at T, and when the last of those keys
    went (seconds after T; means over replications)."""
    waiting, holding, free = [], [], []
    for r in switched:
        gone = r.key_free_s(ttl_s)
        held = (r.acquired_s < at_s) & (gone > at_s)
        waiting.append(np.sum((r.slot_s < at_s) & (r.end_wait_s > at_s)))
        holding.append(np.sum(held))
        free.append(float(gone[held].max()) - at_s if held.any() else 0.0)
    return float(np.mean(waiting)), float(np.mean(holding)), float(np.mean(free))


def _windows(edges: np.ndarray, sw: np.ndarray, gd: np.ndarray, reps: tuple[int, int],
             judged: list[tuple[tuple[int, int], dict[str, Any]]],
             at_s: float) -> list[dict[str, Any]]:
    """Each window's figures (tasks per replication, pooled mean wait and timeout rate) with
    the verdict and band of the block that judged it."""
    def num(x: float) -> float | None:
        return None if math.isnan(x) else round(float(x), 6)

    def run(s: np.ndarray, j: int, r: int) -> dict[str, float | None]:
        n = s[0, j]
        return {"tasks": num(n / r), "wait_mean_s": num(s[1, j] / n if n else math.nan),
                "timeout_rate": num(s[3, j] / n if n else math.nan)}
    out = []
    for (lo, hi), v in judged:
        for j in range(lo, hi):
            out.append({"start_s": round(float(edges[j] - at_s), 6),
                        "switched": run(sw, j, reps[0]), "baseline": run(gd, j, reps[1]),
                        "block_s": [round(float(edges[lo] - at_s), 6),
                                    round(float(edges[hi] - at_s), 6)],
                        "band_wait_max_s": None if v["band_wait_max_s"] is None
                        else num(v["band_wait_max_s"]),
                        "band_timeout_rate_max": None if v["band_timeout_rate_max"] is None
                        else num(v["band_timeout_rate_max"]),
                        "inside": v["inside"]})
    return out


def _longest_run(flags: np.ndarray) -> int:
    best = run = 0
    for f in flags:
        run = run + 1 if f else 0
        best = max(best, run)
    return best


def analyse(switched: Sequence[RunTimes], good: Sequence[RunTimes], at_s: float,
            opts: RecoveryOptions, bad_lock_timeout_s: float = math.inf) -> Recovery:
    """Recovery and drain times of the switched runs against the all-good runs."""
    edges = _edges(switched, good, at_s, opts.window_s)
    sw, gd = window_sums(switched, edges), window_sums(good, edges)
    level = opts.alpha / opts.settle_windows   # Bonferroni over a settle period's windows
    judged = [((lo, hi), judge_block(sw[:, lo:hi].sum(axis=1), gd[:, lo:hi].sum(axis=1),
                                     level, opts))
              for lo, hi in blocks(sw[0], gd[0], opts.min_tasks)]
    inside = np.array([v["inside"] for (lo, hi), v in judged for _ in range(lo, hi)])
    last_arrival = max(float(r.arrival_s.max()) for r in switched) - at_s
    drain, backlog, base_backlog, peak = _drain(switched, good, at_s, float(edges[-1]),
                                                opts.drain_tol_tasks)
    # Not before the queue has drained: a few tasks still waiting under B end later with
    # waits far above the rest, which a block's test of means can take for a heavy tail.
    j = None if drain is None else recovery_index(
        inside, edges[:-1] - at_s, last_arrival, opts.settle_windows,
        first=math.ceil(drain / opts.window_s - 1e-9))
    recovery = None if j is None else float(edges[j] - at_s)
    outside = np.flatnonzero(~inside)
    waiting, holding, keys_free = _at_switch(switched, at_s, bad_lock_timeout_s)
    rec = Recovery(at_s=at_s, recovery_s=recovery,
                   within_target=recovery is not None and recovery <= opts.target_s,
                   target_s=opts.target_s, settle_s=opts.settle_s,
                   last_outside_end_s=float(edges[outside[-1] + 1] - at_s) if len(outside)
                   else 0.0,
                   outside_after_recovery=0 if j is None else int(np.sum(outside >= j)),
                   longest_outside_after_s=0.0 if j is None else
                   opts.window_s * _longest_run(~inside[j:]),
                   last_arrival_s=last_arrival, drain_s=drain, backlog_at_switch=backlog,
                   baseline_backlog_at_switch=base_backlog, peak_backlog_after_switch=peak,
                   waiting_keep_bad=waiting, holding_at_switch=holding, keys_free_s=keys_free,
                   horizon_s=float(edges[-1] - at_s),
                   windows=_windows(edges, sw, gd, (len(switched), len(good)), judged, at_s),
                   summary=[])
    return Recovery(**{**asdict(rec), "summary": summary(rec, opts.window_s)})


def _t(s: float | None) -> str:
    return "never" if s is None else f"{s:,.0f} s"


def _head(r: Recovery) -> str:
    if r.recovery_s is None:
        return (f"NOT RECOVERED while tasks kept arriving: no {_t(r.settle_s)} inside the "
                f"baseline band with the queue drained began before the trace's last arrival, "
                f"{_t(r.last_arrival_s)} after the switch (the backlog drained: {_t(r.drain_s)};"
                f" the last window outside the band ends {_t(r.last_outside_end_s)} after it)")
    within = "within" if r.within_target else "NOT within"
    return (f"RECOVERED in {_t(r.recovery_s)}: {within} the spec's {r.target_s:.0f} s "
            f"(GPU_LOCK_CONFIG_004: healthy within 5 minutes); inside the band for the "
            f"{_t(min(r.settle_s, r.horizon_s - r.recovery_s))} after it"
            + (f"; {r.outside_after_recovery} later window(s) outside it, the longest stretch "
               f"{_t(r.longest_outside_after_s)}" if r.outside_after_recovery else ""))


def _cause(r: Recovery, window_s: float) -> str:
    """Why it took longer than the spec's 5 minutes: the queue only if the switched run had
    more waiting than the all-good run; keys only if one set under B was still there."""
    queued = r.backlog_at_switch > r.baseline_backlog_at_switch + 0.5 and (
        r.drain_s is None or r.drain_s > r.target_s)
    until = r.last_arrival_s if r.recovery_s is None else r.recovery_s
    keys = r.holding_at_switch > 0 and r.keys_free_s >= until - window_s
    if queued:
        return (f"the queue had to drain: {r.backlog_at_switch:.1f} tasks were waiting at the "
                f"switch (the good config alone has {r.baseline_backlog_at_switch:.1f}; peak "
                f"after the switch {r.peak_backlog_after_switch:.1f}) and the backlog took "
                f"{_t(r.drain_s)} to come down to the good config's level: the config changes "
                f"at once, the queue built up under the bad config does not")
    if keys:
        return (f"keys set under the bad config held the GPUs: {r.holding_at_switch:.1f} were "
                f"held at the switch and the last went {_t(r.keys_free_s)} after it (released, "
                f"or expired after the bad config's lock_timeout)")
    return (f"neither the queue (backlog at the switch {r.backlog_at_switch:.1f}, the good "
            f"config alone {r.baseline_backlog_at_switch:.1f}; drained in {_t(r.drain_s)}) "
            f"nor the keys held at the switch (the last went {_t(r.keys_free_s)} after it) "
            f"explains it: see the windows outside the band in the JSON, and try more "
            f"--replications")


def summary(r: Recovery, window_s: float = 60.0) -> list[str]:
    """The sentences: the verdict against the spec's 5 minutes, and why."""
    lines = [_head(r)]
    if r.recovery_s is None or not r.within_target:
        lines.append(_cause(r, window_s))
    else:
        lines.append(f"backlog at the switch {r.backlog_at_switch:.1f} tasks (good config alone: "
                     f"{r.baseline_backlog_at_switch:.1f}); drained in {_t(r.drain_s)}")
    lines.append(f"{r.waiting_keep_bad:.1f} tasks were acquiring at the switch and keep the bad "
                 f"config (YiVideo reads gpu_lock when a task starts acquiring); "
                 f"{r.holding_at_switch:.1f} keys were held, set with the bad config's TTL")
    return lines


def rollback_report(trace: Trace, bad: LockSettings, good: LockSettings, at_s: float,
                    cluster: Cluster | None, opts: RecoveryOptions) -> dict[str, Any]:
    """Simulate the rollback and judge it: the JSON of `gpusim rollback simulate`."""
    opts.check()
    switched, base = simulate_pair(trace, bad, good, at_s, cluster, opts)
    rec = analyse(switched, base, at_s, opts, float(bad.gpu_lock.lock_timeout))
    return {"schema": "gpusim.rollback-simulation/2",
            "inputs": {"trace": {"source": trace.source, "tasks": len(trace)},
                       "bad": {"source": bad.source, "config_digest": config_digest(bad),
                               "gpu_lock": bad.gpu_lock.model_dump()},
                       "good": {"source": good.source, "config_digest": config_digest(good),
                               "gpu_lock": good.gpu_lock.model_dump()},
                       "options": asdict(opts)},
            **rec.to_json()}
