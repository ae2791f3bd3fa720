"""`compare()`: one trace under today's config and a candidate, with common random numbers,
judged by the acceptance gates. The CLI's `gpusim compare` and the advisor call it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from gpusim.acceptance import Criterion, Thresholds, compare_json, judge
from gpusim.cluster import Cluster
from gpusim.config import GpuLockConfig, LockSettings
from gpusim.schedule import ConfigChange
from gpusim.simulation import SimulationResult, simulate
from gpusim.traces.format import Trace


@dataclass(frozen=True)
class Comparison:
    baseline: SimulationResult
    candidate: SimulationResult
    thresholds: Thresholds
    criteria: list[Criterion]

    @property
    def passed(self) -> bool:
        return all(c.passed for c in self.criteria)

    def dumps(self) -> str:
        """The comparison JSON (schema gpusim.compare/1), byte-identical for equal inputs."""
        return compare_json(self.baseline, self.candidate, self.thresholds, self.criteria)


def compare(trace: Trace, baseline: LockSettings | GpuLockConfig,
            candidate: LockSettings | GpuLockConfig, cluster: Cluster | None = None,
            thresholds: Thresholds | None = None, *, seed: int = 0, replications: int = 3,
            engine: str = "fast", jobs: int = 1, changes: Sequence[ConfigChange] = (),
            baseline_changes: Sequence[ConfigChange] = ()) -> Comparison:
    """Replay `trace` under both configs on the same seeds (replication r of each sees the same
    random numbers), and judge the candidate against the baseline. `changes` (config changes
    during the trace, gpusim.schedule) apply to the candidate's run, `baseline_changes` to the
    baseline's: by default the baseline is today's config, unchanged."""
    th = thresholds or Thresholds()
    kw = dict(seed=seed, replications=replications, engine=engine, jobs=jobs)
    base = simulate(trace, baseline, cluster, changes=baseline_changes, **kw)
    cand = simulate(trace, candidate, cluster, changes=changes, **kw)
    return Comparison(base, cand, th, judge(base, cand, th))
