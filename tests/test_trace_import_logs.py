"""`gpusim trace import-yivideo-logs`: YiVideo's lock log lines, written by the real lock client
during a replay of a known trace on a real Redis (gpusim.real.yivideo_log), import back to the
replay's own waits, holds and outcomes; torn and missing lines are reported by reason.
"""

from __future__ import annotations

import gzip
import json
import subprocess
import sys
from pathlib import Path

import pytest

import trace_roundtrip as RT
from gpusim.config import GpuLockConfig
from gpusim.real.outcomes import outcome_paths, outcome_rows
from gpusim.traces.format import load_trace, trace_from_rows
from gpusim.traces.yivideo_logs import LogSource, import_yivideo_logs, parse_sources

ROOT = Path(__file__).resolve().parents[1]
F, EVENT, POLLING, ROWS = RT.F, RT.EVENT, RT.POLLING, RT.ROWS


@pytest.fixture(scope="module")
def replayed(redis_server, tmp_path_factory):
    """{config name: (log path, the replay's run, trace, result)} for both mechanisms."""
    from gpusim.real.replay import run_real

    d = tmp_path_factory.mktemp("yivideo-logs")
    out = {}
    for name, cfg in (("event", EVENT), ("polling", POLLING)):
        log = d / f"{name}.log"
        trace = trace_from_rows(ROWS)
        real = run_real(trace, cfg, redis_url=redis_server.url, time_scale=F,
                        idle_window_s=0.05, yivideo_log=log, key_prefix=f"logs-{name}:")
        out[name] = (log, real.runs[0], trace, real)
    return out


def _compare(run, rows, *, attempts: bool) -> None:
    """Same tasks, types and outcomes; arrivals, waits and holds within a few ms of wall time
    at the replay's 20x scale (tolerances: tests/trace_roundtrip.py)."""
    records = run.records
    tol = RT.tolerances(run.lateness)
    d_arr, d_wait, d_hold = [], [], []
    for r, row in RT.pair(records, rows):
        assert row["task_type"] == r.task_type
        assert row["outcome"] == ("timeout" if r.outcome == "timeout" else "acquired")
        d_arr.append(RT.arrival_error(r, row, records, rows))
        d_wait.append(abs(row["wait_s"] / F - r.wait_s))
        if r.outcome == "timeout":
            assert "duration_s" not in row
        else:
            d_hold.append(abs(row["duration_s"] / F - (r.gpu_end_s - r.acquired_s)))
        if attempts:
            assert row["attempts"] == r.attempts
        elif r.mechanism == "immediate":
            assert row["attempts"] == 1
        else:
            assert "attempts" not in row  # the event path logs only its polling phase's count
    assert sum(r.outcome == "timeout" for r in records) >= 1 and len(d_hold) >= 4
    for name, d in (("arrival", d_arr), ("wait", d_wait), ("hold", d_hold)):
        RT.check_close(name, d, tol)


@pytest.mark.parametrize("name", ["event", "polling"])
def test_logs_import_back_to_the_replays_waits_holds_outcomes(replayed, name):
    log, run, _trace, _real = replayed[name]
    res = import_yivideo_logs([LogSource(log, "h1")], time_scale=F)
    problems = {k: v for k, v in res.counts.items() if v and "ignored" not in k
                and not k.startswith("ambiguous")}
    assert not problems, problems
    _compare(run, res.rows, attempts=(name == "polling"))
    assert {r["node"] for r in res.rows} == {"node0"} and {r["gpu"] for r in res.rows} == {0}
    trace_from_rows(res.rows)  # a valid observed trace


def test_replay_outcomes_file_carries_the_records(replayed, tmp_path):
    """`gpusim validate --outcomes`: the trace's own tasks plus each record's wait (scaled back),
    outcome, attempts and config digest; no hold where the task timed out."""
    from gpusim.config import config_digest
    from gpusim.real.outcomes import write_outcomes

    _log, run, trace, real = replayed["event"]
    records = run.records
    rows = outcome_rows(trace, real.runs[0], EVENT, time_scale=F)
    by_id = {r.task_id: r for r in records}
    assert len(rows) == len(ROWS)
    for row in rows:
        rec = by_id[row["task_id"]]
        assert row["wait_s"] == pytest.approx(rec.wait_s * F, abs=1e-6)
        assert row["attempts"] == rec.attempts
        assert row["outcome"] == ("timeout" if rec.outcome == "timeout" else "acquired")
        assert ("duration_s" in row) == (rec.outcome != "timeout")
        assert row["config_digest"] == config_digest(EVENT)
    paths = write_outcomes(tmp_path / "o.jsonl", trace, real, EVENT, time_scale=F)
    assert paths == [tmp_path / "o.jsonl"]
    loaded = load_trace(paths[0])
    assert loaded.observed is not None and len(loaded) == len(ROWS)
    assert outcome_paths("a/o.jsonl.gz", 2) == [Path("a/o-run1.jsonl.gz"),
                                                Path("a/o-run2.jsonl.gz")]


def _damaged(log: Path, tmp: Path) -> Path:
    """The replay's log with: the last release line removed (the "later" task, alone at the
    end), the start lines of the first immediate acquisition removed, the first event
    acquisition's line torn (cut mid-line, as a writer killed mid-write leaves it) and a line
    of garbage added."""
    lines = log.read_text(encoding="utf-8").splitlines()
    rel = max(i for i, ln in enumerate(lines) if " 释放锁 '" in ln)
    imm = next(i for i, ln in enumerate(lines) if "立即获取锁" in ln)
    task = lines[imm].split("任务 ")[1].split(" ")[0]
    starts = [i for i in range(imm) if f"任务 {task} 开始获取锁" in lines[i]][-2:]
    ev = next(i for i, ln in enumerate(lines) if "通过事件驱动获取锁" in ln)
    assert len({rel, ev, *starts}) == 4 and rel > ev
    out = []
    for i, ln in enumerate(lines):
        if i == ev:
            out.append(ln[: len(ln) // 2 + 10])
        elif i not in (rel, *starts):
            out.append(ln)
    out.insert(3, "\x00\x00 garbage ###")
    path = tmp / "damaged.log.gz"
    with gzip.open(path, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(out) + "\n")
    return path


def test_torn_and_missing_lines_are_reported_by_reason(replayed, tmp_path):
    log = replayed["event"][0]
    path = _damaged(log, tmp_path)
    res = import_yivideo_logs(parse_sources([f"h1={path}"]), time_scale=F)
    c = res.counts
    assert c["not a log line (torn, or a traceback/continuation line)"] == 1   # the garbage
    assert c["unreadable lock line (torn or unknown wording)"] == 1            # the torn line
    assert c["start line missing (immediate acquisition: arrival = its line time)"] == 1
    # the torn acquisition: its start never gets an outcome and its release pairs with nothing
    assert c["start with no outcome line (log ends while waiting; dropped)"] == 1
    assert c["release without an acquisition (dropped)"] == 1
    # the task whose release line is gone is still holding when the log ends
    assert c["acquired, no release line (log ends while holding; dropped)"] == 1
    assert len(res.rows) == len(ROWS) - 2
    # what survives is unchanged (its arrivals count from another first task: compare the
    # waits and holds)
    # (the immediate acquisition whose start was lost gets wait 0: its own was a few ms)
    full = import_yivideo_logs([LogSource(log, "h1")], time_scale=F)
    shapes = {(r["task_type"], r["wait_s"], r.get("duration_s")) for r in full.rows}
    changed = [r for r in res.rows if (r["task_type"], r["wait_s"], r.get("duration_s"))
               not in shapes]
    assert len(changed) <= 1
    for r in changed:
        assert r["wait_s"] == 0.0 and r["attempts"] == 1
        assert any((r["task_type"], r["duration_s"]) == (t, d) for t, w, d in shapes
                   if w <= 0.02 * F)


def test_several_hosts_merge_by_time(tmp_path):
    """Two hosts, one shared key (YiVideo's `gpu_lock:0`): lines merge by time, each host's
    tasks keep their host as node, and the key's exclusivity pairs the releases."""
    def line(ms: int, msg: str, level: str = "INFO") -> str:
        s, ms_ = divmod(ms, 1000)
        return f"2026-01-02 03:04:{s:02d},{ms_:03d} - locks - {level} - {msg}"

    k = "gpu_lock:0"
    a = [line(0, f"任务 ocr 开始获取锁 '{k}' (机制: polling, 超时: 300秒)"),
         line(1, f"任务 ocr 开始获取锁 '{k}' (机制: polling, 最大等待: 300秒)"),
         line(3, f"任务 ocr 通过轮询获取锁 '{k}' (等待时间: 0.00秒, 重试次数: 1)"),
         line(5000, f"任务 ocr 释放锁 '{k}' (原因: normal)")]
    b = [line(1000, f"任务 ocr 开始获取锁 '{k}' (机制: polling, 超时: 300秒)"),
         line(1000, f"任务 ocr 开始获取锁 '{k}' (机制: polling, 最大等待: 300秒)"),
         line(5100, f"任务 ocr 通过轮询获取锁 '{k}' (等待时间: 4.10秒, 重试次数: 4)"),
         "Traceback (most recent call last):",
         line(7100, f"任务 ocr 释放锁 '{k}' (原因: normal)")]
    pa, pb = tmp_path / "gpu-a.log", tmp_path / "gpu-b.log.gz"
    pa.write_text("\n".join(a) + "\n", encoding="utf-8")
    with gzip.open(pb, "wt", encoding="utf-8") as fh:
        fh.write("\n".join(b) + "\n")
    res = import_yivideo_logs(parse_sources([str(pa), str(pb)]))
    assert [(r["node"], r["arrival_s"], r["wait_s"], r["duration_s"], r["attempts"])
            for r in res.rows] == [("gpu-a", 0.0, 0.002, 4.997, 1), ("gpu-b", 0.999, 4.1, 2.0, 4)]
    assert res.counts["not a log line (torn, or a traceback/continuation line)"] == 1


def test_cli_writes_the_trace_and_reports_reasons(replayed, tmp_path):
    log = replayed["polling"][0]
    out = tmp_path / "t.jsonl"
    res = subprocess.run([sys.executable, "-m", "gpusim", "trace", "import-yivideo-logs",
                          f"h1={log}", "--out", str(out), "--time-scale", str(F)],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"{len(ROWS)} tasks" in res.stdout
    assert len([json.loads(x) for x in out.read_text().splitlines()]) == len(ROWS)
    bad = subprocess.run([sys.executable, "-m", "gpusim", "trace", "import-yivideo-logs",
                          str(tmp_path / "missing.log"), "--out", str(tmp_path / "u.jsonl")],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and bad.stderr.strip().count("\n") == 0
    assert "no such file" in bad.stderr and not (tmp_path / "u.jsonl").exists()


def test_celery_format_pairs_by_pool_process_and_config_digest(tmp_path):
    """Celery's worker format names no logger but the pool process: two same-type tasks that
    start in the same millisecond on one key pair exactly by process (in YiVideo's format their
    waits would be ambiguous). --config stamps its digest where the logged max wait agrees."""
    from gpusim.config import config_digest

    def line(ms: int, proc: str, msg: str) -> str:
        s, ms_ = divmod(ms, 1000)
        return f"[2026-01-02 03:04:{s:02d},{ms_:03d}: INFO/{proc}] {msg}"

    k = "gpu_lock:0"
    text = [line(0, "ForkPoolWorker-1", f"任务 ocr 开始获取锁 '{k}' (机制: polling, 超时: 300秒)"),
            line(0, "ForkPoolWorker-2", f"任务 ocr 开始获取锁 '{k}' (机制: polling, 超时: 300秒)"),
            line(0, "ForkPoolWorker-2", f"任务 ocr 开始获取锁 '{k}' (机制: polling, 最大等待: 300秒)"),
            line(0, "ForkPoolWorker-1", f"任务 ocr 开始获取锁 '{k}' (机制: polling, 最大等待: 300秒)"),
            line(1, "ForkPoolWorker-2", f"任务 ocr 通过轮询获取锁 '{k}' (等待时间: 0.00秒, 重试次数: 1)"),
            line(2, "MainProcess", "Task paddleocr.detect[abc] received"),
            line(3000, "ForkPoolWorker-2", f"任务 ocr 释放锁 '{k}' (原因: normal)"),
            line(3004, "ForkPoolWorker-1", f"任务 ocr 通过轮询获取锁 '{k}' (等待时间: 3.00秒, 重试次数: 3)"),
            line(4004, "ForkPoolWorker-1", f"任务 ocr 释放锁 '{k}' (原因: normal)")]
    p = tmp_path / "w.log"
    p.write_text("\n".join(text) + "\n", encoding="utf-8")
    cfg = GpuLockConfig(max_wait_time=300)
    res = import_yivideo_logs(parse_sources([str(p)]), config=cfg)
    # same arrival: file order (worker 1's start line first)
    assert [(r["wait_s"], r["duration_s"], r["attempts"]) for r in res.rows] == \
        [(3.004, 1.0, 3), (0.001, 2.999, 1)]
    assert all(r["config_digest"] == config_digest(cfg) for r in res.rows)
    assert res.counts["lines of other loggers (ignored)"] == 1
    assert not res.counts["ambiguous pairings (several starts fit; earliest taken)"]
    other = import_yivideo_logs(parse_sources([str(p)]), config=GpuLockConfig(max_wait_time=60))
    assert all("config_digest" not in r for r in other.rows)
    assert other.counts["tasks whose logged max wait is not --config's (no config_digest)"] == 2


def test_outcome_rows_name_the_config_each_task_started_under():
    """A task that started after a config change (record config_index k) carries change k's
    digest; the others their node's, else the run's."""
    from types import SimpleNamespace

    from gpusim.config import config_digest

    trace = trace_from_rows([dict(task_id=f"x{i}", task_type="ocr", arrival_s=float(i),
                                  duration_s=1.0) for i in range(3)])
    rec = dict(node="node0", gpu=0, outcome="acquired", wait_s=0.01, attempts=1)
    run = SimpleNamespace(records=[SimpleNamespace(index=i, config_index=k, **rec)
                                   for i, k in ((0, 0), (1, 1), (2, 0))])
    changes = [{"index": 1, "config_digest": "sha256:changed"}]
    rows = outcome_rows(trace, run, EVENT, time_scale=2.0, config_changes=changes)
    assert [r["config_digest"] for r in rows] == [config_digest(EVENT), "sha256:changed",
                                                  config_digest(EVENT)]
    assert [r["wait_s"] for r in rows] == [0.02] * 3


def test_release_pairing_uses_the_keys_exclusivity(tmp_path):
    """One key, one type. A's release line is lost; C acquires later and releases: C's release
    ends C's hold, not A's (A is reported). D's release line comes 2 ms after E's acquisition
    line (YiVideo logs a release after its EVAL): it still ends D's hold."""
    def line(ms: int, msg: str) -> str:
        s, ms_ = divmod(ms, 1000)
        return f"2026-01-02 03:{s // 60:02d}:{s % 60:02d},{ms_:03d} - locks - INFO - {msg}"

    k = "gpu_lock:0"

    def task(start: int, got: int, release: int | None) -> list[tuple[int, str]]:
        out = [(start, f"任务 ocr 开始获取锁 '{k}' (机制: polling, 最大等待: 300秒)"),
               (got, f"任务 ocr 通过轮询获取锁 '{k}' (等待时间: {(got - start) / 1000:.2f}秒, "
                     f"重试次数: 1)")]
        return out + ([(release, f"任务 ocr 释放锁 '{k}' (原因: normal)")] if release else [])

    events = (task(0, 0, None) + task(1000, 5000, 6000) + task(7000, 7000, 9002)
              + task(8000, 9000, 10000))
    p = tmp_path / "h.log"
    p.write_text("\n".join(line(ms, m) for ms, m in sorted(events, key=lambda e: e[0])) + "\n",
                 encoding="utf-8")
    res = import_yivideo_logs(parse_sources([str(p)]))
    assert [(r["arrival_s"], r["duration_s"]) for r in res.rows] == \
        [(0.0, 1.0), (6.0, 2.002), (7.0, 1.0)]  # arrivals from C's, the first written
    assert res.counts["acquired, no release line (log ends while holding; dropped)"] == 1
    assert not res.counts["releases paired across a later acquisition of the key"]
