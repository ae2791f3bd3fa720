"""Benchmark: loading traces and starting the CLI.

Prints, all measured in this one run on this machine:
* rows per second loading 1,000,000-row JSONL and CSV traces with `load_trace` (the columnar
  reader), and with the row-by-row reader it falls back to (what every load cost before);
* wall and CPU time of `gpusim --help` and of `gpusim simulate` on a 1-task trace (after one
  warm-up run, so numba's cache is warm);
* end to end through the CLI, `gpusim simulate` on a week of 16 GPUs (4 nodes of 4) at
  YiVideo's production settings (examples/config.yml), after one warm-up run.

Each load is the first in a child process of its own (a fresh interpreter, as in a CLI run),
after loading a 2-row file of the same format so that importing the readers is not counted;
peak RSS is that child's. CLI commands run as the `gpusim` console script. The machine may be shared:
the load average is printed with the figures, and CPU time (user + sys of the child) is the
figure less disturbed by other work. Nothing here asserts a timing.

    python bench/bench_io.py            # everything (a minute or two)
    python bench/bench_io.py --quick    # without the row-by-row reader and with fewer repeats
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ROWS = 1_000_000

_LOAD_CHILD = r"""
import json, resource, sys, time
from gpusim.traces.format import _load_rows, load_trace, trace_format
path, small, reader = sys.argv[1], sys.argv[2], sys.argv[3]
def row_reader(p):
    return _load_rows(p, trace_format(p))
load = load_trace if reader == "columnar" else row_reader
load(small)  # imports (msgspec, pyarrow, pydantic) are not what is measured
w, c = time.perf_counter(), time.process_time()
rows = len(load(path))
print(json.dumps({"rows": rows, "wall": time.perf_counter() - w, "cpu": time.process_time() - c,
                  "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def write_traces(folder: Path, rows: int) -> dict[str, Path]:
    """A YiVideo-like trace of `rows` rows with every field, as JSONL and CSV (numpy, seeded)."""
    import numpy as np

    rng = np.random.default_rng(2026)
    types = np.array(["paddleocr", "ffmpeg", "faster_whisper"])
    kind = rng.choice(3, size=rows, p=[0.6, 0.3, 0.1])
    mean_hold = np.array([2.1, 45.0, 500.0])[kind]
    duration = rng.lognormal(np.log(mean_hold) - 0.125, 0.5)
    arrival = np.cumsum(rng.exponential(5.8, size=rows))
    arrival -= arrival[0]
    node = rng.integers(0, 2, size=rows)
    gpu = rng.integers(0, 8, size=rows)
    crashed = rng.random(rows) < 0.01
    records = list(zip(range(rows), types[kind].tolist(), arrival.tolist(), duration.tolist(),
                       node.tolist(), gpu.tolist(), crashed.tolist()))
    jsonl, csv = folder / f"trace_{rows}.jsonl", folder / f"trace_{rows}.csv"
    crash = ', "crashed": true'
    with open(jsonl, "w", encoding="utf-8") as fh:
        fh.writelines(
            f'{{"task_id": "t{i:07d}", "task_type": "{t}", "arrival_s": {a!r}, "duration_s": '
            f'{d!r}, "node": "node{n}", "gpu": {g}{crash if c else ""}}}\n'
            for i, t, a, d, n, g, c in records)
    with open(csv, "w", encoding="utf-8") as fh:
        fh.write("task_id,task_type,arrival_s,duration_s,node,gpu,crashed\n")
        fh.writelines(f"t{i:07d},{t},{a!r},{d!r},node{n},{g},{'true' if c else 'false'}\n"
                      for i, t, a, d, n, g, c in records)
    small = {}
    for path in (jsonl, csv):
        small_path = folder / ("small" + path.suffix)
        with open(path, encoding="utf-8") as src:
            small_path.write_text("".join(src.readline() for _ in range(3)), encoding="utf-8")
        small[path.suffix] = small_path
    return {"jsonl": jsonl, "csv": csv, "small.jsonl": small[".jsonl"], "small.csv": small[".csv"]}


def measure_load(path: Path, small: Path, reader: str, reps: int) -> dict:
    """`reps` loads, each the first in a fresh interpreter (as in a CLI run)."""
    runs = []
    for _ in range(reps):
        done = subprocess.run([sys.executable, "-c", _LOAD_CHILD, str(path), str(small), reader],
                              capture_output=True, text=True, check=True, cwd=ROOT)
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
    return {"rows": runs[0]["rows"], "wall": [r["wall"] for r in runs],
            "cpu": [r["cpu"] for r in runs], "rss_mb": max(r["rss_mb"] for r in runs)}


def gpusim_command() -> list[str]:
    script = Path(sys.executable).with_name("gpusim")
    return [str(script)] if script.exists() else [sys.executable, "-m", "gpusim"]


def run_cli(args: list[str], reps: int, cwd: Path) -> dict:
    """Wall and CPU seconds of `gpusim ARGS`, after one warm-up run; exit code must be 0."""
    cmd = gpusim_command() + args
    subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)  # warm-up (numba cache)
    walls, cpus = [], []
    for _ in range(reps):
        before = resource.getrusage(resource.RUSAGE_CHILDREN)
        w = time.perf_counter()
        subprocess.run(cmd, cwd=cwd, capture_output=True, check=True)
        walls.append(time.perf_counter() - w)
        after = resource.getrusage(resource.RUSAGE_CHILDREN)
        cpus.append(after.ru_utime - before.ru_utime + after.ru_stime - before.ru_stime)
    return {"wall": walls, "cpu": cpus}


def fmt(xs: list[float]) -> str:
    return f"min {min(xs):6.2f} s  median {statistics.median(xs):6.2f} s"


def bench_loads(folder: Path, files: dict[str, Path], reps: int, row_reader: bool) -> None:
    print(f"\nloading {ROWS:,}-row traces: each load the first in a fresh process, imports not "
          f"counted; columnar (load_trace) {reps} times, row-by-row (its fallback) once")
    for fmt_ in ("jsonl", "csv"):
        path = files[fmt_]
        size = path.stat().st_size / 1e6
        readers = ["columnar"] + (["row-by-row"] if row_reader else [])
        res = {r: measure_load(path, files[f"small.{fmt_}"], r, reps if r == "columnar" else 1)
               for r in readers}
        for reader, r in res.items():
            median = statistics.median(r["wall"])
            print(f"  {fmt_:5s} {size:6.1f} MB  {reader:10s} wall {fmt(r['wall'])}  cpu min "
                  f"{min(r['cpu']):5.2f} s  {r['rows'] / median:9,.0f} rows/s (median)  "
                  f"peak RSS {r['rss_mb']:5.0f} MB")
        if row_reader:
            print(f"  {fmt_:5s} columnar / row-by-row speed-up: "
                  f"{min(res['row-by-row']['wall']) / min(res['columnar']['wall']):.1f}x")


def bench_cli(folder: Path, reps: int) -> None:
    one = folder / "one.jsonl"
    one.write_text('{"task_type": "paddleocr", "arrival_s": 0, "duration_s": 1}\n')
    config = ROOT / "examples" / "config.yml"
    print(f"\nCLI start ({' '.join(gpusim_command())}; {reps} runs after one warm-up)")
    for label, args in (("gpusim --help", ["--help"]),
                        ("gpusim simulate, 1 task", ["simulate", str(one), "-c", str(config)])):
        r = run_cli(args, reps, folder)
        print(f"  {label:28s} wall {fmt(r['wall'])}  cpu {fmt(r['cpu'])}")


def bench_week(folder: Path, reps: int) -> None:
    week = folder / "week.jsonl"
    cluster = folder / "cluster.yml"
    cluster.write_text("nodes: 4\ngpus_per_node: 4\n")
    synth = ["trace", "synth", "--hours", "168", "--gpus", "16", "--nodes", "4", "--load", "0.7",
             "--seed", "2026", "-o", str(week)]
    made = subprocess.run(gpusim_command() + synth, cwd=folder, capture_output=True, text=True,
                          check=True)
    tasks = made.stdout.split(":", 1)[1].split("tasks", 1)[0].strip()
    args = ["simulate", str(week), "-c", str(ROOT / "examples" / "config.yml"), "-k",
            str(cluster)]
    print(f"\nweek of 16 GPUs end to end: `gpusim {' '.join(synth[:-2])}` ({tasks} tasks), then"
          f"\n  `gpusim simulate week.jsonl -c examples/config.yml -k cluster.yml` (4 nodes x 4 "
          f"GPUs; {reps} runs after one warm-up)")
    r = run_cli(args, reps, folder)
    print(f"  {'gpusim simulate, week':28s} wall {fmt(r['wall'])}  cpu {fmt(r['cpu'])}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true",
                        help="skip the row-by-row reader; fewer repeats")
    opts = parser.parse_args()
    reps = 2 if opts.quick else 3
    print(f"bench_io: {platform.python_implementation()} {platform.python_version()}, "
          f"{os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.2f} at start; "
          f"PYTHONDONTWRITEBYTECODE={os.environ.get('PYTHONDONTWRITEBYTECODE', '')!r}")
    with tempfile.TemporaryDirectory(prefix="bench_io_") as tmp:
        folder = Path(tmp)
        t = time.perf_counter()
        files = write_traces(folder, ROWS)
        print(f"wrote {ROWS:,}-row JSONL and CSV traces in {time.perf_counter() - t:.1f} s")
        bench_loads(folder, files, 2 if opts.quick else 5, row_reader=not opts.quick)
        bench_cli(folder, 3 if opts.quick else 5)
        bench_week(folder, reps)
    print(f"\nload average at the end {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
