"""Benchmark: the advisor's speed, measured in one run on this machine.

1. Trials per minute of `gpusim tune`'s search on the bundled 2-node, 4-GPU sample day
   (traces/sample_2node_4gpu_day.csv, examples/cluster.yml, today's config as the baseline),
   3 replications a trial, one worker: 100 trials (target: under 2 minutes on a 2-core
   machine). The search is timed alone, then the whole `tune()` (re-check on fresh seeds,
   what-ifs, report data) is timed on top of the finished study.
2. The cost of one trial at the corners of the default space on a week of 16 GPUs (4 nodes,
   about 100,000 tasks): the smallest poll_interval (0.05 s) with backoff off, on the polling
   and on the event-driven path, with the longest max_wait_time (3600 s), 3 replications each;
   YiVideo's production settings for contrast.

Numba's one-off load or compile is paid before any timing (a warm-up simulation).

    python bench/bench_tune.py            # both parts (several minutes)
    python bench/bench_tune.py --quick    # 20 trials and a 1-day 16-GPU trace
"""

from __future__ import annotations

import argparse
import platform
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _warm_up() -> float:
    from gpusim import simulate, trace_from_rows
    t0 = time.perf_counter()
    simulate(trace_from_rows([{"task_type": "ocr", "arrival_s": 0.0, "duration_s": 1.0}]),
             __import__("gpusim").GpuLockConfig())
    return time.perf_counter() - t0


def search_speed(trials: int) -> dict:
    from gpusim import load_cluster, load_lock_settings, load_trace
    from advisor.search import SearchJob, connect, run_search
    from advisor.evaluate import Evaluator
    from advisor.space import SearchSpace
    from advisor.tune import TuneOptions, tune
    from gpusim import Thresholds

    trace = load_trace(ROOT / "traces/sample_2node_4gpu_day.csv")
    cluster = load_cluster(ROOT / "examples/cluster.yml")
    base = load_lock_settings(ROOT / "examples/config.yml")
    with tempfile.TemporaryDirectory() as tmp:
        journal = Path(tmp) / "bench.journal"
        ev = Evaluator(trace, cluster, base, Thresholds())
        job = SearchJob(ev, SearchSpace(), None, journal, "bench", 0, 0, 3, trials)
        t0 = time.perf_counter()
        run_search(job, connect(job))
        search_s = time.perf_counter() - t0
        # the whole tune() on the finished study: only the re-check and what-ifs remain
        t0 = time.perf_counter()
        rec = tune(trace, base, cluster=cluster,
                   options=TuneOptions(trials=trials, journal=journal, study_name="bench"))
        decide_s = time.perf_counter() - t0
    return {"trials": trials, "tasks": len(trace), "search_s": search_s, "decide_s": decide_s,
            "status": rec.status}


def corner_cost(hours: float) -> list[dict]:
    from gpusim import (ClusterSpec, GpuLockConfig, LockSettings, SynthSpec, Thresholds,
                        build_cluster, load_lock_settings, synthesize)
    from advisor.evaluate import Evaluator

    trace = synthesize(SynthSpec(hours=hours, gpus=16, nodes=4, load=0.7), seed=2026)
    cluster = build_cluster(ClusterSpec(nodes=4, gpus_per_node=4, workers_per_service=64))
    prod = load_lock_settings(ROOT / "examples/config.yml")
    ev = Evaluator(trace, cluster, prod, Thresholds())
    t0 = time.perf_counter()
    ev.baseline_result(0, 3)
    rows = [{"case": "baseline (production, once per study)", "tasks": len(trace),
             "s": time.perf_counter() - t0}]
    corner = dict(poll_interval=0.05, max_poll_interval=0.05, exponential_backoff=False,
                  max_wait_time=3600.0, lock_timeout=14_400)
    cases = [("production settings", prod.gpu_lock),
             ("corner: poll 0.05 s, backoff off, polling",
              GpuLockConfig(**corner, use_event_driven=False)),
             ("corner: poll 0.05 s, backoff off, event-driven",
              GpuLockConfig(**corner, use_event_driven=True))]
    for name, cfg in cases:
        t0 = time.perf_counter()
        s = ev.evaluate(cfg, seed=0, replications=3)
        rows.append({"case": name, "tasks": len(trace), "s": time.perf_counter() - t0,
                     "polls": s.result.metrics["polls"]})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    print(f"machine: {platform.machine()}, Python {platform.python_version()}")
    print(f"numba load/compile before timing: {_warm_up():.1f} s")
    trials = 20 if args.quick else 100
    s = search_speed(trials)
    print(f"\nsearch on the 2-node 4-GPU sample day ({s['tasks']} tasks, 3 replications a "
          f"trial, 1 worker): {s['trials']} trials in {s['search_s']:.1f} s = "
          f"{60 * s['trials'] / s['search_s']:.0f} trials/min (target: 100 in < 120 s)")
    print(f"re-check on fresh seeds + what-ifs + rec.json: {s['decide_s']:.1f} s more "
          f"(status {s['status']})")
    hours = 24.0 if args.quick else 168.0
    print(f"\none trial (3 replications) on {hours:g} h of 16 GPUs:")
    for r in corner_cost(hours):
        polls = f", {r['polls'] / 1e6:.1f} M polls a replication" if "polls" in r else ""
        print(f"  {r['case']:48s} {r['s']:7.1f} s  ({r['tasks']} tasks{polls})")


if __name__ == "__main__":
    main()
