"""`gpusim impact`: the spec's config-impact JSON (GPU_LOCK_CONFIG_005) from observed outcomes.

The observed traces are built here with exact figures (the spec's sample: waits 15.2 s -> 4.8 s,
timeout rate 2% -> 3%), so the tests check arithmetic, shape and rules, not a random outcome.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from gpusim import load_lock_settings
from gpusim.cli.app import app
from gpusim.traces.format import write_rows

from advisor.recommendation import Recommendation
from advisor.rollout import impact as im

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples/config.yml"        # poll_interval 2 (production today)
OPTIMIZED = ROOT / "examples/optimized.yml"  # poll_interval 0.5 (the spec's candidate)
runner = CliRunner()
CHANGE = "2025-12-24T10:00:00Z"
CHANGE_EPOCH = 1766570400.0
WEEK = 7 * 86400.0

# The spec's example, GPU_LOCK_CONFIG_005 (gpu-lock-configuration-spec.md), verbatim.
SPEC_EXAMPLE = json.loads("""{
  "config_change_time": "2025-12-24T10:00:00Z",
  "before": {"poll_interval": 2, "avg_wait_time": 15.2, "timeout_rate": 0.02},
  "after": {"poll_interval": 0.5, "avg_wait_time": 4.8, "timeout_rate": 0.03},
  "impact_summary": {"wait_time_improvement": "68% ↓", "timeout_rate_change": "50% ↑",
                     "recommendation": "⚠️ 超时率上升,建议调整 max_wait_time"}
}""")


def side_rows(start_epoch: float, n: int, waits: tuple[float, float],
              timeout_every: tuple[int, ...], span_s: float = WEEK) -> list[dict]:
    """n tasks evenly over span_s from start_epoch; waits alternate between the two values
    (mean = their mean); task i times out when i % 100 is in timeout_every."""
    rows = []
    for i in range(n):
        ts = start_epoch + span_s * i / n
        row = {"task_type": "ocr", "timestamp": _iso(ts), "wait_s": waits[i % 2],
               "outcome": "acquired", "duration_s": 5.0}
        if i % 100 in timeout_every:
            row = {**row, "outcome": "timeout"}
            del row["duration_s"]  # a task that gave up never held: its hold is unknown
        rows.append(row)
    return rows


def _iso(epoch: float) -> str:
    from datetime import UTC, datetime
    return datetime.fromtimestamp(epoch, UTC).isoformat().replace("+00:00", "Z")


@pytest.fixture(scope="module")
def spec_sample(tmp_path_factory) -> Path:
    """The spec's sample: 5,000 tasks a week on each side; before waits 10.2/20.2 s (mean
    15.2) with 2 timeouts in 100, after 2.8/6.8 s (mean 4.8) with 3 in 100."""
    rows = (side_rows(CHANGE_EPOCH - WEEK, 5000, (10.2, 20.2), (0, 50))
            + side_rows(CHANGE_EPOCH, 5000, (2.8, 6.8), (0, 33, 66)))
    path = tmp_path_factory.mktemp("impact") / "observed.jsonl"
    write_rows(rows, path)
    return path


def impact(trace: Path, out: Path, *extra: str, change: str = CHANGE) -> tuple[int, dict, str]:
    res = runner.invoke(app, ["impact", str(trace), "--change-time", change, "--before-config",
                              str(CONFIG), "--after-config", str(OPTIMIZED), "--out", str(out),
                              *extra])
    return res.exit_code, json.loads(out.read_text()) if out.exists() else {}, res.output


def _same_shape(spec: object, ours: object, path: str = "") -> None:
    """Every field of the spec's example is in ours, at the same place, with the same JSON type."""
    if isinstance(spec, dict):
        assert isinstance(ours, dict), path
        for k, v in spec.items():
            assert k in ours, f"{path}.{k} missing"
            _same_shape(v, ours[k], f"{path}.{k}")
    elif isinstance(spec, str):
        assert isinstance(ours, str), path
    else:
        assert isinstance(ours, (int, float)) and not isinstance(ours, bool), path


def test_the_spec_sample_matches_the_spec_field_by_field(spec_sample, tmp_path):
    code, doc, output = impact(spec_sample, tmp_path / "impact.json")
    assert code == 0, output
    _same_shape(SPEC_EXAMPLE, doc)
    assert set(doc) == set(SPEC_EXAMPLE) | {"details"}
    assert set(doc["impact_summary"]) == set(SPEC_EXAMPLE["impact_summary"])
    for side in ("before", "after"):
        cfg = load_lock_settings(CONFIG if side == "before" else OPTIMIZED).gpu_lock
        assert set(doc[side]) == set(cfg.model_dump()) | {"avg_wait_time", "timeout_rate"}
        for k in ("poll_interval", "avg_wait_time", "timeout_rate"):
            assert doc[side][k] == pytest.approx(SPEC_EXAMPLE[side][k], rel=1e-9), (side, k)
    assert doc["config_change_time"] == SPEC_EXAMPLE["config_change_time"]
    s = doc["impact_summary"]
    assert s["wait_time_improvement"] == "68% ↓" and s["timeout_rate_change"] == "50% ↑"
    # 2% -> 3% over 5,000 tasks a side is a rise beyond its 95% interval, the rate stays
    # under 5%: the rule says raise max_wait_time, as the spec's example does
    assert doc["details"]["recommendation_code"] == "adjust_max_wait_time"
    assert s["recommendation"].startswith("⚠️") and "max_wait_time" in s["recommendation"]
    d = doc["details"]
    assert d["before"]["tasks"] == 5000 and d["after"]["tasks"] == 5000
    assert d["wait_time_change_fraction"] == pytest.approx((4.8 - 15.2) / 15.2, rel=1e-5)
    assert d["timeout_rate_change"]["ci95"][0] > 0


def test_change_time_in_trace_seconds_gives_the_same_report(spec_sample, tmp_path):
    _, _, _ = impact(spec_sample, tmp_path / "iso.json")
    impact(spec_sample, tmp_path / "sec.json", change=str(WEEK))  # the trace starts a week before
    assert (tmp_path / "iso.json").read_bytes() == (tmp_path / "sec.json").read_bytes()


def test_same_inputs_same_bytes(spec_sample, tmp_path):
    impact(spec_sample, tmp_path / "a.json")
    impact(spec_sample, tmp_path / "b.json")
    assert (tmp_path / "a.json").read_bytes() == (tmp_path / "b.json").read_bytes()


def test_change_text_as_the_spec_writes_it():
    assert im.change_text(15.2, 4.8) == "68% ↓"
    assert im.change_text(0.02, 0.03) == "50% ↑"
    assert im.change_text(0.0, 0.0) == "0%" and im.change_text(0.0, 0.031) == "0 → 0.031 ↑"
    assert im.change_text(None, 1.0) == "n/a"


def test_wilson_and_the_minimum_window():
    lo, hi = im.wilson(2, 100)      # textbook value: [0.0055, 0.0700]
    assert lo == pytest.approx(0.0055, abs=1e-4) and hi == pytest.approx(0.0700, abs=1e-4)
    assert im.wilson(0, im.MIN_TASKS)[1] < 0.05 <= im.wilson(0, im.MIN_TASKS - 1)[1]
    assert im.MIN_TASKS == 73


def test_outcome_codes_are_the_trace_modules():
    from gpusim.traces import observed
    assert (im.OBSERVED_ACQUIRED, im.OBSERVED_TIMEOUT) == (observed.ACQUIRED, observed.TIMEOUT)


def small_trace(tmp_path: Path, before: list[dict], after: list[dict]) -> Path:
    path = tmp_path / "small.jsonl"
    write_rows(before + after, path)
    return path


def test_the_baseline_resets_at_the_change(tmp_path):
    """A task that started 1 s before the change and waited long counts before, not after."""
    before = side_rows(CHANGE_EPOCH - 3600, 100, (10.0, 10.0), (), span_s=3600)
    before.append({"task_type": "ocr", "timestamp": _iso(CHANGE_EPOCH - 1), "wait_s": 5000.0,
                   "outcome": "acquired", "duration_s": 5.0})
    after = side_rows(CHANGE_EPOCH, 100, (2.0, 2.0), (), span_s=3600)
    code, doc, out = impact(small_trace(tmp_path, before, after), tmp_path / "i.json",
                            "--window", "1h")
    assert code == 0, out
    assert doc["before"]["avg_wait_time"] == pytest.approx((100 * 10 + 5000) / 101)
    assert doc["after"]["avg_wait_time"] == 2.0
    assert doc["details"]["before"]["tasks"] == 101 and doc["details"]["after"]["tasks"] == 100


def test_too_little_data_says_so_and_exits_3(tmp_path):
    before = side_rows(CHANGE_EPOCH - 3600, 100, (10.0, 10.0), (), span_s=3600)
    after = side_rows(CHANGE_EPOCH, 20, (2.0, 2.0), (), span_s=600)
    code, doc, out = impact(small_trace(tmp_path, before, after), tmp_path / "i.json",
                            "--window", "1h")
    assert code == 3, out
    d = doc["details"]
    assert d["recommendation_code"] == "insufficient_data" and d["after"]["sufficient"] is False
    assert d["before"]["sufficient"] is True and d["min_tasks"] == 73
    assert "insufficient data" in doc["impact_summary"]["recommendation"]
    assert any("too little data" in w for w in d["warnings"])
    assert any("covers 600 s" in w or "covers" in w for w in d["warnings"])


@pytest.mark.parametrize("after_timeouts, code, rule", [
    (tuple(range(0, 100, 5)), 1, "rollback"),   # 20% timeouts: far above the 5% trigger
    ((), 0, "keep"),                            # none, waits down
])
def test_rules_decide(tmp_path, after_timeouts, code, rule):
    before = side_rows(CHANGE_EPOCH - 86400, 2000, (10.0, 20.0), (0,), span_s=86400)
    after = side_rows(CHANGE_EPOCH, 2000, (2.0, 4.0), after_timeouts, span_s=86400)
    got, doc, out = impact(small_trace(tmp_path, before, after), tmp_path / "i.json",
                           "--window", "1d")
    assert got == code, out
    assert doc["details"]["recommendation_code"] == rule


def write_rec(path: Path) -> Path:
    """The smallest rec.json the schema accepts, with the metrics --predict reads."""
    base = load_lock_settings(CONFIG).gpu_lock.model_dump()
    cand = load_lock_settings(OPTIMIZED).gpu_lock.model_dump()
    est = lambda m, lo, hi: {"mean": m, "ci95": [lo, hi]}  # noqa: E731
    doc = {
        "schema": "gpusim.recommendation/1", "created_at": "2026-11-28T00:00:00+00:00",
        "status": "recommended",
        "inputs": {"trace": {"path": "t.jsonl", "sha256": "0" * 64, "tasks": 1, "span_s": 0.0,
                             "task_types": ["ocr"]},
                   "baseline": {"source": "config.yml", "gpu_lock": base}, "cluster": {},
                   "thresholds": {}, "space": {},
                   "search": {"sampler": "none", "seed": 0, "trials": 0, "replications": 1,
                              "simulation_seed": 0, "check_seed": 1, "check_replications": 2,
                              "check_candidates": 1, "selection_rule": "test"},
                   "versions": {"gpusim": "t", "optuna": "t", "numpy": "t", "python": "t"}},
        "recommended": {"gpu_lock": cand, "yaml": "gpu_lock: {}\n", "trial": None,
                        "changed": []},
        "nearest": None, "binding_gates": [],
        "metrics": {"baseline": {"wait_mean_s": est(15.0, 14.0, 16.0),
                                 "timeout_rate": est(0.02, 0.015, 0.025)},
                    "candidate": {"wait_mean_s": est(5.0, 4.5, 5.5),
                                  "timeout_rate": est(0.01, 0.005, 0.015)}},
        "gates": [],
        "headroom": {"overall": {"tasks": 0.0, "wait_mean_s": None, "held_mean_s": None,
                                 "free_mean_s": None, "free_share": None, "timeout_rate": None},
                     "by_task_type": {}, "best_wait_reduction_within_timeout_gate": None,
                     "least_timeout_rate_at_wait_gate": None},
        "pareto_front": [], "candidates": [], "importances": {}, "explanation": ["test"],
        "wait_curves": [], "what_if": {},
        "study": {"storage": "none", "name": "t", "trials_by_state": {}},
    }
    path.write_text(Recommendation.model_validate(doc).dumps())
    return path


def test_predict_sets_the_prediction_beside_what_happened(spec_sample, tmp_path):
    rec = write_rec(tmp_path / "rec.json")
    code, doc, out = impact(spec_sample, tmp_path / "i.json", "--predict", str(rec))
    assert code == 0, out
    p = doc["details"]["prediction"]
    assert p["rec"]["status"] == "recommended" and p["after_config_is_rec_config"] is True
    assert p["before_config_is_rec_baseline"] is True
    # waits: observed 15.2 in [14, 16] and 4.8 in [4.5, 5.5]
    assert p["before"]["avg_wait_time"]["inside"] is True
    assert p["after"]["avg_wait_time"]["inside"] is True
    # timeouts after: observed 3% [~2.5%, ~3.5%] against a predicted [0.5%, 1.5%]: missed
    t = p["after"]["timeout_rate"]
    assert t["predicted"] == 0.01 and t["inside"] is False and t["overlap"] is False


def test_bad_inputs_exit_2(spec_sample, tmp_path):
    plain = tmp_path / "plain.jsonl"
    write_rows([{"task_type": "ocr", "arrival_s": 0.0, "duration_s": 1.0}], plain)
    cases = [(plain, ["--window", "7d"], "no observed outcomes"),
             (spec_sample, ["--window", "7x"], "--window"),
             (spec_sample, ["--window", "0"], "--window")]
    for trace, extra, needle in cases:
        code, _, out = impact(trace, tmp_path / "x.json", *extra)
        assert code == 2 and needle in out, (extra, out)
        assert not (tmp_path / "x.json").exists()
    code, _, out = impact(plain, tmp_path / "x.json", change="2025-01-01T00:00:00Z")
    assert code == 2
