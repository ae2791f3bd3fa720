"""The real lock client against a real redis-server: protocol, bugs included."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from gpusim.protocol import channel_for
from gpusim.real.lock_client import LockClient, LockParams, ttl_args

pytestmark = pytest.mark.redis

FAST = dict(poll_interval=0.005, max_poll_interval=0.02, max_wait_time=5.0, lock_timeout=10.0,
            fallback_timeout=1.0)


@pytest.fixture
def key():
    return f"gpu_lock:test:{uuid.uuid4().hex[:8]}"


def cmdstats(srv) -> dict[str, int]:
    c = srv.client()
    try:
        return {k.removeprefix("cmdstat_").upper(): v["calls"]
                for k, v in c.info("commandstats").items()}
    finally:
        c.close()


def test_ttl_args_whole_seconds_use_ex_fractions_use_px():
    assert ttl_args(3600) == {"ex": 3600}
    assert ttl_args(36.0) == {"ex": 36}
    assert ttl_args(0.25) == {"px": 250}
    assert ttl_args(0.0001) == {"px": 1}
    with pytest.raises(ValueError):
        ttl_args(0)


def test_owner_value_is_per_type_unless_unique(redis_server):
    with LockClient(redis_server.url, LockParams(use_event_driven=False)) as c:
        assert c.owner_value("paddleocr") == "locked_by_paddleocr"
    with LockClient(redis_server.url, LockParams(use_event_driven=False),
                    unique_owner_token=True) as c:
        assert c.owner_value("paddleocr", "t7") == "locked_by_paddleocr#t7"
        with pytest.raises(ValueError):
            c.owner_value("paddleocr")


@pytest.mark.parametrize("event", [False, True], ids=["polling", "event"])
def test_mutual_exclusion(redis_server, key, event):
    params = LockParams(**FAST, use_event_driven=event)
    holding = []
    overlaps = []
    results = []
    guard = threading.Lock()

    def worker(i):
        with LockClient(redis_server.url, params, unique_owner_token=True) as c:
            r = c.acquire(key, "t", token=str(i))
            if r.acquired:
                with guard:
                    if holding:
                        overlaps.append((i, list(holding)))
                    holding.append(i)
                time.sleep(0.01)
                with guard:
                    holding.remove(i)
                results.append((r, c.release(key, "t", token=str(i))))

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert overlaps == []
    assert len(results) == 8
    assert all(rel == "released" for _, rel in results)
    mechs = {r.mechanism for r, _ in results}
    if event:
        assert "event" in mechs or "polling" in mechs
        assert mechs <= {"immediate", "event", "polling"}
    else:
        assert mechs <= {"immediate", "polling"} and "polling" in mechs


def _fake_time(start: float = 0.0):
    """A clock that moves only when the client sleeps: (now, sleeps asked for, sleep)."""
    now: list[float] = [start]
    slept: list[float] = []

    def sleep(s: float) -> None:
        slept.append(s)
        now[0] += s

    return now, slept, sleep


def test_backoff_sequence_and_loop_test_with_known_uniforms(redis_server, key):
    """x1.5 before the first sleep, jitter 0.8+0.4u, loop test before each attempt."""
    redis_server.client().set(key, "locked_by_other")
    now, slept, sleep = _fake_time()
    params = LockParams(poll_interval=1.0, max_poll_interval=5.0, max_wait_time=10.0,
                        use_event_driven=False, lock_timeout=60)
    with LockClient(redis_server.url, params, uniforms=iter([0.5] * 10),
                    clock=lambda: now[0], sleep=sleep) as c:
        r = c.acquire(key, "mine")
    assert slept == pytest.approx([1.5, 2.25, 3.375, 5.0])
    # attempts at 0, 1.5, 3.75, 7.125; the next test (12.125 >= 10) ends the loop
    assert r.attempts == 4 and r.sets == 0 and not r.acquired and r.mechanism is None
    assert r.wait == pytest.approx(12.125)  # can exceed max_wait_time by one sleep
    # uniforms map to factors 0.8 .. 1.2
    slept.clear()
    now[0] = 0.0
    with LockClient(redis_server.url, params, uniforms=iter([0.0, 0.999999, 0.0, 0.0]),
                    clock=lambda: now[0], sleep=sleep) as c:
        c.acquire(key, "mine")
    assert slept[:2] == pytest.approx([1.5 * 0.8, 2.25 * 1.2], rel=1e-5)


def test_no_backoff_sleeps_poll_interval(redis_server, key):
    redis_server.client().set(key, "locked_by_other")
    now, slept, sleep = _fake_time()
    params = LockParams(poll_interval=2.0, max_wait_time=5.0, exponential_backoff=False,
                        use_event_driven=False)
    with LockClient(redis_server.url, params, clock=lambda: now[0], sleep=sleep) as c:
        r = c.acquire(key, "mine")
    assert slept == [2.0, 2.0, 2.0] and r.attempts == 3


def _slow_gets(c: LockClient, now: list[float], cost: float, at: list[float]) -> None:
    """Each GET records when it started and then costs ``cost`` seconds of the fake clock
    (a client whose commands take longer than the model's round trip)."""
    real_get = c.redis.get

    def get(key):
        at.append(now[0])
        now[0] += cost
        return real_get(key)

    c.redis.get = get


@pytest.mark.parametrize("paced", [True, False], ids=["paced", "yivideo-loop"])
def test_paced_polls_keep_the_model_schedule_whatever_a_get_costs(redis_server, key, paced):
    """Paced: try k+1 is due at try k's due time + pace per round trip + the drawn sleep, so a
    GET that costs 3 ms instead of the paced 1 ms shifts nothing; YiVideo's own loop sleeps
    after the reply, so each poll drifts by the GET's cost (the model charges one rtt)."""
    redis_server.client().set(key, "locked_by_other")
    now, _, sleep = _fake_time(100.0)
    at: list[float] = []
    params = LockParams(poll_interval=1.0, max_poll_interval=5.0, max_wait_time=10.0,
                        use_event_driven=False, lock_timeout=60)
    with LockClient(redis_server.url, params, uniforms=iter([0.5] * 10),
                    clock=lambda: now[0], sleep=sleep,
                    pace_rtt_s=0.001 if paced else None) as c:
        _slow_gets(c, now, 0.003, at)
        r = c.acquire(key, "mine", due=99.999 if paced else None)
    sleeps = [1.5, 2.25, 3.375, 5.0]
    if paced:  # due times from the first try's due time 99.999 (the task started 1 ms late)
        due = [99.999]
        for s in sleeps[:3]:
            due.append(due[-1] + 0.001 + s)
        assert at[1:] == pytest.approx(due[1:], abs=1e-12) and at[0] == 100.0
        # the loop test counts from the first due time too: a fifth try would be due
        # 7.128 + 0.001 + 5.0 = 12.129 s after it, past max_wait_time
        assert r.attempts == 4
    else:
        assert at == pytest.approx([100.0 + sum(sleeps[:k]) + 0.003 * k for k in range(4)])
    assert not r.acquired and r.due_end is None


def test_paced_polling_win_reports_when_the_try_was_due_to_end(redis_server, key):
    """The replay times the hold from ``due_end``: the winning try's due time plus a round
    trip for its GET and one for its SET NX."""
    now, at = [5.0], []
    params = LockParams(use_event_driven=False, lock_timeout=60)
    with LockClient(redis_server.url, params, clock=lambda: now[0], sleep=lambda s: None,
                    pace_rtt_s=0.002) as c:
        _slow_gets(c, now, 0.003, at)
        r = c.acquire(key, "mine", due=4.5)
    assert r.acquired and r.mechanism == "polling" and r.sets == 1
    assert r.due_end == pytest.approx(4.5 + 2 * 0.002)


def test_paced_event_wait_falls_back_at_its_due_deadline(redis_server, key):
    """No release comes: the event-driven wait ends fallback_timeout after the first try was
    due to end, and the first poll is due then, even though the first GET took 40 ms (an
    unpaced client would poll 40 ms later). Tolerance: the select() timeout and one GET on a
    loaded 2-core VM (~1 ms; 15 ms allowed, well inside the 40 ms that would tell them
    apart)."""
    redis_server.client().set(key, "locked_by_other")
    at: list[float] = []
    params = LockParams(poll_interval=0.5, max_poll_interval=0.5, max_wait_time=0.3,
                        use_event_driven=True, fallback_timeout=0.2, lock_timeout=60)
    with LockClient(redis_server.url, params, pace_rtt_s=0.001) as c:
        real_get = c.redis.get

        def slow_first_get(k):
            at.append(time.monotonic())
            if len(at) == 1:
                time.sleep(0.04)
            return real_get(k)

        c.redis.get = slow_first_get
        due = time.monotonic()
        r = c.acquire(key, "mine", due=due)
    assert r.fell_back and not r.acquired and r.attempts == 2
    assert at[1] - (due + 0.001 + 0.2) == pytest.approx(0.0, abs=0.015)


def test_ttl_expiry_while_held_then_emergency_delete_of_other_holder(redis_server, key):
    params = LockParams(**{**FAST, "lock_timeout": 0.15}, use_event_driven=False)
    r = redis_server.client()
    with LockClient(redis_server.url, params) as a, LockClient(redis_server.url, params) as b:
        t_set = time.monotonic()  # before A's SET PX 150 reaches Redis
        assert a.acquire(key, "long").acquired
        assert 0 < r.pttl(key) <= 150  # fractional TTL went out as PX
        # A still "runs" while its key expires; B acquires the same GPU (double occupancy).
        rb = b.acquire(key, "short")
        assert rb.acquired and rb.mechanism == "polling"
        # not before the TTL ran out: measured from before the SET, so no stall between the
        # SET and B's start can break it (it cannot fail by chance; 2 ms for Redis' ms clock)
        assert rb.end - t_set >= 0.15 - 0.002
        assert r.get(key) == "locked_by_short"
        # A finishes: compare fails, GET for the log, then the plain DEL frees B's lock.
        assert a.release(key, "long") == "emergency_deleted"
        assert r.get(key) is None
        assert a.commands["EVAL"] == 1 and a.commands["DEL"] == 1 and a.commands["GET"] == 2
        assert a.commands["PUBLISH"] == 0


def test_no_emergency_delete_option_keeps_other_holders_key(redis_server, key):
    params = LockParams(**FAST, use_event_driven=False)
    r = redis_server.client()
    r.set(key, "locked_by_short")
    with LockClient(redis_server.url, params, emergency_delete=False) as a:
        assert a.release(key, "long") == "not_owner"
    assert r.get(key) == "locked_by_short"


def test_same_type_instances_release_each_others_key(redis_server, key):
    params = LockParams(**FAST, use_event_driven=False)
    r = redis_server.client()
    with LockClient(redis_server.url, params) as a, LockClient(redis_server.url, params) as b:
        assert a.acquire(key, "paddleocr").acquired
        assert b.release(key, "paddleocr") == "released"  # b never held it
        assert r.get(key) is None
    with LockClient(redis_server.url, params, unique_owner_token=True) as a, \
            LockClient(redis_server.url, params, unique_owner_token=True) as b:
        assert a.acquire(key, "paddleocr", token="1").acquired
        assert b.release(key, "paddleocr", token="2") == "emergency_deleted"


def _lost_wakeup_run(srv, key, release_between_try_and_subscribe: bool):
    params = LockParams(**{**FAST, "fallback_timeout": 0.3})
    holder = LockClient(srv.url, params)
    waiter = LockClient(srv.url, params)
    assert holder.acquire(key, "holder").acquired
    real_try = waiter.try_acquire
    calls = [0]
    timers = []

    def try_then_maybe_release(k, v):
        out = real_try(k, v)
        calls[0] += 1
        if calls[0] == 1:
            if release_between_try_and_subscribe:
                assert holder.release(key, "holder") == "released"
            else:
                timers.append(threading.Timer(0.05, holder.release, args=(key, "holder")))
                timers[-1].start()
        return out

    waiter.try_acquire = try_then_maybe_release
    try:
        return waiter.acquire(key, "waiter")
    finally:
        for t in timers:
            t.join(5)
        holder.close()
        waiter.close()


def test_lost_wakeup_window_falls_back_to_polling(redis_server, key):
    missed = _lost_wakeup_run(redis_server, key, True)
    assert missed.acquired and missed.mechanism == "polling" and missed.messages == 0
    # waited the whole fallback_timeout for a message that never came: a lower bound the code
    # sets (the wait ends at its deadline, never before), so no load can break it
    assert missed.wait >= 0.3
    redis_server.client().delete(key)
    woken = _lost_wakeup_run(redis_server, key, False)
    assert woken.acquired and woken.mechanism == "event" and woken.messages == 1
    # woken by the release 50 ms in, well inside the 0.3 s fallback window; "event" already
    # implies it, so this bound fails only if a thread stalls 250 ms. Measured 60 times on the
    # loaded 2-core machine: woken 0.052-0.070 s, missed 0.302-0.314 s; 230 ms of slack above
    # the worst seen: fails by chance far less than once in 100.
    assert woken.wait < 0.3


def test_event_wait_times_out_then_polls_until_ttl_frees_key(redis_server, key):
    """A crashed holder never publishes: the waiter falls back to polling with the same start."""
    r = redis_server.client()
    t_set = time.monotonic()
    r.set(key, "locked_by_crashed", px=400)
    params = LockParams(**{**FAST, "fallback_timeout": 0.1})
    with LockClient(redis_server.url, params) as c:
        res = c.acquire(key, "w")
    assert res.acquired and res.mechanism == "polling"
    # freed by the TTL, not before (measured from before the SET: cannot fail by chance), and
    # found by polling (<= 24 ms apart) well within 0.6 s after: fails only if a thread stalls
    # ~0.5 s. Measured 60 times on the loaded machine: 0.404-0.437 s from the SET.
    assert 0.4 - 0.002 <= res.end - t_set < 1.0
    assert c.commands["SUBSCRIBE"] == 1 and c.commands["UNSUBSCRIBE"] == 1


@pytest.mark.parametrize("event", [False, True], ids=["polling", "event"])
def test_timeout_gives_up_after_max_wait(redis_server, key, event):
    redis_server.client().set(key, "locked_by_forever")
    params = LockParams(**{**FAST, "max_wait_time": 0.2, "fallback_timeout": 0.05},
                        use_event_driven=event)
    with LockClient(redis_server.url, params) as c:
        res = c.acquire(key, "w")
    assert not res.acquired and res.mechanism is None
    # The loop tests max_wait before each try, so the wait is >= 0.2 by construction. Above it:
    # at most one sleep (max_poll_interval 0.02 x jitter 1.2 = 24 ms) and a GET, plus whatever
    # the scheduler adds on a loaded machine. Measured 100 times per mode while other suites
    # loaded both cores: polling max 0.229 s, event-driven max 0.248 s, 3/100 >= 0.23 (the old
    # bound failed ~3% of runs). The band gives 76 ms of slack, 3x the worst excess seen, so it
    # fails by chance well under 1 in 100; a client that waited one more max_wait (0.4) fails.
    assert 0.2 <= res.wait < 0.2 + 0.024 + 0.076
    assert res.sets == 0 and res.attempts >= 2


def test_commandstats_match_the_protocol(redis_server, key):
    """INFO commandstats counts what the protocol says, GET and DEL inside EVAL included."""
    r = redis_server.client()
    params = LockParams(**FAST, use_event_driven=True)
    before = cmdstats(redis_server)
    clients = [LockClient(redis_server.url, params) for _ in range(4)]
    out = []

    def worker(c, i):
        res = c.acquire(key, f"t{i}")
        time.sleep(0.02)
        out.append((res, c.release(key, f"t{i}")))

    threads = [threading.Thread(target=worker, args=(c, i)) for i, c in enumerate(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    # one release by a non-owner on top
    r.set(key, "locked_by_someone", ex=5)
    out.append((None, clients[0].release(key, "t0")))
    after = cmdstats(redis_server)
    for c in clients:
        c.close()
    delta = {k: after.get(k, 0) - before.get(k, 0) for k in after}
    client = sum((c.commands for c in clients), start=__import__("collections").Counter())
    n_evals = client["EVAL"]
    n_released = sum(1 for _, rel in out if rel == "released")
    assert n_evals == 5 and n_released == 4
    assert delta["EVAL"] == n_evals
    assert delta["GET"] == client["GET"] + n_evals            # a GET inside every EVAL
    assert delta["DEL"] == client["DEL"] + n_released         # a DEL inside successful EVALs
    assert delta["SET"] == client["SET"] + 1                  # + the test's own SET
    assert client["SET"] >= 4                                 # acquisitions + lost races
    assert delta["PUBLISH"] == client["PUBLISH"] == 4
    assert delta.get("SUBSCRIBE", 0) == client["SUBSCRIBE"]
    assert delta.get("UNSUBSCRIBE", 0) == client["UNSUBSCRIBE"]
    assert client["SUBSCRIBE"] == sum(1 for res, _ in out if res and res.mechanism != "immediate")


def test_release_publishes_json_event_on_channel(redis_server, key):
    r = redis_server.client()
    ps = r.pubsub()
    ps.subscribe(channel_for(key))
    ps.get_message(timeout=1)  # subscribe confirmation
    with LockClient(redis_server.url, LockParams(**FAST)) as c:
        assert c.acquire(key, "ocr").acquired
        assert c.release(key, "ocr") == "released"
    msg = ps.get_message(timeout=2)
    import json
    data = json.loads(msg["data"])
    assert data["event_type"] == "lock_released" and data["lock_key"] == key
    assert data["task_name"] == "ocr" and data["release_reason"] == "normal"
    ps.close()
