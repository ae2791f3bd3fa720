"""What a per-task-type max_wait_time would buy (the spec's risk matrix asks for one).

YiVideo has one max_wait_time for every task type; gpusim models a per-type value as the named
model option `max_wait_time_by_type` (a code change YiVideo would need). This runs a small
separate search over one max_wait_time per task type, every other setting fixed at the chosen
(or nearest) config, and re-checks its best on the check seeds, so the report can say what that
code change buys apart from anything a config alone can do.
"""

from __future__ import annotations

import optuna

from gpusim import GpuLockConfig

from advisor.evaluate import WORKLOAD_BATCHES, Evaluator, Scored
from advisor.space import SearchSpace


def _cluster_with(ev: Evaluator, waits: dict[str, float]):
    return ev.cluster.with_options(max_wait_time_by_type=waits)


def type_timeouts(ev: Evaluator, s: Scored) -> dict[str, float]:
    """Each type's timeout rate beyond the timeout gate (<= 0 meets it): with one wait per
    type, the overall gate could otherwise hide one type that gives up often."""
    lim = ev.thresholds.timeout_rate_max
    return {f"timeout_rate[{t}]": float(m["timeout_rate"] or 0.0) - lim
            for t, m in sorted(s.result.by_task_type.items())}


def meets_types(ev: Evaluator, s: Scored) -> bool:
    return all(v < 0 for v in type_timeouts(ev, s).values())


def per_type_search(ev: Evaluator, base: GpuLockConfig, space: SearchSpace, *, types: list[str],
                    trials: int, seed: int, sim_seed: int, replications: int,
                    check_seed: int, check_replications: int
                    ) -> tuple[dict[str, float], Scored] | None:
    """(best per-type waits, its re-check on the check seeds), or None with no trials."""
    if trials < 1 or not types:
        return None
    rng = space.max_wait_time
    study = optuna.create_study(directions=["minimize", "minimize"],
                                sampler=optuna.samplers.TPESampler(seed=seed % 2**32,
                                                                   multivariate=True))
    # the status quo first: every type at the config's own max_wait_time
    start = min(max(base.max_wait_time, rng.low), rng.high)
    study.enqueue_trial({f"max_wait_time[{t}]": start for t in types})
    scored: dict[int, tuple[dict[str, float], Scored]] = {}
    for _ in range(trials):
        trial = study.ask()
        waits = {t: trial.suggest_float(f"max_wait_time[{t}]", rng.low, rng.high, log=rng.log)
                 for t in types}
        s = ev.evaluate(base, seed=sim_seed, replications=replications,
                        cluster=_cluster_with(ev, waits))
        for name, v in {**s.constraints(), **type_timeouts(ev, s)}.items():
            trial.set_constraint(name, v)
        study.tell(trial, (s.wait_mean_s, s.redis_cpu))
        scored[trial.number] = (waits, s)
    feasible = [(n, w, s) for n, (w, s) in scored.items() if s.feasible and meets_types(ev, s)]
    if feasible:
        n, waits, _ = min(feasible, key=lambda x: (x[2].wait_mean_s, x[0]))
    else:
        n, waits, _ = min(((n, w, s) for n, (w, s) in scored.items()),
                          key=lambda x: (x[2].violation() + sum(
                              max(v, 0.0) for v in type_timeouts(ev, x[2]).values()),
                              x[2].wait_mean_s, x[0]))
    check = ev.evaluate(base, seed=check_seed, replications=check_replications,
                        cluster=_cluster_with(ev, waits), workload_batches=WORKLOAD_BATCHES)
    return waits, check
