"""From a finished study to one config: the Pareto front, the re-check on fresh seeds, the rule.

The search judges each trial on the same few seeds, so the best-looking trials are partly lucky
(selection flatters them). The best feasible trials are therefore simulated again on check
seeds the search never used, with more replications, and only a config that passes every gate
at the conservative end of its 95% interval is recommended.

SELECTION_RULE says which point of the Pareto front wins.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import optuna

from gpusim import GpuLockConfig

from advisor.evaluate import WORKLOAD_BATCHES, Evaluator, Scored

SELECTION_RULE = (
    "Re-check the best feasible trials (the Pareto front on mean lock wait and Redis CPU, then "
    "the lowest waits) on check seeds the search never used; among those that pass every gate "
    "at the conservative end of its 95% interval (for success, timeouts and the wait cut, the "
    "wider of the interval over replications and the interval over 10 batches of consecutive "
    "tasks, which carries the workload's own variability), recommend the one with the lowest "
    "upper 95% bound on mean lock wait; ties go to the lower mean Redis CPU, then to the "
    "earlier trial.")


@dataclass(frozen=True)
class TrialView:
    number: int
    gpu_lock: GpuLockConfig
    wait_mean_s: float
    redis_cpu: float
    feasible: bool
    violation: float
    safe: bool = True   # meets the lock-safety and Redis gates


SAFETY = ("lock_expired_per_acquisition", "double_occupancy_s", "redis_cpu_increase",
          "redis_cpu_peak_1m")


def views(study: optuna.Study) -> list[TrialView]:
    """Every complete trial, in trial-number order, with its point estimates."""
    out = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        cons = t.user_attrs.get("constraints") or {}
        out.append(TrialView(t.number, GpuLockConfig(**_config_params(t.params)),
                             float(t.values[0]), float(t.values[1]),
                             bool(t.user_attrs.get("feasible")),
                             float(sum(max(c, 0.0) for c in cons.values())),
                             all(cons.get(k, 1.0) <= 0 for k in SAFETY)))
    return sorted(out, key=lambda v: v.number)


def _config_params(params: dict[str, Any]) -> dict[str, Any]:
    p = dict(params)
    p["lock_timeout"] = int(p["lock_timeout"])
    return p


def pareto(points: list[TrialView]) -> list[TrialView]:
    """Trials no other trial beats on both objectives (ties kept once, first trial wins)."""
    front, seen = [], set()
    for a in points:
        dominated = any((b.wait_mean_s <= a.wait_mean_s and b.redis_cpu <= a.redis_cpu)
                        and (b.wait_mean_s < a.wait_mean_s or b.redis_cpu < a.redis_cpu)
                        for b in points)
        key = (a.wait_mean_s, a.redis_cpu)
        if not dominated and key not in seen:
            seen.add(key)
            front.append(a)
    return sorted(front, key=lambda v: (v.wait_mean_s, v.number))


def front(trials: list[TrialView]) -> list[TrialView]:
    """The Pareto front worth showing: of the feasible trials; with none, of the safe ones
    (a config that lets keys expire under running tasks is no trade-off); else of all."""
    for pool in ([t for t in trials if t.feasible], [t for t in trials if t.safe], trials):
        if pool:
            return pareto(pool)
    return []


def shortlist(trials: list[TrialView], k: int) -> list[TrialView]:
    """Up to k distinct configs to re-check: feasible ones (Pareto front first, then by wait);
    with none feasible, the k closest to feasible (smallest total gate miss)."""
    feasible = [t for t in trials if t.feasible]
    if feasible:
        front = pareto(feasible)
        rest = sorted((t for t in feasible if t not in front),
                      key=lambda v: (v.wait_mean_s, v.number))
        ordered = front + rest
    else:
        ordered = sorted(trials, key=lambda v: (v.violation, v.wait_mean_s, v.number))
    out, seen = [], set()
    for t in ordered:
        key = tuple(sorted(t.gpu_lock.model_dump().items()))
        if key not in seen:
            seen.add(key)
            out.append(t)
        if len(out) == k:
            break
    return out


@dataclass(frozen=True)
class Checked:
    trial: int
    scored: Scored

    @property
    def wait_upper(self) -> float:
        ci = self.scored.result.ci95.get("wait_mean_s")
        return float(ci[1]) if ci else self.scored.wait_mean_s


def pasteable(cfg: GpuLockConfig, digits: int = 3) -> GpuLockConfig:
    """The config as a person would write it: 3 significant digits (0.312 s, 742 s, 3620 s).
    The re-check runs on these values, so what is pasted is exactly what was checked."""
    def r(v: Any) -> Any:
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v == 0:
            return v
        x = float(f"{v:.{digits}g}")
        return int(x) if isinstance(v, int) else x
    return GpuLockConfig(**{k: r(v) for k, v in cfg.model_dump().items()})


def recheck(evaluator: Evaluator, picks: list[TrialView], *, seed: int,
            replications: int) -> list[Checked]:
    return [Checked(t.number, evaluator.evaluate(pasteable(t.gpu_lock), seed=seed,
                                                 replications=replications,
                                                 workload_batches=WORKLOAD_BATCHES))
            for t in picks]


def choose(checked: list[Checked]) -> Checked | None:
    """SELECTION_RULE: the passing config with the lowest upper bound on mean wait."""
    passing = [c for c in checked if c.scored.passed_conservatively]
    if not passing:
        return None
    return min(passing, key=lambda c: (c.wait_upper, c.scored.redis_cpu, c.trial))


def nearest(checked: list[Checked]) -> Checked | None:
    """When nothing passes: the checked config missing its gates by the least, conservatively."""
    if not checked:
        return None

    def miss(c: Checked) -> float:
        total = 0.0
        for cr in c.scored.criteria:
            end = cr.conservative
            if end is None:
                total += 1.0
            elif not cr.passed_conservatively:
                total += max(c.scored.miss(cr, end), 0.0)
        return total
    return min(checked, key=lambda c: (miss(c), c.wait_upper, c.trial))
