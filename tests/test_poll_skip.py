"""Failed polls done without events (gpusim.engines.compiled, issue 12): exact, bit for bit.

The compiled engine runs a waiting task's failed polls before its key's change horizon in a
tight loop (`_failed_polls`, `_failed_probe_polls`), with backoff off a binade's worth of polls
at once (`_steady_jump`). Two kinds of tests hold it to the reference:
- the loops against a plain transcription of the reference's polling loop (one add at a time,
  one GET counted at a time), on inputs chosen to hit what could round differently: binade and
  minute boundaries, rounding ties (dyadic round trips and sleeps), large clocks, zero round trip;
- whole runs against the SimPy reference (tests/test_differential.assert_identical) on scenarios
  built for long waits with tiny polls: backoff off and on, event-driven with fallback polling,
  TTL expiry, emergency deletes, crashes, the monitor deleting keys, probe_all and round_robin,
  several nodes sharing keys, and clocks far from zero.

Every assertion is exact equality, so no case can fail by chance.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.cluster import ClusterSpec, build_cluster
from gpusim.config import GpuLockConfig, GpuLockMonitorConfig, LockSettings
from gpusim.engines.compiled import C_GET, CompiledModel, _failed_polls, _failed_probe_polls
from gpusim.model.reference import Model
from gpusim.protocol import BACKOFF_FACTOR
from gpusim.rng import jitter_factor, uniform
from gpusim.traces.format import trace_from_rows

from test_differential import assert_identical

_jitter = jitter_factor


# -- the loops against the reference's polling loop ---------------------------------------------
def reference_polls(c, start, mw, h, horizons, backoff, poll, maxpoll, cur, js, k):
    """The reference's `_poll_phase` for failed attempts only (keys GET in turn), stopping at the
    top of the loop before an attempt with a GET at or after its key's horizon."""
    minutes: Counter[int] = Counter()
    n = 0
    while c - start < mw:
        x, ok = c, True
        for hz in horizons:
            g = x + h
            if not g < hz:
                ok = False
                break
            x = g + h
        if not ok:
            break
        for _ in horizons:
            g = c + h
            minutes[int(g // 60.0)] += 1
            c = g + h
        if backoff:
            cur = min(cur * BACKOFF_FACTOR, maxpoll)
            sleep = cur * _jitter(uniform(js, k))
        else:
            sleep = poll
        k += 1
        c = c + sleep
        n += 1
    return c, cur, k, n, minutes


def compiled_polls(c, start, mw, h, horizons, backoff, poll, maxpoll, cur, js, k):
    MC = np.zeros((2, 9), np.int64)
    if len(horizons) == 1:
        c, cur, k, n, MC, top = _failed_polls(c, start, mw, h, horizons[0], backoff, poll,
                                              maxpoll, cur, js, k, MC)
    else:
        c, cur, k, n, MC, top = _failed_probe_polls(c, start, mw, h, np.array(horizons),
                                                    len(horizons), backoff, poll, maxpoll, cur,
                                                    js, k, MC)
    minutes = Counter({int(r): int(MC[r, C_GET]) for r in np.flatnonzero(MC[:, C_GET])})
    assert top == max(minutes, default=-1)
    assert MC[:, 1:].sum() == 0  # GETs only
    return c, cur, k, n, minutes


# clocks where floats change spacing (binade edges), where minutes change, large and small ones
clocks = st.one_of(
    st.floats(0.0, 7 * 86400.0),
    st.integers(-4, 19).map(lambda e: 2.0 ** e).flatmap(
        lambda b: st.floats(0.0, 3.0).map(lambda d: b - d if b - d > 0 else b)),
    st.integers(1, 10_080).map(lambda m: 60.0 * m).flatmap(
        lambda b: st.floats(0.0, 2.0).map(lambda d: max(b - d, 0.0))),
)
# round trips and sleeps: dyadic ones (ties against some binade's spacing) and decimal ones
halves = st.integers(1, 60).map(lambda e: 2.0 ** -e)
round_trips = st.one_of(st.just(0.0), st.sampled_from([0.0001, 0.0025, 0.00015]), halves,
                        st.floats(0.0, 0.01))
sleeps = st.one_of(st.sampled_from([0.001, 0.05, 0.25, 0.5, 2.0, 0.0625, 0.1]),
                   st.floats(0.001, 3.0))


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(clocks, st.floats(0.0, 60.0), round_trips, sleeps, st.booleans(),
       st.sampled_from([1.0, 2.0, 10.0]), st.integers(1, 3), st.data())
def test_skip_loops_are_the_reference_loop(c, back, h, poll, backoff, grow, nkeys, data):
    # a budget of about 20,000 polls (the transcription runs in Python)
    mw = data.draw(st.floats(0.0, min(400.0, 20_000 * poll)))
    if c > 0 and data.draw(st.booleans()):  # a round trip that ties with c's float spacing
        h = math.ulp(c) * data.draw(st.sampled_from([0.5, 1.5, 2.5, 0.25]))
    horizons = [data.draw(st.one_of(st.just(math.inf), st.just(-math.inf), st.just(c + h),
                                    st.floats(c, c + 500.0))) for _ in range(nkeys)]
    start = max(c - back, 0.0)
    args = (c, start, mw, h, horizons, backoff, poll, poll * grow, poll,
            np.uint64(data.draw(st.integers(0, 2**64 - 1))), data.draw(st.integers(0, 9)))
    assert compiled_polls(*args) == reference_polls(*args)


@pytest.mark.parametrize("c, h, poll", [
    (131_000.0, 2.0 ** -37, 0.05),    # h is half an ulp of [2**16, 2**17): ties, no jump
    (65_530.0, 0.0001, 0.05),         # crosses 2**16 mid-run
    (604_700.0, 0.0001, 0.001),       # a week in: spacing 1.2e-10, 60,000 polls a minute
    (3.0, 0.0, 0.05),                 # zero round trip, low binades
    (0.0, 0.0001, 0.001),             # from the very first instant
    (10_000.0, 2.0 ** -40, 2.0 ** -11),  # dyadic both
])
def test_long_steady_runs_are_exact(c, h, poll):
    """Long backoff-off runs (tens of thousands of polls, many minutes) across the edges."""
    args = (c, c, min(600.0, 40_000 * poll), h, [c + 500.0], False, poll, poll, poll,
            np.uint64(7), 0)
    assert compiled_polls(*args) == reference_polls(*args)


# -- whole runs against the reference ------------------------------------------------------------
def run_both(rows, spec, cfg, seed, monitor=None):
    trace, cluster = trace_from_rows(rows), build_cluster(spec)
    settings_ = [LockSettings(gpu_lock=cfg, **({"gpu_lock_monitor": monitor} if monitor
                                               else {}))] * len(cluster.nodes)
    ref = Model(trace, cluster, settings_, seed=seed).run()
    fast_model = CompiledModel(trace, cluster, settings_, seed=seed)
    fast = fast_model.run()
    assert_identical(ref, fast, cluster, holds_in_order=True)
    return ref, fast_model


@st.composite
def long_wait_cases(draw):
    """A few GPUs crowded by tasks that wait long with tiny polls: every kind of key change
    (release, TTL expiry, emergency and monitor deletes, crashes) lands inside skip runs."""
    nodes, gpus = draw(st.integers(1, 2)), draw(st.integers(1, 2))
    spec = ClusterSpec(
        nodes=nodes, gpus_per_node=gpus, workers_per_service=draw(st.integers(2, 6)),
        gpu_policy=draw(st.sampled_from(["pinned", "round_robin", "probe_all"])),
        redis={"rtt_s": draw(st.sampled_from([0.0, 0.0002, 0.003])),
               "client_subscribe_delay_s": draw(st.sampled_from([0.0, 0.0005])),
               "pubsub_wakeup_jitter_s": draw(st.sampled_from([0.0, 0.0005]))},
        options={"unique_owner_token": draw(st.booleans()),
                 "emergency_delete": draw(st.booleans()), "monitor": draw(st.booleans()),
                 "shared_keys_across_nodes": draw(st.booleans())})
    # the crowd starts at 0 or far out (a large clock: coarse float spacing) behind a first task
    offset = draw(st.sampled_from([0.0, 131_040.0, 604_000.0]))
    rows = [{"task_type": "ocr", "arrival_s": 0.0, "duration_s": 1.0}]
    for _ in range(draw(st.integers(4, 12))):
        row = {"task_type": draw(st.sampled_from(["ocr", "ffmpeg", "whisper"])),
               "arrival_s": offset + draw(st.floats(0.0, 10.0)),
               "duration_s": draw(st.floats(3.0, 40.0)),
               "crashed": draw(st.integers(0, 5)) == 0}
        if draw(st.booleans()):
            row["node"], row["gpu"] = f"node{draw(st.integers(0, nodes - 1))}", 0
        rows.append(row)
    poll = draw(st.sampled_from([0.01, 0.02, 0.05]))
    cfg = GpuLockConfig(poll_interval=poll, max_poll_interval=poll * draw(st.sampled_from([1, 2])),
                        exponential_backoff=draw(st.booleans()),
                        use_event_driven=draw(st.booleans()),
                        max_wait_time=draw(st.sampled_from([20.0, 60.0])),
                        lock_timeout=draw(st.sampled_from([3, 15, 600])),
                        fallback_timeout=draw(st.sampled_from([0.5, 5.0])))
    monitor = GpuLockMonitorConfig(
        monitor_interval=draw(st.sampled_from([1.0, 3.0])),
        timeout_levels={"warning": 2.0, "soft_timeout": 4.0,
                        "hard_timeout": draw(st.sampled_from([8.0, 30.0]))},
        heartbeat={"timeout": 2.0})
    return rows, spec, cfg, draw(st.integers(0, 2**32 - 1)), monitor


# 15 cases a run (each runs the SimPy reference poll by poll: ~1.5 s a case); hypothesis's
# database replays any past failure first.
@settings(max_examples=15, deadline=None, suppress_health_check=list(HealthCheck))
@given(long_wait_cases())
def test_long_waits_with_tiny_polls_match_the_reference(case):
    rows, spec, cfg, seed, monitor = case
    run_both(rows, spec, cfg, seed, monitor)


@pytest.mark.parametrize("monitor", [False, True], ids=["", "monitor"])
@pytest.mark.parametrize("event_driven", [False, True], ids=["polling", "event-driven"])
@pytest.mark.parametrize("backoff", [False, True], ids=["steady", "backoff"])
def test_skips_happen_and_match_on_a_crowded_gpu(backoff, event_driven, monitor):
    """Twelve tasks on one GPU, polls every 10 ms for up to 5 minutes, a TTL shorter than some
    holds, crashes, emergency deletes, and (monitor) a monitor deleting keys older than 8 s:
    identical to the reference, and the engine processes far fewer events than there are polls
    (the polls really are skipped)."""
    rows = [{"task_type": ("ocr", "ffmpeg", "whisper")[i % 3], "arrival_s": 0.5 * i,
             "duration_s": 5.0 + 7.0 * (i % 4), "crashed": i % 5 == 3} for i in range(12)]
    spec = ClusterSpec(nodes=1, gpus_per_node=1, workers_per_service=12,
                       options={"emergency_delete": True, "monitor": monitor})
    cfg = GpuLockConfig(poll_interval=0.01, max_poll_interval=0.01, max_wait_time=300,
                        lock_timeout=20, exponential_backoff=backoff,
                        use_event_driven=event_driven, fallback_timeout=5.0)
    sweep = GpuLockMonitorConfig(monitor_interval=1.0, heartbeat={"timeout": 2.0},
                                 timeout_levels={"warning": 2.0, "soft_timeout": 4.0,
                                                 "hard_timeout": 8.0})
    ref, fast_model = run_both(rows, spec, cfg, seed=11, monitor=sweep)
    polls = sum(r.attempts for r in ref.records)
    assert polls > 10_000 and fast_model.events_processed * 20 < polls
    if monitor:
        assert any(h.end_reason == "monitor_deleted" for h in ref.holds)
