"""`gpusim canary plan`: staged fleet, rounding, workload over a stage, power calculation, the
Argo Rollouts export, refusal of an infeasible rec.json. Deterministic: no test here judges a
random outcome (seeded simulations are compared with each other, never with copied numbers).
"""

from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pytest
import yaml
from typer.testing import CliRunner

from gpusim import InputError, trace_from_rows, write_trace
from gpusim.cli.app import app

from advisor.rollout import power
from advisor.rollout.argo import ARGS, wilson_promql
from advisor.rollout.fleet import stage_workload
from advisor.rollout.stages import canary_count
from tests.canary_support import (PRODUCTION, ROOT, light_rows, read_json, two_node_cluster,
                                  write_rec)

runner = CliRunner()
SAMPLE = ROOT / "traces" / "sample_2node_4gpu_day.csv"
CLUSTER = ROOT / "examples" / "cluster.yml"
# what `gpusim tune` recommends on the 2-node sample with the wait gate at 0% and the timeout
# gate at 10% (its spec gates are infeasible there: see README); a fixed input here
TUNED = dict(PRODUCTION, poll_interval=0.626, max_wait_time=1120.0, lock_timeout=1540,
             max_poll_interval=5.16)


# ---------------------------------------------------------------------------- rounding
@pytest.mark.parametrize("nodes,share,expect", [
    (2, 0.10, 1),    # 0.2 -> 0, raised to one canary
    (2, 0.50, 1),    # 1
    (3, 0.50, 2),    # 1.5 -> 2 (half up), one control left
    (2, 0.95, 1),    # 1.9 -> 2, lowered: one control node stays
    (20, 0.10, 2),
    (2, 1.0, 2),     # the final stage: every node
])
def test_canary_node_count_is_rounded_half_up_with_one_canary_and_one_control(nodes, share,
                                                                              expect):
    k, note = canary_count(nodes, share)
    assert k == expect, note
    if share < 1:
        assert 1 <= k <= nodes - 1


def test_one_node_has_no_control_for_a_partial_stage():
    with pytest.raises(InputError, match="at least 2 nodes"):
        canary_count(1, 0.1)


# ---------------------------------------------------------------------------- power
def _brute_power(n: int, p0: float, p1: float, op: str) -> float:
    """P(the judge PASSes the gate) summed over every outcome, the interval computed by
    power.wilson itself (not the closed form power_at uses)."""
    from scipy.stats import binom
    pmf = binom.pmf(np.arange(n + 1), n, p1)
    passes = [(lo >= p0 if op == ">=" else hi < p0)
              for lo, hi in (power.wilson(x, n) for x in range(n + 1))]
    return float(pmf[np.array(passes)].sum())


@pytest.mark.parametrize("p0,p1,op", [(0.05, 0.02, "<"), (0.10, 0.05, "<"),
                                      (0.95, 0.985, ">="), (0.05, 0.0, "<")])
def test_exact_n_is_the_first_n_where_the_judges_own_test_has_power(p0, p1, op):
    size = power.gate_size(p0, p1, op)
    n = size.n_exact
    assert n is not None and size.decide == "pass"
    # the closed form agrees with summing the judge's Wilson test over every outcome
    for m in (n - 1, n, n + 7):
        assert power.power_at(np.array([m]), p0, p1, op)[0] == pytest.approx(
            _brute_power(m, p0, p1, op), abs=1e-9)
    assert _brute_power(n, p0, p1, op) >= power.TARGET_POWER
    assert all(_brute_power(m, p0, p1, op) < power.TARGET_POWER for m in range(max(1, n - 30), n))


@pytest.mark.parametrize("p0,p1", [(0.05, 0.02), (0.10, 0.05), (0.05, 0.03)])
def test_normal_approximation_is_close_where_it_should_be(p0, p1):
    # np1 and n(1-p1) are large here, so the textbook formula and the exact binomial n agree
    # within the binomial's saw-tooth (a few %); they need not agree at p1 = 0
    size = power.gate_size(p0, p1, "<")
    assert size.n_exact == pytest.approx(size.n_normal, rel=0.12)


def test_a_predicted_zero_rate_needs_the_n_where_zero_events_pass():
    # with p1 = 0 every sample shows 0 events: the minimum is the first n at which 0 / n has a
    # Wilson upper bound below the threshold, z^2 / (n + z^2) < p0 <=> n > z^2 (1 - p0) / p0
    n = power.gate_size(0.05, 0.0, "<").n_exact
    assert n == math.floor(power.Z_975 ** 2 * 0.95 / 0.05) + 1
    assert power.wilson(0, n)[1] < 0.05 <= power.wilson(0, n - 1)[1]


def test_a_bad_prediction_is_sized_to_show_the_failure_and_the_threshold_cannot_be_sized():
    size = power.gate_size(0.05, 0.15, "<")
    assert size.decide == "fail" and size.n_exact is not None
    assert power.power_at(np.array([size.n_exact]), 0.05, 0.15, "<", decide="fail")[0] >= 0.8
    assert power.gate_size(0.05, 0.05, "<").n_exact is None


# ---------------------------------------------------------------------------- workload
def test_a_short_trace_is_repeated_back_to_back_and_cut_at_the_stage_end():
    tr = trace_from_rows(light_rows(30, seed=1))
    span = float(tr.columns.arrival_s[-1])
    wl, info = stage_workload(tr, 2.5 * span)
    assert info["copies"] == 3 and "repeated 3 times" in info["method"]
    arr = wl.columns.arrival_s
    assert arr.max() < 2.5 * span and len(set(wl.task_ids)) == len(wl)
    period = info["period_s"]
    assert period == pytest.approx(span + span / (len(tr) - 1))
    # copy 1 is the trace shifted by one period, task for task
    first = np.sort(tr.columns.arrival_s)
    second = np.sort(arr[(arr >= period) & (arr < 2 * period)]) - period
    np.testing.assert_allclose(second, first, atol=1e-9)
    cut, info = stage_workload(tr, span / 2)
    assert info["copies"] == 1 and cut.columns.arrival_s.max() < span / 2


# ---------------------------------------------------------------------------- the plan
@pytest.fixture(scope="module")
def sample_plan(tmp_path_factory):
    d = tmp_path_factory.mktemp("plan")
    rec = write_rec(d / "rec.json", SAMPLE, CLUSTER, PRODUCTION, TUNED)
    res = runner.invoke(app, ["canary", "plan", str(rec), "--out", str(d / "plan.json"),
                              "--argo", str(d / "argo.yaml"), "--replications", "2"])
    assert res.exit_code == 0, res.output
    return read_json(d / "plan.json"), (d / "argo.yaml").read_text(), res.output


def test_plan_for_the_two_node_sample(sample_plan):
    plan, _, printed = sample_plan
    assert plan["schema"] == "gpusim.canary-plan/1"
    s1, s2, s3 = plan["stages"]
    assert (s1["canary_nodes"], s1["control_nodes"]) == (["node0"], ["node1"])
    assert "raised to 1" in s1["rounding"]
    assert s2["duration_h"] == 48 and s2["workload"]["copies"] >= 2
    assert s3["approval_before"] and s3["control_nodes"] == [] and s3["predicted"]["control"] \
        is None
    for st in plan["stages"]:
        assert [g["name"] for g in st["gates"]] == ["success_rate", "acquisition_failure_rate",
                                                     "timeout_rate", "redis_cpu"]
        for side in ("canary", "control"):
            if st["predicted"][side] is None:
                continue
            for k in ("success_rate", "timeout_rate", "wait_mean_s"):
                est = st["predicted"][side][k]
                assert est["ci95"][0] <= est["mean"] <= est["ci95"][1], (st["name"], side, k)
        rates = [g for g in st["gates"] if g["metric"] != "redis_cpu_peak_1m"]
        assert st["min_acquisitions"] == max(g["min_acquisitions"]["n_exact"] for g in rates)
        assert st["expected_hours_to_min"] == pytest.approx(
            st["min_acquisitions"] / st["canary_acquisitions_per_hour"])
        trig = {t["name"]: t["threshold"] for t in st["rollback_triggers"]}
        assert trig["timeout_rate"] == 0.10   # the spec's GPU_LOCK_CONFIG_004 figure
    # the final stage's canary is the whole fleet: its rates are the fleet's own metrics
    for k in ("success_rate", "timeout_rate"):
        assert s3["predicted"]["canary"][k]["mean"] == pytest.approx(
            s3["predicted"]["fleet"][k]["mean"], rel=1e-12)
    assert "stage 1 canary" in printed


ARGO_METRIC_KEYS = {"name", "provider", "interval", "initialDelay", "count", "failureLimit",
                    "inconclusiveLimit", "consecutiveErrorLimit", "successCondition",
                    "failureCondition"}   # the CRD's metric properties (those we may use)
DURATION = re.compile(r"^\d+(ms|s|m|h)$")
DNS_1123 = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")


def check_analysis_template(doc: dict) -> None:
    """The fields the AnalysisTemplate CRD requires and types (argoproj/argo-rollouts,
    manifests/crds/analysis-template-crd.yaml: spec.metrics required, a metric needs name and
    provider, an arg needs name; argoproj.github.io/argo-rollouts/analysis/prometheus for
    provider.prometheus.address / query)."""
    assert doc["apiVersion"] == "argoproj.io/v1alpha1" and doc["kind"] == "AnalysisTemplate"
    assert DNS_1123.match(doc["metadata"]["name"]) and len(doc["metadata"]["name"]) <= 253
    spec = doc["spec"]
    args = {a["name"] for a in spec.get("args", [])}
    assert all(isinstance(a["name"], str) and isinstance(a.get("value", ""), str)
               for a in spec.get("args", []))
    assert spec["metrics"], "spec.metrics is required and non-empty"
    names = [m["name"] for m in spec["metrics"]]
    assert len(set(names)) == len(names)
    for m in spec["metrics"]:
        assert set(m) <= ARGO_METRIC_KEYS and {"name", "provider"} <= set(m), m.keys()
        assert list(m["provider"]) == ["prometheus"]
        prom = m["provider"]["prometheus"]
        assert isinstance(prom["address"], str) and isinstance(prom["query"], str)
        for ref in re.findall(r"\{\{\s*args\.([\w-]+)\s*\}\}", prom["query"]):
            assert ref in args, ref
        for k in ("interval", "initialDelay"):
            if k in m:
                assert DURATION.match(m[k]), (k, m[k])
        for k in ("count", "failureLimit"):
            if k in m:
                assert isinstance(m[k], int) and m[k] >= 0
        for k in ("successCondition", "failureCondition"):
            if k in m:
                assert m[k].startswith("result[0] ")
        assert "successCondition" in m or "failureCondition" in m


def test_argo_export_has_the_crd_required_fields_and_the_plan_thresholds(sample_plan):
    plan, text, _ = sample_plan
    docs = list(yaml.safe_load_all(text))
    assert len(docs) == len(plan["stages"])
    for doc, st in zip(docs, plan["stages"]):
        check_analysis_template(doc)
        assert {a["name"] for a in doc["spec"]["args"]} == set(ARGS)
        by = {m["name"]: m for m in doc["spec"]["metrics"]}
        assert by["timeout-rate-confident-pass"]["successCondition"] == "result[0] < 0.05"
        assert by["success-rate-confident-fail"]["failureCondition"] == "result[0] < 0.95"
        assert by["rollback-timeout-rate"]["failureCondition"] == "result[0] > 0.1"
        assert by["acquisitions"]["successCondition"] == f"result[0] >= {st['min_acquisitions']}"
        assert by["timeout-rate-confident-pass"]["initialDelay"] == f"{int(st['duration_h'])}h"


def test_a_broken_template_fails_the_check():
    doc = {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
           "metadata": {"name": "x"}, "spec": {"metrics": [{"name": "m"}]}}
    with pytest.raises(AssertionError, match="provider"):
        check_analysis_template(doc)   # no provider: the CRD requires one


@pytest.mark.parametrize("k,n,upper", [(3, 100, True), (3, 100, False), (97, 100, False),
                                       (0, 80, True)])
def test_the_promql_wilson_bound_is_the_judges_interval(k, n, upper):
    q = wilson_promql("timeouts-metric", "24h", upper=upper)
    count = re.compile(r"sum\(increase\(\{\{args\.([\w-]+)\}\}\{ \{\{args\.canary-selector\}\} "
                       r"\}\[24h\]\)\)")
    expr = count.sub(lambda m: str(k if m.group(1) == "timeouts-metric" else n), q)
    value = eval(expr.replace("sqrt", "math.sqrt"), {"math": math})   # plain arithmetic now
    lo, hi = power.wilson(k, n)
    assert value == pytest.approx(hi if upper else lo, abs=1e-6)


# ---------------------------------------------------------------------------- refusals
def test_an_infeasible_rec_is_refused_with_exit_1_and_the_reason(tmp_path):
    tr = tmp_path / "t.jsonl"
    write_trace(trace_from_rows(light_rows(20, seed=2)), tr)
    k = two_node_cluster(tmp_path / "k.yml")
    rec = write_rec(tmp_path / "rec.json", tr, k, PRODUCTION, PRODUCTION, status="infeasible")
    res = runner.invoke(app, ["canary", "plan", str(rec), "--out", str(tmp_path / "p.json")])
    assert res.exit_code == 1, res.output
    assert "infeasible" in res.output and "timeout_rate" in res.output
    assert not (tmp_path / "p.json").exists()


def test_bad_stages_file_names_the_line_and_same_inputs_give_the_same_bytes(tmp_path):
    tr = tmp_path / "t.jsonl"
    write_trace(trace_from_rows(light_rows(40, seed=3)), tr)
    k = two_node_cluster(tmp_path / "k.yml")
    rec = write_rec(tmp_path / "rec.json", tr, k, PRODUCTION, dict(PRODUCTION, poll_interval=0.5))
    bad = tmp_path / "s.yml"
    bad.write_text("stages:\n  - {name: a, share: 0.1, duration_h: 1}\n"
                   "  - {name: b, share: 0.05, duration_h: 1}\n")
    res = runner.invoke(app, ["canary", "plan", str(rec), "--out", str(tmp_path / "p.json"),
                              "--stages", str(bad)])
    assert res.exit_code == 2 and "must not shrink" in res.output, res.output
    good = tmp_path / "g.yml"
    good.write_text("stages:\n  - {name: half, share: 0.5, duration_h: 0.2}\n")
    outs = []
    for name in ("p1.json", "p2.json"):
        res = runner.invoke(app, ["canary", "plan", str(rec), "--out", str(tmp_path / name),
                                  "--stages", str(good), "--replications", "2"])
        assert res.exit_code == 0, res.output
        outs.append((tmp_path / name).read_bytes())
    assert outs[0] == outs[1]
