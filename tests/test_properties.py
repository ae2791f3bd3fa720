"""Invariants that hold for every trace, cluster and config (hypothesis).

Each assertion is an exact invariant of one generated case (no statistical band), so none fails
by chance: a failure is a counterexample, which hypothesis shrinks and prints with the seed that
reproduces it. Which cases are drawn changes from run to run (hypothesis' random seed), so a
rare bug may surface in one run and not another; the example database replays it locally.
"""

from __future__ import annotations

from collections import defaultdict

from hypothesis import HealthCheck, given, settings

from gpusim.config import LockSettings
from gpusim.model.reference import Model
from gpusim.records import OUTCOMES

from strategies import scenarios

PROFILE = settings(max_examples=150, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def run(trace, cluster, cfg, seed):
    model = Model(trace, cluster, [LockSettings(gpu_lock=cfg)] * len(cluster.nodes), seed=seed)
    return model.run()


@PROFILE
@given(scenarios())
def test_every_task_ends_exactly_once(sc):
    trace, cluster, cfg, seed = sc
    log = run(trace, cluster, cfg, seed)
    assert sorted(r.index for r in log.records) == list(range(len(trace)))
    for r in log.records:
        assert r.outcome in OUTCOMES
        assert r.arrival_s <= r.slot_s <= r.end_s
        assert (r.acquired_s is None) == (r.outcome == "timeout")
        if r.acquired_s is not None:
            assert r.slot_s <= r.acquired_s <= r.gpu_end_s <= r.end_s
            assert r.gpu is not None and r.mechanism is not None


@PROFILE
@given(scenarios())
def test_no_two_holders_of_one_key_unless_it_expired_or_was_deleted(sc):
    trace, cluster, cfg, seed = sc
    log = run(trace, cluster, cfg, seed)
    by_key = defaultdict(list)
    for h in log.holds:
        by_key[h.key].append(h)
    for holds in by_key.values():
        holds.sort(key=lambda h: h.set_s)
        for prev, nxt in zip(holds, holds[1:]):
            assert nxt.set_s >= prev.end_s  # Redis itself never has two values for one key
    # Tasks overlapping on one GPU: the earlier one's key ended (TTL or a delete) first.
    by_gpu = defaultdict(list)
    for r in log.records:
        if r.acquired_s is not None:
            by_gpu[(r.node, r.gpu)].append(r)
    for rs in by_gpu.values():
        rs.sort(key=lambda r: r.acquired_s)
        for i, a in enumerate(rs):
            for b in rs[i + 1:]:
                if b.acquired_s < a.gpu_end_s:
                    assert a.lost_reason is not None
                    assert a.lost_lock_s is not None and a.lost_lock_s <= b.acquired_s


@PROFILE
@given(scenarios())
def test_wait_never_exceeds_max_wait_plus_one_sleep(sc):
    trace, cluster, cfg, seed = sc
    log = run(trace, cluster, cfg, seed)
    rtt = cluster.redis.rtt_s
    max_gpus = max(n.gpus for n in cluster.nodes)
    keys_per_try = max_gpus if cluster.gpu_policy == "probe_all" else 1
    # the jitter factor lies in [0.8, 1.2] by construction (gpusim.rng.jitter_factor): a bound,
    # not a band, so this holds for every seed
    sleep = cfg.max_poll_interval * 1.2 if cfg.exponential_backoff else cfg.poll_interval
    one_try = keys_per_try * 2 * rtt
    for r in log.records:
        assert r.wait_s <= cfg.max_wait_time + sleep + one_try + 1e-9


@PROFILE
@given(scenarios())
def test_polls_and_commands_reconcile_with_records(sc):
    trace, cluster, cfg, seed = sc
    log = run(trace, cluster, cfg, seed)
    recs = log.records
    cmd = log.commands
    monitor_gets = 0
    if cluster.options.monitor:
        # the monitor reads every key (GET + TTL) each interval, and GETs again before a DEL
        monitor_gets = cmd["TTL"] + sum(h.end_reason == "monitor_deleted" for h in log.holds)
    not_owner = sum(r.release == "not_owner" for r in recs)
    owner = sum(r.release == "owner" for r in recs)
    assert cmd["GET"] == sum(r.gets for r in recs) + not_owner + monitor_gets
    assert cmd["SET"] == sum(r.sets for r in recs)
    assert cmd["EVAL"] == owner + not_owner
    assert cmd["PUBLISH"] == owner
    monitor_dels = sum(h.end_reason == "monitor_deleted" for h in log.holds)
    assert cmd["DEL"] == (not_owner if cluster.options.emergency_delete else 0) + monitor_dels
    assert cmd["SUBSCRIBE"] == cmd["UNSUBSCRIBE"]
    # per-minute counts add up to the totals
    assert log.minute_commands.sum() == sum(cmd.values())
    assert log.minute_deliveries.sum() == log.deliveries
    # INFO commandstats counts the GET (and DEL on success) that the release script runs
    assert log.commandstats["GET"] == cmd["GET"] + owner + not_owner
    assert log.commandstats["DEL"] == cmd["DEL"] + owner
    # each attempt GETs at least one key; a SET only follows a GET that saw the key free
    for r in recs:
        assert r.gets >= r.attempts and r.sets <= r.gets


@PROFILE
@given(scenarios())
def test_worker_slots_never_oversubscribed(sc):
    trace, cluster, cfg, seed = sc
    log = run(trace, cluster, cfg, seed)
    by_pool = defaultdict(list)
    for r in log.records:
        by_pool[(r.node, cluster.service_of(r.task_type))].append(r)
    for (node, service), rs in by_pool.items():
        events = sorted([(r.end_s, -1) for r in rs] + [(r.slot_s, 1) for r in rs])
        level = 0
        for _, d in events:  # at one instant, frees come before takes
            level += d
            assert level <= cluster.workers_of(service)
