"""`gpusim trace check`: the summary of a trace, against values worked out by hand."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from gpusim.traces.check import GAP_MEDIANS, check_trace, render
from gpusim.traces.format import trace_from_rows, write_rows

ROOT = Path(__file__).resolve().parents[1]


def _rows() -> list[dict]:
    """Ten tasks one second apart on n1/gpu0 and n1/gpu1, then a 200 s silence (> 20 x the
    1 s median gap), then one more; two timed out (no hold), waits 0..9 s and 1 s."""
    rows = []
    for i in range(10):
        row = {"task_id": f"a{i}", "task_type": "ocr" if i < 6 else "asr", "arrival_s": float(i),
               "node": "n1", "gpu": i % 2, "wait_s": float(i), "outcome": "acquired",
               "attempts": 2, "config_digest": "sha256:00"}
        if i in (8, 9):
            row["outcome"] = "timeout"
        else:
            row["duration_s"] = 2.0
        rows.append(row)
    rows.append({"task_id": "late", "task_type": "ocr", "arrival_s": 209.0, "duration_s": 1.0,
                 "node": "n1", "gpu": 0, "wait_s": 1.0, "outcome": "acquired", "attempts": 1,
                 "config_digest": "sha256:11"})
    return rows


def test_summary_values():
    s = check_trace(trace_from_rows(_rows()))
    assert s["tasks"] == 11 and s["arrival_span_s"] == 209.0 and s["span_s"] == 210.0
    assert s["types"]["ocr"] == {"tasks": 7, "share": pytest.approx(7 / 11),
                                 "mean_hold_s": pytest.approx((6 * 2.0 + 1.0) / 7)}
    assert s["types"]["asr"]["mean_hold_s"] == 2.0 and s["types"]["asr"]["tasks"] == 4
    # gpu0: a0 a2 a4 a6 (2 s each) + late (1 s) = 9 s; gpu1: a1 a3 a5 a7 = 8 s (a9 timed out)
    assert s["offered_load_per_gpu"] == {"n1/gpu0": pytest.approx(9 / 210),
                                         "n1/gpu1": pytest.approx(8 / 210)}
    assert s["unknown_holds"] == 2
    o = s["observed"]
    assert o["timeouts"] == 2 and o["timeout_rate"] == pytest.approx(2 / 11)
    waits = [float(i) for i in range(10)] + [1.0]
    assert o["wait_s"]["mean"] == pytest.approx(sum(waits) / 11) and o["wait_s"]["max"] == 9.0
    assert o["attempts_mean"] == pytest.approx(21 / 11)
    assert o["config_digests"] == {"sha256:00": 10, "sha256:11": 1}
    g = s["gaps"]
    assert g["median_s"] == 1.0 and g["limit_s"] == GAP_MEDIANS * 1.0
    assert g["flagged"] == [{"after_s": 9.0, "gap_s": 200.0}]
    text = render(s)
    assert "2 timed out" in text and "flagged (> 20.0 s): 1" in text


def test_trace_without_outcomes_says_so():
    s = check_trace(trace_from_rows([{"task_type": "x", "arrival_s": 0, "duration_s": 1}]))
    assert s["observed"] is None and s["gaps"]["median_s"] is None
    assert s["offered_load_per_gpu"] == {"(unplaced)": 1.0}
    assert "observed outcomes: none" in render(s)


def test_cli_json_and_bad_trace(tmp_path):
    trace = tmp_path / "t.jsonl"
    write_rows(_rows(), trace)
    out = tmp_path / "s.json"
    res = subprocess.run([sys.executable, "-m", "gpusim", "trace", "check", str(trace),
                          "--json", str(out)], cwd=ROOT, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert json.loads(out.read_text())["tasks"] == 11 and "11 tasks" in res.stdout
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_type": "x", "arrival_s": 0}\n')
    res = subprocess.run([sys.executable, "-m", "gpusim", "trace", "check", str(bad)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 2 and "line 1" in res.stderr and "duration_s" in res.stderr
