"""Dynamic config (GPU_LOCK_CONFIG_003): a config change mid-trace affects only the tasks that
start acquiring after it (at or after: a change at a task's acquire start applies to it).

The model tests are exact: each expected Redis command sequence is derived by hand from the
algorithm in shared/design/yivideo-lock.md (as in test_faithfulness.py: a command sent at client
time c runs on the server at c + h, its reply is back at c + 2h), with exponential backoff off so
every sleep is exactly poll_interval, and no randomness enters. The real-Redis test replays a
small trace through the real lock client and reads the SET arguments off Redis MONITOR.
"""

from __future__ import annotations

import json
import math
import threading

import pytest
import redis

from gpusim.cluster import ClusterSpec, build_cluster
from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.model.reference import Model
from gpusim.schedule import ConfigChange, load_schedule, parse_config_change
from gpusim.simulation import simulate
from gpusim.traces.format import trace_from_rows

RTT = 0.002
H = RTT / 2
OLD = GpuLockConfig(poll_interval=1, max_wait_time=100, lock_timeout=50, max_poll_interval=1,
                    exponential_backoff=False, use_event_driven=False)
NEW = GpuLockConfig(poll_interval=0.25, max_wait_time=8, lock_timeout=20, max_poll_interval=1,
                    exponential_backoff=False, use_event_driven=False)


def run_model(rows, cfg, changes, **cluster_kw):
    cluster = build_cluster(ClusterSpec(redis={"rtt_s": RTT, "client_subscribe_delay_s": 0.0,
                                               "pubsub_wakeup_jitter_s": 0.0}, **cluster_kw))
    model = Model(trace_from_rows(rows), cluster, [LockSettings(gpu_lock=cfg)] * len(
        cluster.nodes), seed=7, changes=changes)
    model.server.command_log = []
    log = model.run()
    return log, model.server.command_log


def polls(start, interval, max_wait, free_at):
    """A polling task with backoff off (yivideo-lock.md): `while c - start < max_wait: GET;
    SET NX if free; sleep(poll_interval)`. Returns its commands as (server time, command) and
    its client time at the end (acquired, or given up)."""
    c, cmds = start, []
    while c - start < max_wait:
        g = c + H
        cmds.append((g, "GET"))
        if g >= free_at:  # the key is free: SET NX one round trip later, reply h after it
            cmds.append(((g + H) + H, "SET"))
            return cmds, ((g + H) + H) + H
        c = (g + H) + interval
    return cmds, c


def of(cmds, who, release=True):
    """Task `who`'s commands (without its release's EVAL and PUBLISH when release=False)."""
    return [(pytest.approx(t, abs=1e-9), c) for t, c, _k, by in cmds
            if by == who and (release or c not in ("EVAL", "PUBLISH"))]


def test_change_applies_to_tasks_that_start_acquiring_after_it_only():
    """A holds the GPU and dies (its key ends by TTL). B starts acquiring at 1 s, before the change
    at 5 s: it keeps polling every 1 s and, when it gets the key at ~50 s, long after the change,
    sets it with the OLD lock_timeout (50 s). C starts at exactly 5 s (the change applies) and
    polls every 0.25 s, giving up after the NEW max_wait_time (8 s). D starts at 200 s: the NEW
    lock_timeout (20 s) is its key's TTL."""
    rows = [{"task_type": "a", "arrival_s": 0.0, "duration_s": 30.0, "crashed": True},
            {"task_type": "b", "arrival_s": 1.0, "duration_s": 100.0, "crashed": True},
            {"task_type": "c", "arrival_s": 5.0, "duration_s": 1.0},
            {"task_type": "d", "arrival_s": 200.0, "duration_s": 100.0, "crashed": True}]
    log, cmds = run_model(rows, OLD, [ConfigChange(5.0, NEW)])
    a_set = 3 * H
    b_cmds, b_acq = polls(1.0, OLD.poll_interval, OLD.max_wait_time, a_set + 50)
    c_cmds, c_end = polls(5.0, NEW.poll_interval, NEW.max_wait_time, math.inf)
    d_cmds, _ = polls(200.0, NEW.poll_interval, NEW.max_wait_time, 0.0)
    assert of(cmds, 0) == [(pytest.approx(H), "GET"), (pytest.approx(3 * H), "SET")]
    assert of(cmds, 1) == b_cmds
    assert of(cmds, 2) == c_cmds
    assert of(cmds, 3) == d_cmds
    # B kept its 1 s interval after the change; C polled at 0.25 s from its start
    b_gets = [t for t, c in b_cmds if c == "GET" and t > 5.0]
    assert all(abs((y - x) - (1 + RTT)) < 1e-9 for x, y in zip(b_gets, b_gets[1:]))
    assert len(c_cmds) == math.ceil(8 / (0.25 + RTT))  # about 4x the polls of the old interval
    a, b, c, d = log.records
    assert [r.config_index for r in (a, b, c, d)] == [0, 0, 1, 1]
    assert (c.outcome, c.wait_s) == ("timeout", pytest.approx(c_end - 5.0))
    assert b.outcome == "crashed" and b.acquired_s == pytest.approx(b_acq)
    # each key's TTL is its holder's own lock_timeout: A and B 50 s (old), D 20 s (new)
    ttl = {h.holder: (h.end_s - h.set_s, h.end_reason) for h in log.holds}
    assert ttl[0] == (pytest.approx(50), "expired") and ttl[1] == (pytest.approx(50), "expired")
    assert ttl[3] == (pytest.approx(20), "expired")


def test_per_node_change_leaves_the_other_node_untouched():
    """Event-driven today on both nodes; from 5 s node1 polls (0.5 s, no backoff). B0 on node0
    still waits event-driven (GET, SUBSCRIBE, woken by the release, GET, SET, UNSUBSCRIBE);
    B1 on node1 polls every 0.5 s and never subscribes."""
    old = GpuLockConfig(poll_interval=2, max_wait_time=1800, lock_timeout=3600,
                        max_poll_interval=10, use_event_driven=True, fallback_timeout=30)
    new = GpuLockConfig(poll_interval=0.5, max_wait_time=100, lock_timeout=60,
                        max_poll_interval=0.5, exponential_backoff=False,
                        use_event_driven=False)
    rows = [{"task_type": "a", "arrival_s": 0.0, "duration_s": 20.0, "node": "n0", "gpu": 0},
            {"task_type": "a", "arrival_s": 0.0, "duration_s": 20.0, "node": "n1", "gpu": 0},
            {"task_type": "b", "arrival_s": 10.0, "duration_s": 1.0, "node": "n0", "gpu": 0},
            {"task_type": "b", "arrival_s": 10.0, "duration_s": 1.0, "node": "n1", "gpu": 0}]
    log, cmds = run_model(rows, old, [ConfigChange(5.0, new, node="n1")],
                          nodes=[{"name": "n0"}, {"name": "n1"}])
    rel = (4 * H + 20.0) + H           # A's EVAL on the server: the key is gone from then on
    wake = ((rel + H) + H) + H          # PUBLISH at rel + 2h, the message at the client h later
    b0 = [(10 + H, "GET"), (10 + 3 * H, "SUBSCRIBE"), (wake + H, "GET"),
          (wake + 3 * H, "SET"), (wake + 5 * H, "UNSUBSCRIBE")]
    assert of(cmds, 2, release=False) == [(pytest.approx(t), c) for t, c in b0]
    b1, _ = polls(10.0, 0.5, 100, rel)
    assert of(cmds, 3, release=False) == b1
    assert [r.config_index for r in log.records] == [0, 0, 0, 1]
    assert [r.mechanism for r in log.records[2:]] == ["event", "polling"]


@pytest.mark.parametrize("engine", ["reference", "fast"])
def test_config_is_read_when_the_task_gets_its_worker_slot(engine):
    """With one Celery slot, B (arrived at 1 s) starts acquiring only when A's slot frees, at
    S > 1. A change at 2 s (after B arrived, before S) applies to B; a change at exactly S too
    (the tie rule: at or after); a change one float step after S does not."""
    cluster = build_cluster(ClusterSpec(workers_per_service=1, redis={"rtt_s": RTT}))
    # B dies holding the key, so its key ends by TTL: its own lock_timeout, old or new (C,
    # long after, keeps the run going past both)
    trace = trace_from_rows([{"task_type": "x", "arrival_s": 0.0, "duration_s": 10.0},
                             {"task_type": "x", "arrival_s": 1.0, "duration_s": 10.0,
                              "crashed": True},
                             {"task_type": "y", "arrival_s": 100.0, "duration_s": 1.0}])

    def b_record(changes):
        res = simulate(trace, OLD, cluster, engine=engine, changes=changes)
        return res.replications[0].records[1], res.replications[0].log

    b, _ = b_record([])
    start = b.slot_s
    assert start > 2.0 and b.config_index == 0
    for at, expect in ((2.0, 1), (start, 1), (math.nextafter(start, math.inf), 0)):
        b, log = b_record([ConfigChange(at, NEW)])
        assert b.config_index == expect, at
        hold = [h for h in log.holds if h.holder == 1][0]
        assert hold.end_s - hold.set_s == pytest.approx((NEW if expect else OLD).lock_timeout)


def test_no_changes_and_unrelated_late_change_leave_results_byte_identical():
    """A change after every task started acquiring changes no record: only the inputs list it."""
    trace = trace_from_rows([{"task_type": "x", "arrival_s": float(i), "duration_s": 3.0}
                             for i in range(6)])
    plain = simulate(trace, OLD, seed=3)
    late = simulate(trace, OLD, seed=3, changes=[ConfigChange(3000.0, NEW)])
    assert "config_changes" not in plain.inputs
    a, b = plain.to_json(), late.to_json()
    listed = b["inputs"].pop("config_changes")
    assert a == b
    assert listed == [{"index": 1, "at_s": 3000.0, "node": None, "source": "<memory>",
                       "gpu_lock": NEW.model_dump(), "config_digest": listed[0]["config_digest"]}]
    assert listed[0]["config_digest"].startswith("sha256:")


# -- a real Redis: the real lock client reads its config per task, as YiVideo does -------------
class _Monitor:
    """Every command the server runs, with its server time and client (Redis MONITOR), read in a
    thread until a sentinel ECHO; the harness's INFO calls are left out."""

    STOP = "gpusim-test-monitor-stop"

    def __init__(self, url):
        self.url, self.lines = url, []
        self._client = redis.Redis.from_url(url)
        self._mon = self._client.monitor().__enter__()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while True:
            cmd = self._mon.next_command()
            if self.STOP in cmd["command"]:
                return
            self.lines.append((cmd["time"], f"{cmd['client_address']}:{cmd['client_port']}",
                               cmd["command"].split()))

    def stop(self):
        redis.Redis.from_url(self.url).echo(self.STOP)
        self._thread.join(timeout=10)
        self._client.close()


@pytest.mark.redis
def test_mid_run_change_on_a_real_redis_applies_to_later_tasks_only(redis_server):
    """Replayed 20x faster through the real lock client (gpusim.real): A holds the GPU 2 s; B
    starts acquiring at 0.5 s and polls every 2/20 = 0.1 s; the change at 1.5 s sets poll 0.5 and
    lock_timeout 10 (0.025 s and 0.5 s scaled); C starts at 2.5 s while B holds the key.
    Read off MONITOR: A's and B's SETs carry the old TTL (EX 3, B's although it set its key
    after the change), C's the new one (PX 500); B's GETs come about 0.1 s apart, C's about
    0.025 s apart.

    Tolerances: every task start is >= 0.5 s away from the change, far beyond the start lateness
    a loaded 2-core VM shows (milliseconds), so which config each task reads is certain. A poll
    gap is the requested sleep (compensated for overshoot by the replay's sleeper) plus a GET
    round trip (~0.1 ms): the median gap must lie within [0.09, 0.2] s for B and [0.02, 0.06] s
    for C, bands that meet only if half of C's sleeps overshoot by 35 ms or half of B's
    undershoot by 10 ms; chance alone does not do that on an idle-enough machine (CI runs
    these real-Redis tests serially)."""
    from gpusim.real.replay import run_real

    scale = 20.0
    old = GpuLockConfig(poll_interval=2, max_wait_time=200, lock_timeout=60,
                        max_poll_interval=2, exponential_backoff=False, use_event_driven=False)
    new = GpuLockConfig(poll_interval=0.5, max_wait_time=200, lock_timeout=10,
                        max_poll_interval=2, exponential_backoff=False, use_event_driven=False)
    trace = trace_from_rows([{"task_type": "a", "arrival_s": 0.0, "duration_s": 40.0},
                             {"task_type": "b", "arrival_s": 10.0, "duration_s": 20.0},
                             {"task_type": "c", "arrival_s": 50.0, "duration_s": 10.0}])
    mon = _Monitor(redis_server.url)
    try:
        res = run_real(trace, old, redis_url=redis_server.url, time_scale=scale,
                       idle_window_s=0.1, changes=[ConfigChange(30.0, new)])
    finally:
        mon.stop()
    run = res.runs[0]
    assert not run.partial
    recs = sorted(run.records, key=lambda r: r.index)
    assert [r.config_index for r in recs] == [0, 0, 1]
    assert [r.outcome for r in recs] == ["acquired"] * 3
    assert res.inputs["config_changes"][0]["at_s"] == 30.0
    sets = {c[2]: (c[3:], client) for _t, client, c in mon.lines if c[0].upper() == "SET"}
    assert sorted(sets) == ["locked_by_a", "locked_by_b", "locked_by_c"]
    # a whole number of seconds goes as EX, a fraction as PX milliseconds (ttl_args)
    assert [sets[f"locked_by_{t}"][0] for t in "abc"] == [["NX", "EX", "3"]] * 2 + [
        ["NX", "PX", "500"]]

    def median_gap(task_type):
        client = sets[f"locked_by_{task_type}"][1]
        gets = [t for t, cl, c in mon.lines if cl == client and c[0].upper() == "GET"]
        gaps = sorted(b - a for a, b in zip(gets, gets[1:]))
        assert len(gaps) >= 5, task_type  # B ~15 polls, C ~20: enough for a median
        return gaps[len(gaps) // 2]

    assert 0.09 <= median_gap("b") <= 0.2
    assert 0.02 <= median_gap("c") <= 0.06


# -- schedule YAML and --config-change: errors name file, line and field ----------------------
def write(path, text):
    path.write_text(text)
    return path


def test_schedule_yaml_with_paths_inline_configs_and_nodes(tmp_path):
    write(tmp_path / "fast.yml", "gpu_lock:\n  poll_interval: 0.5\n  lock_timeout: 120\n")
    sched = write(tmp_path / "s.yml", "changes:\n"
                  "  - at_s: 7200\n    node: node1\n    config: {poll_interval: 1}\n"
                  "  - at_s: 3600\n    config: fast.yml\n")
    a, b = load_schedule(sched, environ={})
    assert (a.at_s, a.node, a.settings.gpu_lock.lock_timeout) == (3600.0, None, 120)
    assert a.source == str(tmp_path / "fast.yml")
    assert (b.at_s, b.node, b.settings.gpu_lock.poll_interval) == (7200.0, "node1", 1.0)


@pytest.mark.parametrize("text, line, field", [
    ("changes:\n  - at_s: -1\n    config: {}\n", 2, "changes.0.at_s"),
    ("changes:\n  - at_s: .nan\n    config: {}\n", 2, "changes.0.at_s"),
    ("changes:\n  - at_s: 40000000\n    config: {}\n", 2, "changes.0.at_s"),
    ("changes:\n  - at_s: 5\n    config: {}\n    when: 3\n", 4, "changes.0.when"),
    ("changes:\n  - at_s: 5\n", 2, "changes.0.config"),
    ("changes:\n  - at_s: 5\n    config:\n      poll_interval: 0\n", 4,
     "changes.0.config.poll_interval"),
    ("changes:\n  - at_s: 5\n    config:\n      gpu_lock:\n        lock_timeout: x\n", 5,
     "changes.0.config.gpu_lock.lock_timeout"),
    ("changes:\n  - {at_s: 5, config: {}}\n  - {at_s: 5, node: n1, config: {}}\n", 3,
     "changes.1.at_s"),
    ("changes:\n  - at_s: 5\n    config: missing.yml\n", None, None),
    ("changes: 3\n", 1, "changes"),
    ("other: 3\n", 1, None),
])
def test_schedule_errors_name_file_line_and_field(tmp_path, text, line, field):
    path = write(tmp_path / "s.yml", text)
    with pytest.raises(InputError) as e:
        load_schedule(path, environ={})
    if "missing" in text:
        assert e.value.file == str(tmp_path / "missing.yml") and "no such file" in str(e.value)
        return
    assert (e.value.file, e.value.line, e.value.field) == (str(path), line, field)


def test_config_change_option_parses_time_node_and_file(tmp_path):
    cfg = write(tmp_path / "c.yml", "poll_interval: 0.25\n")
    ch = parse_config_change(f"90.5@node1={cfg}", environ={})
    assert (ch.at_s, ch.node, ch.source, ch.settings.gpu_lock.poll_interval) == (
        90.5, "node1", str(cfg), 0.25)
    for bad in ("90", f"x={cfg}", f"-1={cfg}", f"inf={cfg}", f"nan={cfg}", f"1e9={cfg}",
                f"5@={cfg}", "=c.yml"):
        with pytest.raises(InputError) as e:
            parse_config_change(bad, environ={})
        assert e.value.field == "--config-change", bad


def test_simulate_refuses_unknown_nodes_and_same_time_changes():
    trace = trace_from_rows([{"task_type": "x", "arrival_s": 0.0, "duration_s": 1.0}])
    with pytest.raises(InputError, match="not in the cluster"):
        simulate(trace, OLD, changes=[ConfigChange(1.0, NEW, node="nope")])
    with pytest.raises(InputError, match="two changes at 1 s"):
        simulate(trace, OLD, changes=[ConfigChange(1.0, NEW), ConfigChange(1.0, OLD, "node0")])
    with pytest.raises(InputError) as e:
        ConfigChange(math.inf, NEW)
    assert e.value.field == "at_s"


# -- the command line ---------------------------------------------------------------------------
def cli(*args):
    from typer.testing import CliRunner

    from gpusim.cli.app import app
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture
def files(tmp_path):
    trace = tmp_path / "t.jsonl"
    trace.write_text("".join(json.dumps({"task_type": "x", "arrival_s": float(i),
                                         "duration_s": 4.0}) + "\n" for i in range(12)))
    old = write(tmp_path / "old.yml", "gpu_lock:\n  poll_interval: 2\n  max_wait_time: 1800\n"
                "  lock_timeout: 3600\n  max_poll_interval: 10\n")
    new = write(tmp_path / "new.yml", "gpu_lock:\n  poll_interval: 0.5\n")
    return trace, old, new, tmp_path


def test_cli_simulate_lists_changes_and_is_byte_identical(files):
    trace, old, new, tmp = files
    sched = write(tmp / "s.yml", f"changes:\n  - at_s: 6\n    node: node0\n    config: {new}\n")
    outs = []
    for k in range(2):
        r = cli("simulate", trace, "-c", old, "--config-change", f"3={new}", "--schedule", sched,
                "--json", tmp / f"r{k}.json", "--records", tmp / f"rec{k}.jsonl")
        assert r.exit_code == 0, r.output
        outs.append((tmp / f"r{k}.json").read_bytes())
    assert outs[0] == outs[1]
    listed = json.loads(outs[0])["inputs"]["config_changes"]
    assert [(c["index"], c["at_s"], c["node"], c["source"]) for c in listed] == [
        (1, 3.0, None, str(new)), (2, 6.0, "node0", str(new))]
    recs = [json.loads(x) for x in (tmp / "rec0.jsonl").read_text().splitlines()]
    # one worker slot per core by default (8): the first tasks start at arrival
    assert {r["config_index"] for r in recs if r["slot_s"] < 3.0} == {0}
    assert {r["config_index"] for r in recs if r["slot_s"] >= 6.0} == {2}


@pytest.mark.parametrize("args, says", [
    (("--config-change", "soon=new.yml"), "--config-change"),
    (("--config-change", "-5=new.yml"), "--config-change"),
    (("--config-change", "5=nothere.yml"), "nothere.yml"),
    (("--config-change", "5@node9=new.yml"), "node9"),
    (("--schedule", "nothere.yml"), "nothere.yml"),
])
def test_cli_bad_change_is_one_line_exit_2(files, args, says, monkeypatch):
    trace, old, _new, tmp = files
    monkeypatch.chdir(tmp)
    r = cli("simulate", trace, "-c", old, *args)
    assert r.exit_code == 2, r.output
    assert says in r.output and r.output.strip().count("\n") == 0, r.output


def test_cli_compare_applies_changes_to_the_candidate_unless_both(files):
    trace, old, new, tmp = files
    for on, base_listed in (("candidate", False), ("both", True)):
        r = cli("compare", trace, "--baseline", old, "--candidate", old, "-r", 1,
                "--config-change", f"0={new}", "--changes-on", on, "--json", tmp / "c.json")
        assert r.exit_code in (0, 1), r.output
        doc = json.loads((tmp / "c.json").read_text())
        assert "config_changes" in json.dumps(doc["candidate"]["inputs"])
        assert ("config_changes" in json.dumps(doc["baseline"]["inputs"])) == base_listed
    r = cli("compare", trace, "--baseline", old, "--candidate", old, "--changes-on", "x")
    assert r.exit_code == 2


def test_parallel_replications_with_changes_equal_serial():
    trace = trace_from_rows([{"task_type": "x", "arrival_s": float(i) / 2, "duration_s": 3.0}
                             for i in range(30)])
    changes = [ConfigChange(4.0, NEW), ConfigChange(9.0, OLD, node="node0")]
    serial = simulate(trace, OLD, seed=2, replications=2, jobs=1, changes=changes)
    parallel = simulate(trace, OLD, seed=2, replications=2, jobs=2, changes=changes)
    assert serial.dumps() == parallel.dumps()
    assert [tuple(r.records) for r in serial.replications] == \
        [tuple(r.records) for r in parallel.replications]
    assert {r.config_index for r in serial.replications[0].records} == {0, 1, 2}
