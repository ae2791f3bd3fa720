"""`gpusim simulate` and `gpusim compare` from the command line: outputs, exit codes, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from gpusim.cli.app import app
from gpusim.traces.format import trace_from_rows, write_trace

ROOT = Path(__file__).resolve().parents[1]
runner = CliRunner()


@pytest.fixture(scope="module")
def trace_file(tmp_path_factory) -> Path:
    rng = np.random.default_rng(3)
    t, rows = 0.0, []
    for i in range(300):
        t += float(rng.exponential(20.0))
        rows.append({"task_type": ("paddleocr", "ffmpeg", "faster_whisper")[i % 3],
                     "arrival_s": t, "duration_s": float(rng.exponential(12.0)) + 0.1})
    path = tmp_path_factory.mktemp("cli") / "trace.jsonl"
    write_trace(trace_from_rows(rows), path)
    return path


def simulate_args(trace: Path, out: Path, seed: int = 1) -> list[str]:
    return ["simulate", str(trace), "--config", str(ROOT / "examples/config.yml"),
            "--seed", str(seed), "--replications", "2", "--json", str(out)]


def test_simulate_writes_result_json(trace_file, tmp_path):
    out = tmp_path / "r.json"
    records = tmp_path / "records.jsonl"
    res = runner.invoke(app, simulate_args(trace_file, out) + ["--records", str(records)])
    assert res.exit_code == 0, res.output
    doc = json.loads(out.read_text())
    assert doc["schema"] == "gpusim.result/1"
    for key in ("tasks", "success_rate", "timeout_rate", "wait_mean_s", "wait_p50_s",
                "wait_p95_s", "wait_p99_s", "wait_max_s", "polls", "redis_commands",
                "redis_ops_per_s", "redis_cpu_utilization", "gpu_utilization",
                "lock_expired_while_held", "double_occupancy_s", "emergency_deletes"):
        assert key in doc["metrics"], key
        assert key in doc["ci95"], key
    assert len(doc["replications"]) == 2
    assert set(doc["by_task_type"]) == {"paddleocr", "ffmpeg", "faster_whisper"}
    lines = records.read_text().splitlines()
    assert len(lines) == 2 * 300
    first, last = json.loads(lines[0]), json.loads(lines[-1])
    assert first["outcome"] in ("acquired", "crashed", "timeout")
    assert (first["replication"], last["replication"]) == (0, 1)


def test_same_seed_same_bytes_in_another_process_and_different_seed_differs(trace_file,
                                                                            tmp_path):
    a, b, c = tmp_path / "a.json", tmp_path / "b.json", tmp_path / "c.json"
    assert runner.invoke(app, simulate_args(trace_file, a)).exit_code == 0
    cmd = [sys.executable, "-m", "gpusim"] + simulate_args(trace_file, b)
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    assert a.read_bytes() == b.read_bytes()
    assert runner.invoke(app, simulate_args(trace_file, c, seed=2)).exit_code == 0
    ma, mc = json.loads(a.read_text())["metrics"], json.loads(c.read_text())["metrics"]
    assert ma["wait_mean_s"] != mc["wait_mean_s"]


def test_compare_prints_acceptance_table_and_exit_code_follows_gates(trace_file, tmp_path):
    out = tmp_path / "cmp.json"
    res = runner.invoke(app, ["compare", str(trace_file),
                              "--baseline", str(ROOT / "examples/config.yml"),
                              "--candidate", str(ROOT / "examples/optimized.yml"),
                              "--replications", "2", "--json", str(out)])
    assert res.exit_code in (0, 1), res.output
    doc = json.loads(out.read_text())
    names = [r["criterion"] for r in doc["acceptance"]]
    assert names == ["success_rate", "wait_mean_reduction", "redis_cpu_increase",
                     "timeout_rate", "lock_expired_per_acquisition", "double_occupancy_s",
                     "redis_cpu_peak_1m"]
    assert (res.exit_code == 0) == doc["passed"] == all(r["result"] == "PASS"
                                                        for r in doc["acceptance"])
    for r in doc["acceptance"]:
        assert r["criterion"] in res.output
    # a config compared with itself gains nothing: the wait gate must fail
    same = runner.invoke(app, ["compare", str(trace_file),
                               "--baseline", str(ROOT / "examples/config.yml"),
                               "--candidate", str(ROOT / "examples/config.yml")])
    assert same.exit_code == 1 and "FAIL" in same.output


def test_thresholds_override(trace_file, tmp_path):
    th = tmp_path / "th.yml"
    th.write_text("wait_reduction_min: -1.0\nredis_cpu_increase_max: 1000\n"
                  "success_rate_min: 0\ntimeout_rate_max: 1\n")
    res = runner.invoke(app, ["compare", str(trace_file),
                              "--baseline", str(ROOT / "examples/config.yml"),
                              "--candidate", str(ROOT / "examples/config.yml"),
                              "--thresholds", str(th), "--replications", "1"])
    assert res.exit_code == 0, res.output


@pytest.mark.parametrize("content,field,line", [
    ("gpu_lock:\n  poll_interval: 0\n", "gpu_lock.poll_interval", 2),
    ("gpu_lock:\n  poll_interval: 2\n  max_poll_interval: 1\n", "gpu_lock.max_poll_interval",
     3),
    ("gpu_lock:\n  lock_timeout: 10.5\n", "gpu_lock.lock_timeout", 2),
    ("gpu_lock:\n  bogus: 1\n", "gpu_lock.bogus", 2),
])
def test_bad_config_exit_2_names_file_line_field_and_writes_nothing(trace_file, tmp_path,
                                                                   content, field, line):
    cfg = tmp_path / "bad.yml"
    cfg.write_text(content)
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(trace_file), "--config", str(cfg), "--json",
                              str(out)])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())  # rich may wrap long messages
    assert str(cfg) in msg.replace(" ", "") or cfg.name in msg
    assert f"line {line}" in msg and field in msg
    assert not out.exists() and not list(tmp_path.glob(".r.json*"))


def test_bad_trace_exit_2_names_line_and_field(tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"task_type": "a", "arrival_s": 0, "duration_s": 1}\n'
                   '{"task_type": "a", "arrival_s": 1, "duration_s": -3}\n')
    out = tmp_path / "r.json"
    res = runner.invoke(app, ["simulate", str(bad), "--config",
                              str(ROOT / "examples/config.yml"), "--json", str(out)])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "line 2" in msg and "duration_s" in msg
    assert not out.exists()


def test_trace_that_does_not_fit_cluster_is_rejected(tmp_path):
    tr = tmp_path / "t.jsonl"
    tr.write_text('{"task_type": "a", "arrival_s": 0, "duration_s": 1, "node": "node7"}\n')
    res = runner.invoke(app, ["simulate", str(tr), "--config",
                              str(ROOT / "examples/config.yml")])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "line 1" in msg and "node" in msg


def test_bad_cluster_exit_2(trace_file, tmp_path):
    k = tmp_path / "k.yml"
    k.write_text("nodes: 1\ngpu_policy: sideways\n")
    res = runner.invoke(app, ["simulate", str(trace_file), "--config",
                              str(ROOT / "examples/config.yml"), "--cluster", str(k)])
    assert res.exit_code == 2
    msg = " ".join(res.output.split())
    assert "line 2" in msg and "gpu_policy" in msg


def test_environment_override_applies_and_is_validated(trace_file, tmp_path):
    out1, out2 = tmp_path / "1.json", tmp_path / "2.json"
    base = ["simulate", str(trace_file), "--config", str(ROOT / "examples/config.yml")]
    assert runner.invoke(app, base + ["--json", str(out1)]).exit_code == 0
    res = runner.invoke(app, base + ["--json", str(out2)],
                        env={"GPU_LOCK_POLL_INTERVAL": "0.5"})
    assert res.exit_code == 0
    assert json.loads(out2.read_text())["inputs"]["gpu_lock"]["poll_interval"] == 0.5
    bad = runner.invoke(app, base, env={"GPU_LOCK_POLL_INTERVAL": "fast"})
    assert bad.exit_code == 2 and "GPU_LOCK_POLL_INTERVAL" in bad.output


def test_output_into_a_missing_folder_is_bad_input(trace_file, tmp_path):
    out = tmp_path / "no" / "such" / "r.json"
    res = runner.invoke(app, simulate_args(trace_file, out))
    assert res.exit_code == 2 and "does not exist" in " ".join(res.output.split())
    assert not out.parent.exists()
