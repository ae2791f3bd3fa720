"""The fast engine is the reference engine, only faster: identical records and metrics."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings

from gpusim.config import LockSettings
from gpusim.engine import simulate
from gpusim.engine_fast import FastModel
from gpusim.metrics import run_metrics
from gpusim.model import Model
from gpusim.trace import load_trace

from strategies import scenarios

# At least 500 generated cases per CI run (issue: "Make the model fast").
CASES = settings(max_examples=500, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module")
def sample_1gpu_trace():
    return load_trace(Path(__file__).resolve().parents[1] / "traces/sample_1gpu_day.jsonl")


def run(cls, trace, cluster, cfg, seed):
    return cls(trace, cluster, [LockSettings(gpu_lock=cfg)] * len(cluster.nodes),
               seed=seed).run()


@CASES
@given(scenarios(max_tasks=40))
def test_fast_engine_matches_reference_exactly(sc):
    trace, cluster, cfg, seed = sc
    ref, fast = run(Model, *sc), run(FastModel, *sc)
    assert ref.records == fast.records  # every field of every task, bit for bit
    assert ref.commands == fast.commands and ref.commandstats == fast.commandstats
    assert ref.deliveries == fast.deliveries
    assert np.array_equal(ref.minute_commands, fast.minute_commands)
    assert np.array_equal(ref.minute_deliveries, fast.minute_deliveries)
    assert sorted(ref.holds, key=repr) == sorted(fast.holds, key=repr)
    assert run_metrics(ref, cluster.redis) == run_metrics(fast, cluster.redis)


def test_engines_agree_on_a_busy_sample_trace(sample_1gpu_trace):
    from gpusim.config import GpuLockConfig
    for cfg in (GpuLockConfig(poll_interval=2, max_wait_time=1800, lock_timeout=3600,
                              max_poll_interval=10),
                GpuLockConfig(poll_interval=0.5, max_wait_time=300, lock_timeout=600,
                              max_poll_interval=5, use_event_driven=False)):
        a = simulate(sample_1gpu_trace, cfg, seed=3, engine="reference")
        b = simulate(sample_1gpu_trace, cfg, seed=3, engine="fast")
        assert a.replications[0].records == b.replications[0].records
        ja, jb = a.to_json(), b.to_json()
        assert ja["inputs"].pop("engine") == "reference" and jb["inputs"].pop("engine") == "fast"
        assert ja == jb


def test_parallel_replications_identical_to_serial(sample_1gpu_trace):
    from gpusim.config import GpuLockConfig
    cfg = GpuLockConfig(poll_interval=0.5, max_wait_time=300, lock_timeout=600,
                        max_poll_interval=5)
    serial = simulate(sample_1gpu_trace, cfg, seed=5, replications=3, jobs=1, engine="fast")
    parallel = simulate(sample_1gpu_trace, cfg, seed=5, replications=3, jobs=2, engine="fast")
    assert serial.dumps() == parallel.dumps()
    assert [r.records for r in serial.replications] == [r.records for r in parallel.replications]
