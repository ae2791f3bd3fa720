"""Ctrl-C during the compiled engine: one line, exit 130, no crash, no output file, no leftovers.

The signal is sent once the engine's worker thread exists (the compiled engine names its OS
thread "gpusim-engine"; we poll /proc every 5 ms), so it lands in the event loop, not in trace
loading or compilation. Chance of a timing failure: the loop on BIG_HOURS runs 0.3-0.5 s a
replication on a 2-core CI machine (session 6; seconds before), the signal follows its start
within ~10 ms, so it can only miss if the run is > 30x faster; with --jobs 2 the signal waits
for one worker's loop (asking for both workers' loops at once missed once: the two 0.4 s loops
need not overlap), and each worker runs two replications. The other waits are deadlines of a
minute or more on things that take well under a second. Below 1 in 100 runs.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"),
                                reason="reads thread names from /proc (Linux)")

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "config.yml"
BIG_HOURS = 140  # ~100k tasks on 16 GPUs: the compiled loop alone runs ~0.4 s a replication
CLUSTER = "nodes: 4\ngpus_per_node: 4\nworkers_per_service: 64\n"


def _gpusim(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "gpusim", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True, **kw)


@pytest.fixture(scope="module")
def big(tmp_path_factory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("interrupt")
    trace, cluster = d / "big.jsonl", d / "cluster.yml"
    cluster.write_text(CLUSTER)
    subprocess.run([sys.executable, "-m", "gpusim", "trace", "synth", "--out", str(trace),
                    "--hours", str(BIG_HOURS), "--gpus", "16", "--nodes", "4", "--load", "0.8"],
                   cwd=ROOT, check=True, capture_output=True, timeout=300)
    # warm numba's cache (a cold compile takes a minute; it must not eat the waits below)
    tiny = d / "tiny.jsonl"
    tiny.write_text('{"task_id": "a", "task_type": "ocr", "arrival_s": 0, "duration_s": 1}\n')
    subprocess.run([sys.executable, "-m", "gpusim", "simulate", str(tiny), "-c", str(CONFIG)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    return trace, cluster


def _family(pid: int) -> list[int]:
    """pid and its child processes."""
    kids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                kids.append(int(entry.name))
    return [pid, *kids]


def _engine_running(pids: list[int], count: int) -> bool:
    """At least `count` of these processes run a compiled-engine thread."""
    found = 0
    for pid in pids:
        try:
            names = [(t / "comm").read_text().strip()
                     for t in Path(f"/proc/{pid}/task").iterdir()]
        except OSError:
            continue
        found += "gpusim-engine" in names
    return found >= count


def _interrupt_when_running(proc: subprocess.Popen, engines: int) -> list[int]:
    deadline = time.monotonic() + 120
    while True:
        family = _family(proc.pid)
        if _engine_running(family, engines):
            break
        assert proc.poll() is None, f"ended before the engine ran: {proc.communicate()}"
        assert time.monotonic() < deadline, "the engine never started"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: the whole group
    return family


def _gone(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


@pytest.mark.parametrize("extra, engines", [((), 1), (("-r", "4", "--jobs", "2"), 1)],
                         ids=["single", "jobs2"])
def test_ctrl_c_in_compiled_loop(big, tmp_path, extra, engines):
    trace, cluster = big
    out = tmp_path / "o.json"
    proc = _gpusim("simulate", str(trace), "-c", str(CONFIG), "-k", str(cluster),
                   "--json", str(out), *extra)
    family = _interrupt_when_running(proc, engines)
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "interrupted" in lines[0], stderr[-2000:]
    assert "Traceback" not in stderr
    assert list(tmp_path.iterdir()) == []  # neither the result nor a temp file
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in family):  # no worker outlives the command
        assert time.monotonic() < deadline, "a worker process is still running"
        time.sleep(0.05)


def _inputs(hours: float):
    from gpusim.cluster import ClusterSpec, build_cluster
    from gpusim.config import LockSettings, load_lock_settings
    from gpusim.engines.compiled import CompiledModel
    from gpusim.engines.replication import node_settings
    from gpusim.traces.synth import SynthSpec, synthesize
    trace = synthesize(SynthSpec(hours=hours, gpus=16, nodes=4, load=0.8), seed=3)
    cluster = build_cluster(ClusterSpec(nodes=4, gpus_per_node=4, workers_per_service=64))
    settings: LockSettings = load_lock_settings(CONFIG)
    model = CompiledModel(trace, cluster, node_settings(cluster, settings), seed=0)
    return model._inputs()[0]


def test_stop_flag_ends_the_loop_early():
    from gpusim.engines.compiled import STOP_CHECK_EVERY, _simulate
    args = _inputs(24.0)
    full = _simulate(*args, np.zeros(1, np.int64))[-1]
    assert full > 2 * STOP_CHECK_EVERY  # else this test proves nothing
    assert _simulate(*args, np.ones(1, np.int64))[-1] == 0  # checked before the first event


def test_api_raises_keyboard_interrupt_and_leaves_no_thread():
    from gpusim.engines.compiled import run_interruptibly
    args = _inputs(BIG_HOURS)

    def ctrl_c() -> None:
        deadline = time.monotonic() + 120
        while not any(t.name == "gpusim-fast-engine" for t in threading.enumerate()):
            if time.monotonic() > deadline:
                return
            time.sleep(0.005)
        os.kill(os.getpid(), signal.SIGINT)

    sender = threading.Thread(target=ctrl_c)
    sender.start()
    t0 = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_interruptibly(args)
    sender.join()
    assert time.monotonic() - t0 < 60
    assert not any(t.name == "gpusim-fast-engine" for t in threading.enumerate())


def _lanes_running(family: list[int], count: int) -> bool:
    """At least `count` of these processes are lanes (multiprocessing's spawned interpreters)."""
    found = 0
    for pid in family:
        try:
            found += b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
        except OSError:
            continue
    return found >= count


@pytest.mark.redis
def test_ctrl_c_during_lanes(tmp_path):
    """`gpusim validate --lanes 2`: a terminal's Ctrl-C (SIGINT to the whole group, the lanes
    included) ends in one line and exit 130, and no lane and no redis-server outlives it. The
    signal follows the lanes' start by 1.5 s: they replay for ~8 s (40 tasks at 10x), so it
    lands in the replay; the waits for them are a minute long for what takes ~1 s."""
    trace, cfg = tmp_path / "t.jsonl", tmp_path / "c.yml"
    trace.write_text("".join(
        f'{{"task_id": "t{i}", "task_type": "ocr", "arrival_s": {2.0 * i}, "duration_s": 3}}\n'
        for i in range(40)))
    cfg.write_text("gpu_lock:\n  poll_interval: 0.5\n  max_poll_interval: 2\n"
                   "  max_wait_time: 600\n  lock_timeout: 600\n")
    out = tmp_path / "o.json"
    proc = _gpusim("validate", str(trace), "-c", str(cfg), "--time-scale", "10", "--lanes", "2",
                   "--runs", "2", "--no-calibrate", "--json", str(out))
    deadline = time.monotonic() + 60
    while not _lanes_running(_family(proc.pid), 2):
        assert proc.poll() is None, f"ended before the lanes ran: {proc.communicate()}"
        assert time.monotonic() < deadline, "the lanes never started"
        time.sleep(0.02)
    time.sleep(1.5)
    family = _family(proc.pid)
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, (proc.returncode, stderr[-2000:])
    lines = [ln for ln in stderr.strip().splitlines() if "interrupted" in ln]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert not out.exists()
    deadline = time.monotonic() + 30
    while not all(_gone(p) for p in family):
        assert time.monotonic() < deadline, "a lane or a redis-server is still running"
        time.sleep(0.05)

