"""One trial's evaluation: simulate a candidate in process, paired with the cached baseline.

Replication r of the candidate and replication r of the baseline use the same seed, so each
task's jitter comes from the same stream in both (common random numbers): the gates' intervals
are on paired differences, far narrower than two independent runs would give.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gpusim import (Cluster, Criterion, GpuLockConfig, LockSettings, SimulationResult,
                    Thresholds, Trace, judge, ratio_ci, simulate, task_batches)

# Gates judged by the advisor, in judge()'s order (gpusim.acceptance).
GATES = ("success_rate", "wait_mean_reduction", "redis_cpu_increase", "timeout_rate",
         "lock_expired_per_acquisition", "double_occupancy_s", "redis_cpu_peak_1m")


@dataclass(frozen=True)
class Scored:
    """A candidate judged against the baseline on the same seeds."""
    gpu_lock: GpuLockConfig
    result: SimulationResult
    criteria: list[Criterion]
    span_s: float

    @property
    def wait_mean_s(self) -> float:
        return float(self.result.metrics["wait_mean_s"])

    @property
    def redis_cpu(self) -> float:
        return float(self.result.metrics["redis_cpu_utilization"])

    def criterion(self, name: str) -> Criterion:
        return next(c for c in self.criteria if c.name == name)

    @property
    def feasible(self) -> bool:
        """Every gate met by its point estimate (the search's view)."""
        return all(c.passed for c in self.criteria)

    @property
    def passed_conservatively(self) -> bool:
        """Every gate met at the unfavourable end of its 95% interval (the check's view)."""
        return all(c.passed_conservatively for c in self.criteria)

    def constraints(self) -> dict[str, float]:
        """Optuna constraint values, feasible when <= 0: how far each gate is missed.

        Rates are in their own units; seconds of double occupancy are taken as a share of the
        trace span, so no one gate's units swamp the others in the sampler's total violation."""
        return {c.name: 1.0 if c.value is None else self.miss(c, c.value)
                for c in self.criteria}

    def miss(self, c: Criterion, at: float) -> float:
        """How far `at` misses gate `c`, in the units constraints() uses (<= 0: it does not)."""
        scale = max(self.span_s, 1.0) if c.name == "double_occupancy_s" else 1.0
        return float(c.shortfall(at) / scale)

    def violation(self) -> float:
        return sum(max(v, 0.0) for v in self.constraints().values())

    def summary(self) -> dict[str, Any]:
        """Point estimates a trial keeps as user attributes (JSON-able)."""
        m = self.result.metrics
        return {"gates": {c.name: c.value for c in self.criteria},
                "constraints": self.constraints(), "feasible": self.feasible,
                "wait_mean_s": m["wait_mean_s"], "timeout_rate": m["timeout_rate"],
                "success_rate": m["success_rate"],
                "redis_cpu_utilization": m["redis_cpu_utilization"]}


WORKLOAD_BATCHES = 10      # batches of consecutive tasks for the workload intervals
MIN_BATCH_TASKS = 20       # fewer tasks per batch: no workload interval (too noisy to mean much)


def _batch_totals(result: SimulationResult, batches: int) -> dict[str, np.ndarray]:
    """Per-batch totals summed over replications (the same tasks fall in the same batch)."""
    tot: dict[str, np.ndarray] = {}
    for rep in result.replications:
        for k, v in task_batches(rep.records, batches).items():
            tot[k] = tot.get(k, 0) + v
    return tot


def _hull(a: list[float] | None, b: list[float] | None) -> list[float] | None:
    if a is None or b is None:
        return a or b
    return [min(a[0], b[0]), max(a[1], b[1])]


def with_workload_intervals(base: SimulationResult, cand: SimulationResult,
                            criteria: list[Criterion], batches: int) -> list[Criterion]:
    """Widen the task-level gates' intervals to cover the workload's own variability.

    Replications differ only in jitter, so their interval says nothing about how much a gate
    depends on which hours the trace holds; batches of consecutive tasks do (batch means,
    paired: both configs see the same tasks in a batch). Each of success_rate, timeout_rate and
    wait_mean_reduction gets the hull of its replication and its batch interval."""
    n = int(base.inputs["trace"]["tasks"])
    batches = min(batches, n // MIN_BATCH_TASKS)
    if batches < 2:
        return criteria
    b, c = _batch_totals(base, batches), _batch_totals(cand, batches)
    _, succ = ratio_ci(c["acquired"], c["tasks"])
    _, tout = ratio_ci(c["timeouts"], c["tasks"])
    _, ratio = ratio_ci(c["wait_s"], b["wait_s"])
    red = None if ratio is None else [1.0 - ratio[1], 1.0 - ratio[0]]
    wider = {"success_rate": succ, "timeout_rate": tout, "wait_mean_reduction": red}
    out = []
    for cr in criteria:
        if cr.name in wider:
            cr = Criterion(cr.name, cr.value, _hull(cr.ci95, wider[cr.name]), cr.op,
                           cr.threshold, cr.passed)
        out.append(cr)
    return out


@dataclass
class Evaluator:
    """The inputs every trial shares: the trace is loaded once per worker and the baseline
    simulated once per (seed, replications, cluster)."""
    trace: Trace
    cluster: Cluster
    baseline: LockSettings
    thresholds: Thresholds
    engine: str = "fast"
    _baselines: dict[tuple, SimulationResult] = field(default_factory=dict, repr=False)

    def settings(self, gpu_lock: GpuLockConfig) -> LockSettings:
        # the candidate changes gpu_lock only; the monitor section stays today's
        return LockSettings(gpu_lock=gpu_lock, gpu_lock_monitor=self.baseline.gpu_lock_monitor,
                            source="<candidate>")

    def baseline_result(self, seed: int, replications: int) -> SimulationResult:
        key = (seed, replications)
        if key not in self._baselines:
            self._baselines[key] = simulate(self.trace, self.baseline, self.cluster, seed=seed,
                                            replications=replications, engine=self.engine)
        return self._baselines[key]

    def evaluate(self, gpu_lock: GpuLockConfig, *, seed: int, replications: int,
                 cluster: Cluster | None = None, workload_batches: int = 0) -> Scored:
        """Simulate `gpu_lock` (on `cluster`, default the baseline's) and judge it against the
        baseline on the baseline's cluster, replication by replication; with
        `workload_batches`, the task-level gates' intervals also cover the workload's
        variability (with_workload_intervals)."""
        base = self.baseline_result(seed, replications)
        cand = simulate(self.trace, self.settings(gpu_lock), cluster or self.cluster, seed=seed,
                        replications=replications, engine=self.engine)
        span = float(base.metrics.get("horizon_s") or 0.0)
        criteria = judge(base, cand, self.thresholds)
        if workload_batches:
            criteria = with_workload_intervals(base, cand, criteria, workload_batches)
        return Scored(gpu_lock, cand, criteria, span)
