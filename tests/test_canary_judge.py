"""`gpusim canary judge`: verdicts from observed outcomes, exit codes, refusals; and the judge
on outcomes of real replays against a real redis-server (PASS, FAIL, INSUFFICIENT_DATA).

The real replays use `gpusim.real.outcomes.outcome_rows` (what `gpusim validate --outcomes`
writes) on a two-node cluster whose first node runs the candidate and the second the baseline,
one private Redis for both: the canary of GPU_LOCK_CONFIG_002 in small.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpusim import load_cluster, parse_lock_settings, trace_from_rows, write_trace
from gpusim.cli.app import app
from gpusim.config import config_digest
from gpusim.traces.format import write_rows

from advisor.rollout.judge import _hodges_lehmann, compare_waits
from advisor.rollout.stages import Waits
from tests.canary_support import (PRODUCTION, SPEC_CANDIDATE, burst_rows, light_rows,
                                  read_json, two_node_cluster, write_rec)

runner = CliRunner()
POLLING = dict(PRODUCTION, use_event_driven=False)
FAST_POLLING = dict(POLLING, poll_interval=0.5, max_poll_interval=5.0)
# predicted no timeouts: the first n at which 0 / n passes the 5% gate, n > z^2 x 19 (72.99)
NEED = math.floor(1.959963984540054 ** 2 * 19) + 1


def _settings(values: dict):
    return parse_lock_settings({"gpu_lock": values}, environ={})


def make_plan(tmp: Path, rows: list[dict], baseline: dict, candidate: dict) -> Path:
    """A one-stage plan (half the nodes: n0 canary, n1 control) over the trace of `rows`."""
    tr_path = tmp / "trace.jsonl"
    write_trace(trace_from_rows(rows), tr_path)
    k = two_node_cluster(tmp / "cluster.yml")
    rec = write_rec(tmp / "rec.json", tr_path, k, baseline, candidate)
    span_h = max(r["arrival_s"] for r in rows) / 3600
    stages = tmp / "stages.yml"
    stages.write_text(f"stages:\n  - {{name: canary, share: 0.5, duration_h: {span_h * 1.01}}}\n")
    res = runner.invoke(app, ["canary", "plan", str(rec), "--out", str(tmp / "plan.json"),
                              "--stages", str(stages), "--replications", "2"])
    assert res.exit_code == 0, res.output
    return tmp / "plan.json"


def observed(node: str, waits, timeouts: int = 0, digest: str | None = None) -> list[dict]:
    rows = []
    for i, w in enumerate(waits):
        out = "timeout" if i < timeouts else "acquired"
        row = {"task_id": f"{node}-{i}", "task_type": "paddleocr", "arrival_s": 10.0 * i,
               "node": node, "gpu": 0, "wait_s": float(w), "outcome": out}
        if out == "acquired":
            row["duration_s"] = 2.0
        if digest is not None:
            row["config_digest"] = digest
        rows.append(row)
    return rows


def judge(tmp: Path, plan: Path, canary: list[dict], control: list[dict], *extra: str):
    c, d = tmp / "canary.jsonl", tmp / "control.jsonl"
    write_rows(canary, c)
    write_rows(control, d)
    res = runner.invoke(app, ["canary", "judge", str(plan), "--canary", str(c), "--control",
                              str(d), "--json", str(tmp / "verdict.json"), *extra])
    return res, (read_json(tmp / "verdict.json") if (tmp / "verdict.json").exists() else None)


@pytest.fixture(scope="module")
def light_plan(tmp_path_factory) -> Path:
    return make_plan(tmp_path_factory.mktemp("light"), light_rows(150, seed=5), POLLING,
                     FAST_POLLING)


# ---------------------------------------------------------------------------- no Redis
def test_plan_minimum_for_a_timeout_free_candidate(light_plan):
    st = read_json(light_plan)["stages"][0]
    assert st["min_acquisitions"] == NEED


def test_clean_canary_passes_and_waits_are_compared(light_plan, tmp_path):
    ctl = np.linspace(1, 100, 200)
    res, doc = judge(tmp_path, light_plan, observed("n0", ctl), observed("n1", ctl))
    assert res.exit_code == 0 and doc["verdict"] == "PASS", res.output
    assert doc["waits"]["hodges_lehmann_shift_s"] == 0 and doc["waits"]["result"] == "PASS"
    assert doc["acquisitions"] == {"seen": 200, "needed": NEED}


@pytest.mark.parametrize("timeouts,verdict,code", [(12, "MARGINAL", 4), (40, "FAIL", 1)])
def test_timeouts_make_the_canary_marginal_then_fail(light_plan, tmp_path, timeouts, verdict,
                                                     code):
    # 12 / 200 = 6%: the 95% Wilson interval [3.5%, 10.2%] straddles the 5% gate; 40 / 200
    # = 20%: [15%, 26%] lies above it, and above the 10% rollback trigger
    ctl = np.linspace(1, 100, 200)
    res, doc = judge(tmp_path, light_plan, observed("n0", ctl, timeouts), observed("n1", ctl))
    assert (res.exit_code, doc["verdict"]) == (code, verdict), res.output
    fired = [t["name"] for t in doc["rollback_triggers"] if t["fired"]]
    assert (fired != []) == (verdict == "FAIL")
    if verdict == "FAIL":
        assert "roll back now" in res.output


@pytest.mark.parametrize("factor,verdict", [(1.0, "PASS"), (1.3, "MARGINAL"), (3.0, "FAIL")])
def test_longer_canary_waits_are_judged_kayenta_style(light_plan, tmp_path, factor, verdict):
    # waits uniform on [1, 100] s; the canary's scaled by `factor`: CLES = P(f a > b) for a, b
    # uniform on [1, 100] is 0.5, 0.618 and 0.84 (integrated by hand): below 0.6, between 0.6
    # and 0.7, above 0.7; with 200 a side each shift is significant (p < 0.05)
    ctl = np.linspace(1, 100, 200)
    res, doc = judge(tmp_path, light_plan, observed("n0", ctl * factor), observed("n1", ctl))
    assert doc["verdict"] == verdict, res.output
    assert doc["waits"]["mean_ratio"] == pytest.approx(factor)
    expect = {1.0: 0.5, 1.3: 0.618, 3.0: 0.84}[factor]
    assert doc["waits"]["cles"] == pytest.approx(expect, abs=0.01)


def test_effect_sizes_against_brute_force():
    rng = np.random.default_rng(0)
    x, y = rng.exponential(5, 150) + 2.0, rng.exponential(5, 120)
    assert _hodges_lehmann(x, y) == pytest.approx(float(np.median(np.subtract.outer(x, y))))
    row = compare_waits(x, y, Waits().model_dump())
    greater = (x[:, None] > y[None, :]).mean() + 0.5 * (x[:, None] == y[None, :]).mean()
    assert row["cles"] == pytest.approx(greater)
    assert row["p_value"] < 0.05


def test_few_acquisitions_are_insufficient_data(light_plan, tmp_path):
    ctl = np.linspace(1, 100, 30)
    res, doc = judge(tmp_path, light_plan, observed("n0", ctl[:20]), observed("n1", ctl))
    assert (res.exit_code, doc["verdict"]) == (3, "INSUFFICIENT_DATA"), res.output
    assert f"20 seen, {NEED} needed" in res.output


def test_rows_without_outcome_are_refused_naming_the_first(light_plan, tmp_path):
    rows = observed("n0", np.ones(10))
    del rows[3]["outcome"]
    rows[3]["duration_s"] = 2.0
    res, doc = judge(tmp_path, light_plan, rows, observed("n1", np.ones(30)))
    assert res.exit_code == 2 and doc is None
    assert "line 4" in res.output and "outcome" in res.output, res.output


def test_a_canary_row_under_another_config_is_refused(light_plan, tmp_path):
    wrong = config_digest(_settings(POLLING))      # the baseline's, on a canary row
    res, _ = judge(tmp_path, light_plan, observed("n0", np.ones(80), digest=wrong),
                   observed("n1", np.ones(30)))
    assert res.exit_code == 2 and "config_digest" in res.output, res.output


def test_missing_control_and_bad_stage_are_bad_input(light_plan, tmp_path):
    c = tmp_path / "c.jsonl"
    write_rows(observed("n0", np.ones(80)), c)
    res = runner.invoke(app, ["canary", "judge", str(light_plan), "--canary", str(c)])
    assert res.exit_code == 2 and "--control" in res.output
    res = runner.invoke(app, ["canary", "judge", str(light_plan), "--canary", str(c),
                              "--control", str(c), "--stage", "2"])
    assert res.exit_code == 2 and "stages 1 to 1" in res.output


def test_final_stage_needs_no_control_and_redis_cpu_is_judged_when_given(light_plan):
    from advisor.rollout.judge import judge as judge_core, load_plan
    plan = load_plan(str(light_plan))
    plan["stages"][0]["control_nodes"] = []          # as the final (100%) stage has
    canary = [trace_from_rows(observed("n0", np.linspace(1, 100, 200)))]
    doc = judge_core(plan, 1, canary, [])
    assert doc["verdict"] == "PASS" and doc["waits"]["result"] == "NOT_JUDGED"
    hot = judge_core(plan, 1, canary, [], redis_cpu=0.9)   # the shared Redis above 80%
    assert hot["verdict"] == "FAIL"
    assert [t["name"] for t in hot["rollback_triggers"] if t["fired"]] == ["redis_cpu"]


# ---------------------------------------------------------------------------- real Redis
def replay_canary(tmp: Path, rows: list[dict], baseline: dict, candidate: dict,
                  redis_url: str, time_scale: float) -> tuple[list[dict], list[dict]]:
    """Replay on n0 (candidate) and n1 (baseline) sharing one real Redis; the observed rows
    of each node, as `gpusim validate --outcomes` writes them."""
    from gpusim.real.outcomes import outcome_rows
    from gpusim.real.replay import run_real

    vals = ", ".join(f"{k}: {str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in candidate.items())
    k = tmp / "canary_cluster.yml"
    k.write_text(f"nodes: [{{name: n0, config: {{gpu_lock: {{{vals}}}}}}}, {{name: n1}}]\n"
                 "gpus_per_node: 1\nworkers_per_service: 64\n")
    cluster = load_cluster(k)
    tr = trace_from_rows(rows)
    base = _settings(baseline)
    real = run_real(tr, base, redis_url=redis_url, time_scale=time_scale, cluster=cluster,
                    idle_window_s=0.1)
    out = outcome_rows(tr, real.runs[0], base, time_scale=time_scale, cluster=cluster)
    return [r for r in out if r["node"] == "n0"], [r for r in out if r["node"] == "n1"]


@pytest.mark.redis
def test_real_replays_pass_a_good_candidate_and_too_few_are_insufficient(
        light_plan, redis_server, tmp_path):
    # 150 tasks a node, holds of 2 s every 4 s on average (load 0.5: about half the tasks
    # queue), polling path: the candidate polls every 0.5 s, today's config every 2 s growing
    # to 10 s. The replay lasts ~3 s at 200x and max_wait_time is 1800 s (9 s real), so the
    # canary cannot time out: every gate PASSes (0 / 150: Wilson upper 2.5%). The waits: the
    # canary is no worse (shorter notice delays), but at 200x the immediate acquisitions' waits
    # are replay noise of about a millisecond (0.2 s of trace time) on both nodes, so the
    # Mann-Whitney comparison sits near the null (measured: CLES 0.50, p 0.47). Even under an
    # exact null the CLES of 150 against 150 has sd sqrt(301 / (12 x 150^2)) = 0.033, so it
    # exceeds the 0.6 that makes a MARGINAL with probability P(z > 3.0) = 0.13%.
    canary, control = replay_canary(tmp_path, light_rows(150, seed=5), POLLING, FAST_POLLING,
                                    redis_server.url, 200.0)
    assert len(canary) == 150 and all(r["outcome"] == "acquired" for r in canary)
    res, doc = judge(tmp_path, light_plan, canary, control)
    assert (res.exit_code, doc["verdict"]) == (0, "PASS"), res.output
    # the same real outcomes, seen for a shorter while: too few acquisitions to judge
    short = tmp_path / "short"
    short.mkdir()
    res, doc = judge(short, light_plan, canary[:20], control[:40])
    assert (res.exit_code, doc["verdict"]) == (3, "INSUFFICIENT_DATA"), res.output
    assert doc["acquisitions"] == {"seen": 20, "needed": NEED}


@pytest.mark.redis
def test_real_replay_fails_the_spec_candidate_where_it_times_out(redis_server, tmp_path):
    # bursts of 3 Whisper-like tasks of 200 s on each node: under the spec's candidate the
    # third waits 400 s > max_wait_time 300 s and gives up (1 in 3), with 100 s (0.1 s real
    # at 1000x) between the give-up and the release, far beyond the replay's ms lateness;
    # under today's 1800 s none gives up. 10 / 30 timeouts: Wilson [19%, 51%] lies above the
    # 5% gate and the 10% trigger; even 5 / 30 would ([7%, 34%] above 5%) still FAIL.
    rows = burst_rows(10)
    plan = make_plan(tmp_path, rows, PRODUCTION, SPEC_CANDIDATE)
    assert read_json(plan)["stages"][0]["predicted_verdict"] == "FAIL"
    canary, control = replay_canary(tmp_path, rows, PRODUCTION, SPEC_CANDIDATE,
                                    redis_server.url, 1000.0)
    assert all(r["outcome"] == "acquired" for r in control)
    res, doc = judge(tmp_path, plan, canary, control)
    assert (res.exit_code, doc["verdict"]) == (1, "FAIL"), res.output
    assert doc["canary"]["timeouts"] >= 5
    assert {t["name"] for t in doc["rollback_triggers"] if t["fired"]} >= {"timeout_rate"}
