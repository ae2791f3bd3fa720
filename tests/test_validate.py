"""`gpusim validate`: the real replay, the comparison statistics, and the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gpusim.config import GpuLockConfig
from gpusim.errors import InputError
from gpusim.real.server import PrivateRedis
from gpusim.traces.format import trace_from_rows
from gpusim.real.comparison import DEFAULT_TOLERANCES, compare
from gpusim.real.replay import CudaUnavailable, RedisDiedDuringRun, RedisUnavailable, run_real
from gpusim.real.validate import validate
from gpusim.stats import paired_interval, welch_interval


def _trace(n: int, mean_gap: float, *, seed: int, crash_at: int | str | None = None):
    """n tasks, Poisson arrivals, holds U(1, 5) s. ``crash_at='busy'`` crashes the first task
    from index 10 on that has two arrivals within the next 15 s (so waiters see a holder that
    never releases: they fall back from the event wait to polling until the TTL frees it)."""
    rng = np.random.default_rng(seed)
    arr = np.cumsum(rng.exponential(mean_gap, n))
    arr -= arr[0]
    holds = rng.uniform(1, 5, n)
    if crash_at == "busy":
        crash_at = next(i for i in range(10, n - 2) if arr[i + 2] - arr[i] < 15)
    return trace_from_rows([
        dict(task_id=f"t{i}", task_type=("ocr", "whisper")[i % 2], arrival_s=round(float(a), 3),
             duration_s=round(float(holds[i]), 3), crashed=(i == crash_at))
        for i, a in enumerate(arr)])


# ------------------------------------------------------------------------------------------
# comparison statistics on synthetic inputs
# ------------------------------------------------------------------------------------------
# Every test in this section draws from a seeded generator, so it is deterministic and cannot
# fail by chance; where a fresh seed could matter the test says how often it would fail.
def _side(rng, n, *, wait=1.0, sd=0.01, cpu=0.02, gets=300.0, success=0.97):
    metrics, waits = [], []
    for _ in range(n):
        w = rng.exponential(wait * (1 + sd * rng.standard_normal()), 500)
        metrics.append({"success_rate": success, "timeout_rate": 1 - success,
                        "wait_mean_s": wait * (1 + sd * rng.standard_normal()),
                        "wait_p50_s": wait * 0.7 * (1 + sd * rng.standard_normal()),
                        "wait_p95_s": wait * 3 * (1 + sd * rng.standard_normal()),
                        "attempts_per_task": 10.0,
                        "redis_cpu_s": cpu * (1 + sd * rng.standard_normal()),
                        "GET": gets * (1 + sd * rng.standard_normal()), "SET": 30.0, "EVAL": 29.0,
                        "PUBLISH": 29.0, "DEL": 29.0})
        waits.append(w)
    return metrics, waits


def test_same_model_passes_and_is_equivalent():
    rng = np.random.default_rng(1)
    cmp_ = compare(_side(rng, 4), _side(rng, 10))
    assert cmp_.passed
    rows = {r.name: r for r in cmp_.rows}
    assert rows["wait_mean_s"].verdict == "PASS" and rows["wait_mean_s"].equivalent
    assert rows["EVAL"].verdict == "INFO"  # reported, not judged
    assert set(DEFAULT_TOLERANCES) == {r.name for r in cmp_.rows if r.tolerance is not None}


def test_biased_model_fails():
    rng = np.random.default_rng(2)
    cmp_ = compare(_side(rng, 4), _side(rng, 10, wait=1.2, gets=360.0))
    rows = {r.name: r for r in cmp_.rows}
    assert rows["wait_mean_s"].verdict == "FAIL"
    assert rows["wait_mean_s"].error == pytest.approx(0.2, abs=0.02)
    assert rows["GET"].verdict == "FAIL"
    assert not cmp_.passed


def test_success_rate_is_judged_in_points():
    rng = np.random.default_rng(3)
    cmp_ = compare(_side(rng, 4, success=0.97), _side(rng, 10, success=0.90))
    row = next(r for r in cmp_.rows if r.name == "success_rate")
    assert row.kind == "abs" and row.error == pytest.approx(-0.07)
    assert row.verdict == "FAIL"


def test_too_much_spread_is_inconclusive_not_a_pass():
    # seeded inputs (deterministic): the tests below judge the rule, not a random outcome
    rng = np.random.default_rng(4)
    cmp_ = compare(_side(rng, 2, sd=0.5), _side(rng, 3, sd=0.5))
    row = next(r for r in cmp_.rows if r.name == "wait_mean_s")
    assert row.verdict == "INCONCLUSIVE"
    assert not cmp_.passed


def test_comparison_verdict_fail_beats_inconclusive_beats_pass():
    from gpusim.real.comparison import Comparison, MetricRow, advice

    def row(name, verdict, lo=-0.01, hi=0.01, tol=0.05):
        return MetricRow(name, name, "rel", 1.0, None, 1.0, None, 0.0, lo, hi, tol, verdict,
                         None)

    info = MetricRow("EVAL", "EVAL", "rel", 1.0, None, 1.0, None, 0.0, 0, 0, None, "INFO", None)
    assert Comparison([row("a", "PASS"), info], {}, 2, 10).verdict == "PASS"
    wide = row("b", "INCONCLUSIVE", -0.3, 0.3)
    inc = Comparison([row("a", "PASS"), wide, info], {}, 2, 10)
    assert inc.verdict == "INCONCLUSIVE" and not inc.passed and inc.too_wide() == [wide]
    # the advice names the row, its error and half-width against the band, and a number of
    # runs: the interval +-0.30 around 0 must shrink to +-0.05, (0.30 / 0.05)^2 = 36x the data
    text = advice(inc, runs=2, tasks=8)
    assert "b +0.0% ±30.0% (tolerance ±5%)" in text
    assert "--runs 72" in text and "8 tasks" in text
    # and what they cost: 72 runs at 6 lanes are 12 rounds of 76 s, 15 min
    assert ("--runs 72 (12 rounds of 6 lanes at about 76 s a run: about 15 min of replay"
            in advice(inc, runs=2, tasks=8, lanes=6, run_s=76.0))
    assert Comparison([row("a", "FAIL"), wide], {}, 2, 10).verdict == "FAIL"
    assert Comparison([info], {}, 2, 10).verdict == "INCONCLUSIVE"  # nothing judged
    missing = MetricRow("c", "c", "rel", None, None, None, None, None, None, None, 0.05, "N/A",
                        None)
    assert Comparison([row("a", "PASS"), missing], {}, 2, 10).verdict == "INCONCLUSIVE"


def test_a_run_that_lost_its_schedule_turns_a_fail_into_inconclusive(capsys):
    """A real run stalled by its host is not the protocol the model describes: a FAIL is then
    INCONCLUSIVE (the rows keep their own verdicts), said on the verdict line, unless the runs
    that kept their schedule FAIL on their own; PASS stands. A run is off schedule when a
    start, sleep or hold was more than 5 smallest scaled intervals late (on the border:
    kept)."""
    from types import SimpleNamespace as NS

    from gpusim.cli.real import _verdict_exit
    from gpusim.real.comparison import Comparison, MetricRow
    from gpusim.real.validate import judge_schedule, off_schedule

    def run(i, late):
        return NS(run=i, lateness={"start_max_s": 0.001, "sleep_overshoot_max_s": late,
                                   "hold_overshoot_max_s": 0.002})

    assert off_schedule(NS(runs=[run(0, 0.01), run(1, 0.1)]), 0.02) is None  # 0.1 = 5 x 0.02
    why = off_schedule(NS(runs=[run(0, 0.01), run(1, 0.35), run(2, 0.2)]), 0.02)
    assert why.startswith("2 of 3 real runs lost the replay's schedule (run 2, 3: stalled up "
                          "to 350 ms") and "100 ms" in why
    fail = MetricRow("SET", "SET", "rel", 1.0, None, 1.1, None, 0.1, 0.07, 0.13, 0.05, "FAIL",
                     False)
    ok = MetricRow("GET", "GET", "rel", 1.0, None, 1.0, None, 0.0, -0.01, 0.01, 0.05, "PASS", True)
    real = NS(runs=[run(0, 0.01), run(1, 0.35), run(2, 0.2), run(3, 0.05)])
    asked = []

    def rejudge(verdict):
        def judge(kept):
            asked.append(kept)
            return Comparison([fail if verdict == "FAIL" else ok], {}, len(kept), len(kept))
        return judge

    stands = Comparison([fail, ok], {}, 4, 4)
    judge_schedule(stands, real, 0.02, rejudge("FAIL"))
    assert asked == [[0, 3]] and stands.verdict == "FAIL" and stands.off_schedule is None
    assert "the FAIL stands, the 2 runs that kept it FAIL on their own" in stands.notes[-1]
    cmp_ = Comparison([fail, ok], {}, 4, 4)
    judge_schedule(cmp_, real, 0.02, rejudge("PASS"))
    assert cmp_.rows_verdict == "FAIL" and cmp_.verdict == "INCONCLUSIVE"
    assert cmp_.off_schedule.startswith("2 of 4 real runs lost the replay's schedule (run 2, 3")
    cmp_.off_schedule = why
    assert cmp_.to_json()["off_schedule"] == why and fail.verdict == "FAIL"
    assert Comparison([ok], {}, 3, 3, off_schedule=why).verdict == "PASS"
    assert _verdict_exit(cmp_, 3, 100).exit_code == 3
    printed = " ".join(capsys.readouterr().out.split())
    assert "validation INCONCLUSIVE: SET outside tolerance, but 2 of 3 real runs" in printed


def test_welch_interval_covers_zero_about_95_percent_under_the_null():
    """Both sides from one distribution: the 95% interval must hold 0 in ~95% of trials.
    Seeded, so deterministic; with a fresh seed the coverage of 600 trials has sd 0.9 points,
    so [0.91, 0.99] (4.5 sd either side) fails by chance about once in 100,000 runs."""
    rng = np.random.default_rng(5)
    for kind in ("rel", "abs"):
        hits = 0
        trials = 600
        for _ in range(trials):
            real = rng.normal(10.0, 1.0, 3)
            sim = rng.normal(10.0, 1.0, 10)
            _, lo, hi, _ = welch_interval(real, sim, kind)
            hits += lo <= 0 <= hi
        assert 0.91 <= hits / trials <= 0.99, (kind, hits / trials)


def test_paired_comparison_uses_the_crn_pairs():
    """Pairs that move together: paired differences are precise where independent samples
    with the same spread are inconclusive."""
    rng = np.random.default_rng(9)
    base = rng.normal(1.0, 0.15, 5)
    real = np.array(base)
    sim = base * (1 + rng.normal(0.0, 0.005, 5))
    err, lo, hi, note = paired_interval(real, sim, "rel")
    assert "paired" in note and hi - lo < 0.03 and lo <= err <= hi
    _, wlo, whi, _ = welch_interval(real, sim, "rel")
    assert whi - wlo > 5 * (hi - lo)
    biased = base * 1.1
    _, lo, hi, _ = paired_interval(real, biased, "rel")
    assert lo == pytest.approx(0.1) and hi == pytest.approx(0.1)


def test_pooled_p95_detects_a_tail_difference():
    rng = np.random.default_rng(10)
    rm, rw = _side(rng, 4)
    sm, sw = _side(rng, 4)
    sw = [w * np.where(w > np.percentile(w, 80), 1.4, 1.0) for w in sw]  # heavier tail only
    cmp_ = compare((rm, rw), (sm, sw))
    row = next(r for r in cmp_.rows if r.name == "wait_p95_s")
    assert "pooled" in row.note and 0.25 < row.error < 0.6  # tail x1.4, sampling noise
    assert row.verdict == "FAIL"


def test_one_value_per_side_borrows_or_collapses_spread():
    err, lo, hi, note = welch_interval(np.array([1.0]), np.array([1.1, 1.0, 0.9]), "rel")
    assert "one real run" in note and lo < err < hi
    err, lo, hi, note = welch_interval(np.array([1.0]), np.array([1.02]), "rel")
    assert lo == hi == err and "no spread" in note


def test_wait_distribution_tests_separate_a_shifted_distribution():
    """KS on the pooled waits: identical distributions are not rejected, waits 30% longer are.
    Seeded, so deterministic; with a fresh seed the identical pair (1,500 vs 2,500 waits) is
    rejected at p < 0.01 one time in 100 (the test's size), and the shifted pair's D (~0.07
    expected for exponentials x1.3; its null 99% critical value ~0.05) fails to reject less
    than once in 1,000."""
    rng = np.random.default_rng(6)
    same = compare(_side(rng, 3), _side(rng, 5)).wait_tests
    shifted = compare(_side(rng, 3), _side(rng, 5, wait=1.3)).wait_tests
    assert same["ks_pvalue"] > 0.01 and shifted["ks_pvalue"] < 0.01
    assert shifted["ks_statistic"] > 2 * same["ks_statistic"]
    assert same["n_real"] == 3 * 500 and same["n_sim"] == 5 * 500
    assert "ad_statistic" in shifted and "information only" in shifted["note"]


def test_tolerance_none_reports_without_judging():
    rng = np.random.default_rng(8)
    cmp_ = compare(_side(rng, 4), _side(rng, 10, cpu=0.04), tolerances={"redis_cpu_s": None})
    row = next(r for r in cmp_.rows if r.name == "redis_cpu_s")
    assert row.verdict == "INFO" and row.error == pytest.approx(1.0, abs=0.05)
    assert cmp_.passed


def test_unknown_tolerance_and_empty_sides_are_input_errors():
    rng = np.random.default_rng(7)
    with pytest.raises(InputError):
        compare(_side(rng, 2), _side(rng, 2), tolerances={"nope": 0.1})
    with pytest.raises(InputError):
        compare(([], []), _side(rng, 2))


# ------------------------------------------------------------------------------------------
# the real replay
# ------------------------------------------------------------------------------------------
@pytest.mark.redis
def test_replay_serialises_tasks_and_counts_commands(redis_server):
    tr = _trace(8, 1.0, seed=11)
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60,
                        lock_timeout=600, use_event_driven=False)
    res = run_real(tr, cfg, redis_url=redis_server.url, time_scale=50, runs=1, idle_window_s=0.1)
    run = res.runs[0]
    assert not res.partial and len(run.records) == 8
    assert all(r.outcome == "acquired" for r in run.records)
    spans = sorted((r.acquired_s, r.gpu_end_s) for r in run.records)
    assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))  # one holder at a time
    cs, cl = run.commandstats, run.client_commands
    assert cs["GET"] == cl["GET"] + cl["EVAL"] and cs["DEL"] == cl["EVAL"]
    assert cs["SET"] == cl["SET"] and cs["PUBLISH"] == cl["PUBLISH"] == 8
    assert sum(r.attempts for r in run.records) == cl["GET"]  # every GET is an acquire-loop GET
    # tasks start on time: the median start lateness is below the trace's mean scaled gap
    # between arrivals (20 ms; later than that and arrivals would reorder). Measured over 40
    # replays of this trace while the e2e tests loaded both cores: p50 0.08-4.5 ms (p95, which
    # one stalled thread of 8 sets, reached 54 ms, so the old p95 < 5 ms band failed 3 in 30).
    # 20 ms is over 4x the worst median seen: fails by chance well under 1 in 100.
    assert run.lateness["start_p50_s"] < 0.020, run.lateness
    assert run.redis_cpu_s > 0
    m = run.metrics()
    assert m["success_rate"] == 1.0 and m["tasks"] == 8


@pytest.mark.redis
def test_replay_crashed_holder_frees_by_ttl_only(redis_server):
    rows = [dict(task_id="a", task_type="x", arrival_s=0.0, duration_s=2.0, crashed=True),
            dict(task_id="b", task_type="y", arrival_s=0.5, duration_s=1.0)]
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=1, max_wait_time=60,
                        lock_timeout=10, use_event_driven=True, fallback_timeout=3)
    res = run_real(trace_from_rows(rows), cfg, redis_url=redis_server.url, time_scale=20,
                   runs=1, idle_window_s=0.05)
    a, b = sorted(res.runs[0].records, key=lambda r: r.index)
    assert a.outcome == "crashed" and a.release is None
    # b waits for the 10 s TTL (0.5 s scaled) from a's acquisition, via event wait + fallback
    assert b.outcome == "acquired" and b.mechanism == "polling" and b.fell_back
    # a lower bound Redis sets (the key cannot expire early): no load can break it
    assert b.acquired_s >= a.acquired_s + 10 / 20 - 1e-3


@pytest.mark.redis
def test_redis_unreachable_is_a_clear_error():
    srv = PrivateRedis().start()
    url = srv.url
    srv.stop()
    with pytest.raises(RedisUnavailable, match="cannot reach Redis"):
        run_real(_trace(2, 1.0, seed=1), GpuLockConfig(), redis_url=url, time_scale=10)


@pytest.mark.redis
def test_redis_dying_mid_run_saves_partial_results(tmp_path):
    tr = _trace(20, 2.0, seed=12)
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60,
                        lock_timeout=600, use_event_driven=True)
    with PrivateRedis() as srv:
        # killed 0.5 s into the first run (the 20 tasks arrive over ~4 s at 10x)
        killer = threading.Timer(0.5, srv.kill)

        def progress(msg):
            if msg.startswith("real run 1/"):
                killer.start()

        try:
            with pytest.raises(RedisDiedDuringRun) as info:
                run_real(tr, cfg, redis_url=srv.url, time_scale=10, runs=2,
                         partial_path=tmp_path / "out.json", idle_window_s=0.1,
                         progress=progress)
        finally:
            killer.join()
    err = info.value
    assert err.partial.partial and err.partial.runs[-1].partial
    assert "partial" in str(err) and err.saved_to is not None
    assert err.saved_to.name == "out.partial.json"
    doc = json.loads(err.saved_to.read_text())
    assert doc["partial"] is True and doc["runs"][-1]["partial"] is True
    assert len(doc["runs"][-1]["records"]) < 20


@pytest.mark.redis
def test_lanes_replay_runs_side_by_side_each_against_its_own_server():
    """Two runs in two lanes (processes, each with a private redis-server): runs 0 and 1, every
    task of each, one holder at a time, and each run's INFO counters are its own (one shared
    server would count both runs' PUBLISHes); one round trip, the lanes' median, paces both."""
    tr = _trace(8, 1.0, seed=11)
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60,
                        lock_timeout=600, use_event_driven=False)
    res = run_real(tr, cfg, time_scale=50, runs=2, lanes=2, idle_window_s=0.1)
    assert [r.run for r in res.runs] == [0, 1] and not res.partial
    for run in res.runs:
        assert len(run.records) == 8 and all(r.outcome == "acquired" for r in run.records)
        spans = sorted((r.acquired_s, r.gpu_end_s) for r in run.records)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:]))
        cs, cl = run.commandstats, run.client_commands
        assert cs["PUBLISH"] == cl["PUBLISH"] == 8 and cs["SET"] == cl["SET"]
        assert cs["GET"] == cl["GET"] + cl["EVAL"]
    rtts = res.inputs["pace_rtt_s_by_lane"]
    assert res.inputs["lanes"] == 2 and len(rtts) == 2
    assert res.inputs["pace_rtt_s"] == pytest.approx(float(np.median(rtts)))


UNGUARDED = """
from gpusim.config import GpuLockConfig
from gpusim.real.replay import run_real
from gpusim.traces.format import trace_from_rows
rows = [dict(task_id=f"t{i}", task_type="ocr", arrival_s=float(i), duration_s=0.5)
        for i in range(4)]
cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60, lock_timeout=600,
                    use_event_driven=False)
res = run_real(trace_from_rows(rows), cfg, time_scale=50, runs=2, lanes=2, idle_window_s=0.05)
print("RUNS", [r.run for r in res.runs], flush=True)
"""


@pytest.mark.redis
def test_lanes_from_a_script_without_a_main_guard(tmp_path):
    """A spawned process runs its parent's main script again unless it is guarded by
    `if __name__ == "__main__":`; a lane must not (the script would replay in every lane)."""
    script = tmp_path / "unguarded.py"
    script.write_text(UNGUARDED)
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                          timeout=120, cwd=tmp_path)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.count("RUNS") == 1 and "RUNS [0, 1]" in done.stdout, done.stdout


@pytest.mark.redis
def test_a_lanes_redis_dying_saves_the_other_lanes_runs(tmp_path, monkeypatch):
    """Lane 1's redis-server is killed 1.5 s after the lanes are launched (a lane's interpreter
    starts in ~0.5 s; its 20 tasks arrive over ~4 s at 10x): lane 0's run completes and is
    kept, the failure ends the replay with the partial results saved."""
    started: list[PrivateRedis] = []
    real_start = PrivateRedis.start

    def start(self):
        started.append(self)
        return real_start(self)

    monkeypatch.setattr(PrivateRedis, "start", start)
    tr = _trace(20, 2.0, seed=12)
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60,
                        lock_timeout=600, use_event_driven=True)
    killer = threading.Timer(1.5, lambda: started[1].kill())

    def progress(msg):
        if msg.startswith("real runs 1-2 in 2 lanes"):
            killer.start()

    try:
        with pytest.raises(RedisDiedDuringRun) as info:
            run_real(tr, cfg, time_scale=10, runs=2, lanes=2, idle_window_s=0.1,
                     partial_path=tmp_path / "out.json", progress=progress)
    finally:
        killer.join()
    err = info.value
    complete = [r for r in err.partial.runs if not r.partial]
    assert [r.run for r in complete] == [0] and len(complete[0].records) == 20
    assert err.partial.partial and err.saved_to is not None
    doc = json.loads(err.saved_to.read_text())
    assert doc["partial"] is True and doc["inputs"]["lanes"] == 2
    assert not any(s.alive for s in started)  # the parent stopped every lane's server


def test_hold_cuda_without_cuda_is_skipped_clearly():
    try:
        import torch  # noqa: F401
        if torch.cuda.is_available():
            pytest.skip("CUDA present: the skip path cannot be exercised here")
    except ImportError:
        pass
    with pytest.raises(CudaUnavailable, match="skipped: no CUDA"):
        run_real(_trace(2, 1.0, seed=1), GpuLockConfig(), redis_url="redis://127.0.0.1:1/0",
                 time_scale=10, hold="cuda")


def test_bad_arguments_are_input_errors():
    tr = _trace(2, 1.0, seed=1)
    for kw in ({"time_scale": 0}, {"runs": 0}, {"hold": "gpu"}, {"lanes": 0},
               {"lanes": 3, "runs": 2}, {"lanes": 2, "runs": 2}):  # the last: a given Redis
        with pytest.raises(InputError):
            run_real(tr, GpuLockConfig(), redis_url="redis://127.0.0.1:1/0", **kw)


# ------------------------------------------------------------------------------------------
# end to end: real redis-server vs the simulation, both acquire paths
# ------------------------------------------------------------------------------------------
def _show(cmp_) -> str:
    return "\n".join(f"{r.name}: real={r.real_mean} sim={r.sim_mean} err={r.error} "
                     f"[{r.ci_low}, {r.ci_high}] {r.verdict}" for r in cmp_.rows) + \
        f"\nlateness={cmp_.lateness}\nnotes={cmp_.notes}"


# Redis CPU is judged in the e2e tests with a 50% band, not the default 25%: the real CPU per
# command moves with whatever else the host runs (up to 1.7x, gpusim.real.calibrate, "Redis CPU
# model"), and the control load follows the direction of a neighbour's load but not its size.
# On the shared 2-core machine, with other suites running, the event-driven test measured
# -36% [-40, -31] once (errors otherwise -5% to +14%). 50% still fails a model without the
# wake-up cost per command (dense costs alone predict about a quarter of the real CPU: -75%).
E2E_TOLERANCES = {"redis_cpu_s": 0.50}


def _validated(tr, cfg, **kw):
    """validate(), its table printed (pytest -s shows it)."""
    cmp_, real, sim, cal = validate(tr, cfg, **kw)
    print(f"\nE2E verdict {cmp_.verdict}\n{_show(cmp_)}\nE2E wakeups "
          f"{[(r.server_wakeups or 0) / sum(r.client_commands.values()) for r in real.runs]}")
    return cmp_, real, sim, cal


def _error(cmp_, name):
    return next(r.error for r in cmp_.rows if r.name == name)


# What these end-to-end tests can ask of a few short runs. The verdict is an equivalence test
# (PASS only when a whole 95% interval lies inside its band), and 60-80 tasks on one GPU hold
# only a dozen or two busy periods, so a faithful model is mostly INCONCLUSIVE here: what must
# never happen is a FAIL, a row whose whole interval lies outside its band. Each test also
# bounds the point errors of the mean wait and the GET count, which the earlier paired design
# measured over many repeats on this machine (see each test). The 2-hour 4-GPU reference case,
# where a verdict is expected, is measured in README ("Validation: what 5 minutes settle").
@pytest.mark.redis
@pytest.mark.slow
def test_validation_polling_is_not_failed(redis_server):
    """60 tasks on one GPU, ~75% busy, polling with backoff and jitter, a crashed holder whose
    key only the TTL frees, compressed 40x, four real runs paired with their simulated twins.

    Measured before (10 repeats of eight runs on the shared 2-core machine): mean-wait error
    -6.5% to +1.5%, every row within its band. Four runs double the variance of the mean
    (sd about 3.5%), so the 15% bounds below sit about 3.5 sd from the mean error: fails by
    chance well under once in 100 runs. A FAIL needs an interval wholly outside a band: a right
    model was FAILed in 3 of 400 sim-against-sim trials on the 4-GPU reference trace
    (bench/bench_validate.py); this short trace's few busy periods leave its rows mostly at too
    few effective degrees of freedom to be judged at all, so well under 1 in 100 here.
    """
    tr = _trace(60, 4.0, seed=7, crash_at=10)
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60,
                        lock_timeout=20, use_event_driven=False, fallback_timeout=5)
    cmp_, real, sim, cal = _validated(tr, cfg, redis_url=redis_server.url, time_scale=40,
                                      runs=4, seeds=4, tolerances=E2E_TOLERANCES)
    assert cmp_.verdict != "FAIL", _show(cmp_)
    assert abs(_error(cmp_, "wait_mean_s")) < 0.15 and abs(_error(cmp_, "GET")) < 0.15, \
        _show(cmp_)
    assert cmp_.n_cycles >= 1 and cmp_.n_pairs == 4  # ~75% busy: a handful of busy periods
    # The replay keeps up with this compression: the worst run's p95 sleep overshoot is below
    # the smallest scaled interval (12.5 ms); beyond it the replay would no longer be the trace.
    # Not tighter: the overshoot measures the machine, not the model. Repeats measured 0.2-0.6
    # ms; 2.9 and 7.3 ms while other test suites loaded both cores. Fails by chance only when
    # the machine is loaded ~2x beyond that: well under once in 100 runs.
    assert cmp_.lateness["sleep_overshoot_p95_s"] < 0.0125, _show(cmp_)
    assert cmp_.wait_tests["n_queued_real"] > 0 and 0 <= cmp_.wait_tests["ks_queued_pvalue"] <= 1
    assert sum(real.runs[0].commandstats.get(c, 0) for c in ("SUBSCRIBE", "UNSUBSCRIBE")) == 0
    # Redis CPU was predicted with a control load measured during each run (same host)
    assert all(r.reference and r.reference["commands"] > 0 for r in real.runs)
    assert len(cal["reference_extra_us_by_run"]) == len(real.runs)
    # the CPU model's premise: each client command is one redis-server wake-up (~1 context
    # switch per command; serverCron's ticks add a few)
    for r in real.runs:
        if r.server_wakeups is not None:
            assert 0.8 < r.server_wakeups / sum(r.client_commands.values()) < 1.6, _show(cmp_)


@pytest.mark.redis
@pytest.mark.slow
def test_validation_event_driven_is_not_failed(redis_server):
    """80 tasks, ~50% busy, event-driven with a crashed holder (waiters fall back from the event
    wait to polling until the TTL frees the key), compressed 80x, four real runs.

    Measured before (13 repeats of eight runs): mean-wait error -11.7% to +1.1% (event wake-ups
    of the replay come a few ms late on a loaded 2-core machine; the model has no such delay),
    Redis CPU down to -38%. With four runs the bounds below (mean wait and GET within 25%) sit
    about 3 sd beyond the worst error seen: under once in 100 runs. The herd after a release
    is a random race in the model and in the replay alike.
    """
    tr = _trace(80, 6.0, seed=7, crash_at="busy")
    cfg = GpuLockConfig(poll_interval=0.5, max_poll_interval=2, max_wait_time=60,
                        lock_timeout=20, use_event_driven=True, fallback_timeout=5)
    cmp_, real, sim, cal = _validated(tr, cfg, redis_url=redis_server.url, time_scale=80,
                                      runs=4, seeds=4, tolerances=E2E_TOLERANCES)
    assert cmp_.verdict != "FAIL", _show(cmp_)
    assert abs(_error(cmp_, "wait_mean_s")) < 0.25 and abs(_error(cmp_, "GET")) < 0.25, \
        _show(cmp_)
    judged = {r.name for r in cmp_.rows if r.verdict != "INFO"}
    assert {"wait_mean_s", "wait_p95_s", "success_rate", "GET", "SET", "redis_cpu_s"} <= judged
    mechs = {r.mechanism for run in real.runs for r in run.records}
    assert {"immediate", "event", "polling"} <= mechs
    assert all(run.commandstats.get("SUBSCRIBE", 0) > 0 for run in real.runs)


# ------------------------------------------------------------------------------------------
# CLI
# ------------------------------------------------------------------------------------------
@pytest.fixture
def app():
    import typer

    from gpusim.cli.real import register
    a = typer.Typer()
    register(a)
    return a


def _files(tmp_path, n=8):
    tr = tmp_path / "trace.jsonl"
    rng = np.random.default_rng(3)
    t = 0.0
    with tr.open("w") as fh:
        for i in range(n):
            fh.write(json.dumps({"task_id": f"t{i}", "task_type": "ocr", "arrival_s": round(t, 3),
                                 "duration_s": round(float(rng.uniform(1, 3)), 3)}) + "\n")
            t += float(rng.exponential(2.0))
    cfg = tmp_path / "config.yml"
    cfg.write_text("gpu_lock:\n  poll_interval: 0.5\n  max_poll_interval: 2\n"
                   "  max_wait_time: 60\n  lock_timeout: 600\n  use_event_driven: false\n")
    return tr, cfg


@pytest.mark.redis
def test_cli_calibrate_redis_writes_yaml(app, redis_server, tmp_path):
    out = tmp_path / "redis.yml"
    res = CliRunner().invoke(app, ["calibrate-redis", "--redis-url", redis_server.url,
                                   "--out", str(out), "--seconds", "0.05"])
    assert res.exit_code == 0, res.output
    doc = yaml.safe_load(out.read_text())
    assert set(doc["redis"]) == {"rtt_s", "cpu_us", "background_ops_per_s"}
    assert "GET" in res.output


@pytest.mark.redis
def test_cli_validate_bad_input_and_unreachable_exit_2(app, tmp_path):
    tr, cfg = _files(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(tmp_path / "nope.yml")])
    assert res.exit_code == 2
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg), "--runs", "0"])
    assert res.exit_code == 2
    srv = PrivateRedis().start()
    url = srv.url
    srv.stop()
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg), "--redis-url", url])
    assert res.exit_code == 2 and "cannot reach Redis" in res.output


@pytest.mark.redis
def test_cli_validate_prints_table_and_json(app, redis_server, tmp_path):
    """A short trace (8 tasks, 2 runs): whatever the verdict, the exit code, the printed verdict
    line and the JSON's verdict agree, and the title counts what was compared."""
    tr, cfg = _files(tmp_path)
    out = tmp_path / "v.json"
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg), "--redis-url",
                                   redis_server.url, "--time-scale", "50", "--runs", "2",
                                   "--seeds", "3", "--json", str(out)])
    doc = json.loads(out.read_text())
    verdict = doc["verdict"]
    assert verdict == doc["comparison"]["verdict"]
    assert res.exit_code == {"PASS": 0, "FAIL": 1, "INCONCLUSIVE": 3}[verdict], res.output
    assert f"validation {verdict}" in res.output.replace("PASSES", "PASS").replace("FAILS", "FAIL")
    rows = {r["name"]: r["verdict"] for r in doc["comparison"]["rows"]}
    judged = [v for v in rows.values() if v not in ("INFO",)]
    if verdict == "PASS":
        assert set(judged) == {"PASS"}
    elif verdict == "FAIL":
        assert "FAIL" in judged
    else:
        assert "FAIL" not in judged and "INCONCLUSIVE" in judged and "--runs" in res.output
    assert "8 tasks" in res.output and "2 real runs vs 3 simulated seeds, 2 CRN pairs judged" \
        in res.output
    assert doc["comparison"]["n_sim_seeds"] == 3 and doc["comparison"]["n_pairs"] == 2
    assert "wait mean" in res.output and "verdict" in res.output
    assert len(doc["real"]["runs"]) == 2 and doc["real"]["partial"] is False
    assert set(rows) >= {"wait_mean_s", "GET", "redis_cpu_s"}


def _fake_validation(monkeypatch, verdicts: dict[str, str], calls: list | None = None):
    """Replace the validation behind the CLI with a comparison whose rows have these verdicts."""
    from gpusim.real import validate as v
    from gpusim.real.comparison import Comparison, MetricRow
    from gpusim.real.replay import RealResult

    def fake(tr, settings, **kw):
        if calls is not None:
            calls.append(kw)
        rows = [MetricRow(n, n, "rel", 1.0, 0.1, 1.0, 0.1, 0.0,
                          -0.4 if verdict == "INCONCLUSIVE" else (0.2 if verdict == "FAIL"
                                                                  else -0.01),
                          0.4 if verdict == "INCONCLUSIVE" else (0.3 if verdict == "FAIL"
                                                                 else 0.01),
                          0.05, verdict, None) for n, verdict in verdicts.items()]

        class Sim:
            inputs, metrics, replications = {}, {}, []
        return Comparison(rows, {}, kw["runs"], kw["seeds"], n_pairs=kw["runs"]), \
            RealResult([], {}), Sim(), None

    monkeypatch.setattr(v, "validate", fake)


@pytest.mark.parametrize("verdicts,code,line", [
    ({"wait_mean_s": "PASS", "GET": "PASS"}, 0, "validation PASSES"),
    ({"wait_mean_s": "FAIL", "GET": "INCONCLUSIVE"}, 1, "validation FAILS"),
    ({"wait_mean_s": "PASS", "GET": "INCONCLUSIVE"}, 3, "validation INCONCLUSIVE"),
], ids=["pass", "fail", "inconclusive"])
def test_cli_validate_exit_code_follows_the_verdict(app, tmp_path, monkeypatch, verdicts, code,
                                                    line):
    tr, cfg = _files(tmp_path)
    _fake_validation(monkeypatch, verdicts)
    out = tmp_path / "v.json"
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg), "--runs", "2",
                                   "--seeds", "10", "--json", str(out)])
    assert res.exit_code == code, res.output
    assert line in res.output
    assert json.loads(out.read_text())["verdict"] == {0: "PASS", 1: "FAIL", 3: "INCONCLUSIVE"}[code]
    assert "2 real runs vs 10 simulated seeds, 2 CRN pairs judged" in res.output
    if code == 3:  # what to do, in numbers: the row, its interval vs the band, and more runs
        assert "too little data" in res.output
        assert "GET +0.0% ±40.0% (tolerance ±5%)" in res.output
        assert "--runs 128 " in res.output  # (0.40 / 0.05)^2 = 64 x 2 runs


@pytest.mark.parametrize("args,runs,seeds,lanes", [
    ([], 6, 10, 2),                              # default_lanes (patched: 2), 3 runs a lane
    (["--redis-url", "redis://h:1/0"], 3, 10, 1),  # a given Redis: one run at a time
    (["--reference"], 3, 10, 1),                 # so with a control load
    (["--lanes", "4"], 12, 12, 4),               # seeds: as many as runs, to pair every run
    (["--runs", "1"], 1, 10, 1),                 # at most one lane per run
    (["--runs", "5", "--seeds", "7"], 5, 7, 2),  # given values are kept as given
], ids=["defaults", "redis-url", "reference", "lanes4", "runs1", "given"])
def test_cli_validate_defaults_runs_seeds_and_lanes(app, tmp_path, monkeypatch, args, runs,
                                                    seeds, lanes):
    from gpusim.real import lanes as lanes_mod
    monkeypatch.setattr(lanes_mod, "default_lanes", lambda: 2)
    tr, cfg = _files(tmp_path)
    calls: list = []
    _fake_validation(monkeypatch, {"GET": "PASS"}, calls)
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg), *args])
    assert res.exit_code == 0, res.output
    assert (calls[0]["runs"], calls[0]["seeds"], calls[0]["lanes"]) == (runs, seeds, lanes)


def test_cli_validate_bad_json_path_fails_before_the_run(app, tmp_path, monkeypatch):
    tr, cfg = _files(tmp_path)
    calls: list = []
    _fake_validation(monkeypatch, {"GET": "PASS"}, calls)
    for bad in (tmp_path / "no" / "v.json", tmp_path):
        res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg),
                                       "--json", str(bad)])
        assert res.exit_code == 2 and "cannot write" in res.output, res.output
    assert calls == []  # nothing ran


def test_cli_validate_hold_cuda_without_cuda(app, tmp_path):
    try:
        import torch
        if torch.cuda.is_available():
            pytest.skip("CUDA present")
    except ImportError:
        pass
    tr, cfg = _files(tmp_path)
    res = CliRunner().invoke(app, ["validate", str(tr), "--config", str(cfg), "--hold", "cuda"])
    # nothing was judged: inconclusive (3), not a failure of the model
    assert res.exit_code == 3 and "skipped: no CUDA" in res.output


def test_cli_validate_help_lists_exit_codes(app):
    res = CliRunner().invoke(app, ["validate", "--help"])
    assert res.exit_code == 0 and "Exit codes" in res.output and "3 inconclusive" in res.output
