"""How often `gpusim validate` wrongly FAILs a model that is right, and how often it concludes.

A model that is right is the simulator itself: the "real" side is `simulate` with one base
seed, the model side `simulate` with another, same trace, same config, as many replications
each as the CLI's default --runs on this host (3 a lane, `gpusim.real.lanes.default_lanes`: 18
on 2 cores; pairs r with r as validate does, but the streams differ, so the pairs share
nothing: a harder case than a real replay paired by common random numbers). Each
trial is judged by `gpusim.real.comparison.compare` with the default tolerances and intervals
over the trace's regeneration cycles, exactly as `gpusim validate` judges.

A paced replay shares more than that with its twin (the jitter draws and the poll schedule), and
differs in the race among the waiters a release message wakes, which the model draws and the
replay leaves to the host: the "same jitter, independent wake-ups" scenario emulates that,
running both sides on the reference engine with the real side's wake-up ("delivery") streams
taken from another seed (the model has no public knob for it; `_independent_wakeups` swaps the
reference engine's stream key for that one stream, in this bench only).

Also measured: the coverage of the mean-wait interval (how often it holds the truth, 0), and
a deliberately wrong model (polls 30% slower than configured) against the right one, with
independent seeds and with the real side's own seeds (common random numbers).

Both sides are simulated as validate simulates a replay: at its time scale (default 100) with
the round trip a paced replay keeps (default 0.55 ms). That matters: compressed 100x, a round
trip and the window in which woken waiters race are 100 times larger against the trace's
sleeps, so races decide more of the order of service (before session 8 the bench ran at 1x and
understated how far a pair drifts apart).

    python bench/bench_validate.py [--trials 200] [--runs N] [--time-scale 100] [--rtt-ms 0.55]
                                   [--trace T.jsonl] [--config C.yml] [--only S] [--seed 10000]

Default trace: the README's reference case (`gpusim trace synth --hours 2 --gpus 4 --load 0.7
--seed 4`, about 340 tasks) on examples/cluster_1node_4gpu.yml, under examples/config.yml
(event-driven) and a polling variant of it.
"""

from __future__ import annotations

import argparse
import contextlib
import time
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from gpusim.cluster import load_cluster
from gpusim.config import load_lock_settings
from gpusim.real.comparison import compare
from gpusim.real.cycles import regeneration_cycles
from gpusim.cli.real import RUNS_PER_LANE
from gpusim.real.lanes import default_lanes
from gpusim.real.validate import validation_cluster
from gpusim.simulation import simulate
from gpusim.traces.format import load_trace
from gpusim.traces.synth import SynthSpec, synthesize

ROOT = Path(__file__).resolve().parent.parent


@contextlib.contextmanager
def _independent_wakeups(offset: int):
    """The reference engine's wake-up ("delivery") streams from seed + ``offset``; every other
    stream (the poll jitter) unchanged."""
    import gpusim.model.reference as ref

    original = ref.stream_key

    def key(seed: int, replication: int, name: str) -> int:
        return original(seed + offset if name == "delivery" else seed, replication, name)

    ref.stream_key = key
    try:
        yield
    finally:
        ref.stream_key = original


def _judge(trace, real_cfg, model_cfg, cluster, cycles, trials: int, runs: int,
           same_seeds: bool, wakeups_apart: bool = False, base: int = 10_000,
           time_scale: float = 1.0):
    verdicts: Counter[str] = Counter()
    rows: dict[str, Counter[str]] = {}
    cover, scaled = [], []
    engine = "reference" if wakeups_apart else "fast"
    for k in range(trials):
        with _independent_wakeups(10**6) if wakeups_apart else contextlib.nullcontext():
            real = simulate(trace, real_cfg, cluster, seed=base + k, replications=runs,
                            engine=engine, time_scale=time_scale)
        model = simulate(trace, model_cfg, cluster, seed=base + (0 if same_seeds else 10_000) + k,
                         replications=runs, engine=engine, time_scale=time_scale)
        cmp_ = compare(real, model, cycles=cycles, paired=True, time_scale=time_scale)
        verdicts[cmp_.verdict] += 1
        for r in cmp_.rows:
            if r.tolerance is not None:
                rows.setdefault(r.name, Counter())[r.verdict] += 1
            if r.name == "wait_mean_s" and r.ci_low is not None:
                cover.append(r.ci_low <= 0 <= r.ci_high)
                scaled.append(abs(r.error) / max((r.ci_high - r.ci_low) / 2, 1e-12))
    return verdicts, rows, (float(np.mean(cover)) if cover else float("nan")), scaled


def _show(title: str, trials: int, verdicts, rows, cover, scaled) -> None:
    print(f"\n{title}: {trials} trials")
    print("  overall: " + ", ".join(f"{v} {verdicts[v] / trials:.1%}"
                                    for v in ("PASS", "INCONCLUSIVE", "FAIL")))
    for name, c in rows.items():
        print(f"  {name:14s} " + ", ".join(f"{v} {c[v] / trials:.1%}"
                                           for v in ("PASS", "INCONCLUSIVE", "FAIL")))
    print(f"  mean-wait intervals holding 0 (the truth for a right model): {cover:.1%}")
    if scaled:  # 1.0 at the 95th percentile would be an interval as wide as it must be
        print("  |error| / interval half-width, 95th percentile: "
              f"{float(np.percentile(scaled, 95)):.2f} (wider than needed when well below 1)")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=200)
    ap.add_argument("--runs", type=int, default=RUNS_PER_LANE * default_lanes(),
                    help="real runs a side (default: validate's on this host)")
    ap.add_argument("--seed", type=int, default=10_000, help="first trial's real-side seed")
    ap.add_argument("--time-scale", type=float, default=100.0,
                    help="the replay's speed-up, as validate's --time-scale (default: the "
                         "issue's 100): the race windows of a round trip grow with it against "
                         "the trace's sleeps")
    ap.add_argument("--rtt-ms", type=float, default=0.55,
                    help="the round trip a replay is paced with, replay ms (default: the 2-core "
                         "VM's idle-wake round trip)")
    ap.add_argument("--trace", type=Path)
    ap.add_argument("--only", default="", help="run only the scenarios whose name has this")
    ap.add_argument("--config", type=Path, default=ROOT / "examples" / "config.yml")
    ap.add_argument("--cluster", type=Path, default=ROOT / "examples" / "cluster_1node_4gpu.yml")
    a = ap.parse_args()
    # scipy's KS falls back from its exact method on tied waits; the tests are information only
    warnings.filterwarnings("ignore", message="ks_2samp: Exact calculation unsuccessful")
    trace = (load_trace(a.trace) if a.trace else
             synthesize(SynthSpec(hours=2, gpus=4, load=0.7), 4))
    settings = load_lock_settings(a.config)
    cluster = load_cluster(a.cluster)
    sim_cluster = validation_cluster(cluster, len(trace), rtt_s=a.rtt_ms / 1e3)
    cfg = settings.gpu_lock
    polling = cfg.model_copy(update={"use_event_driven": False})
    slow = polling.model_copy(update={"poll_interval": cfg.poll_interval * 1.3,
                                      "max_poll_interval": cfg.max_poll_interval * 1.3})
    print(f"trace: {len(trace)} tasks; config {a.config.name}; {a.runs} runs a side; time scale "
          f"{a.time_scale:g}, round trip {a.rtt_ms:g} ms")
    # a right model against independent seeds (pairing the same seeds would be identical
    # runs); the wrong model also with the real side's own seeds (common random numbers, as a
    # real replay and its simulated twin share their jitter draws)
    for name, real_cfg, model_cfg, same, apart in (
            ("event-driven (config as given), right model", cfg, cfg, False, False),
            ("polling, right model", polling, polling, False, False),
            ("event-driven, right model, same jitter, independent wake-ups (a paced replay)",
             cfg, cfg, True, True),
            ("polling, model polls 30% slower, independent seeds", polling, slow, False, False),
            ("polling, model polls 30% slower, same seeds (CRN)", polling, slow, True, False)):
        if a.only and a.only not in name:
            continue
        cycles = regeneration_cycles(trace, real_cfg, cluster)
        t0 = time.perf_counter()
        v, rows, cover, scaled = _judge(trace, real_cfg, model_cfg, sim_cluster, cycles,
                                        a.trials, a.runs, same, apart, a.seed, a.time_scale)
        _show(f"{name} ({int(cycles.max()) + 1} cycles, {time.perf_counter() - t0:.0f} s)",
              a.trials, v, rows, cover, scaled)


if __name__ == "__main__":
    main()
