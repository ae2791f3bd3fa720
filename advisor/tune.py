"""`advisor.tune()`: search, re-check, choose, explain; returns a typed Recommendation.

The CLI (`gpusim tune`) and notebooks/02_tuning.ipynb both call this.
"""

from __future__ import annotations

import hashlib
import json
import platform
import warnings
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna

from gpusim import (Cluster, GpuLockConfig, InputError, LockSettings, SimulationResult,
                    Thresholds, Trace, __version__, default_cluster)

from advisor import choose as ch
from advisor import explain as ex
from advisor.evaluate import GATES, Evaluator, Scored
from advisor.per_type import meets_types, per_type_search
from advisor.recommendation import (Candidate, Estimate, Gate, Headroom, IdealLock, Inputs,
                                    ParetoPoint, PerTypeOption, Recommendation, Recommended,
                                    SearchInfo, StudyInfo, TraceInfo, Versions, WaitCurve,
                                    WhatIf)
from advisor.search import SearchJob, connect, run_search, sampler_name
from advisor.space import SearchSpace

METRICS = ("success_rate", "timeout_rate", "wait_mean_s", "wait_p95_s", "wait_p99_s",
           "wait_held_mean_s", "wait_free_mean_s", "wait_free_share", "polls",
           "redis_ops_per_s", "redis_cpu_utilization", "redis_cpu_utilization_peak_1m",
           "gpu_utilization", "lock_expired_while_held", "double_occupancy_s",
           "emergency_deletes")


@dataclass(frozen=True)
class TuneOptions:
    trials: int = 100
    replications: int = 3
    seed: int = 0
    storage: str | None = None          # None: a journal file `journal`
    journal: Path = Path("gpusim-tune.journal")
    study_name: str | None = None       # None: derived from every input (same command resumes)
    jobs: int = 1
    check_candidates: int = 5
    check_replications: int = 10
    per_type_trials: int = 30
    engine: str = "fast"


def check_seed_of(seed: int) -> int:
    """A simulate() seed the search never uses: a fixed odd-multiplier mix of the seed."""
    s = (seed * 0x9E3779B97F4A7C15 + 0xD1B54A32D192ED03) % 2**64
    return s if s != seed else (s + 1) % 2**64


def study_name_for(sha: str, baseline: GpuLockConfig, cluster: Cluster,
                   th: Thresholds, space: SearchSpace, opt: TuneOptions) -> str:
    doc = json.dumps({"trace": sha, "baseline": baseline.model_dump(),
                      "cluster": [(n.name, n.gpus) for n in cluster.nodes] + [cluster.gpu_policy],
                      "th": th.model_dump(), "space": space.model_dump(mode="json"),
                      "seed": opt.seed, "reps": opt.replications}, sort_keys=True)
    return "gpusim-tune-" + hashlib.sha256(doc.encode()).hexdigest()[:12]


def tune(trace: Trace, baseline: LockSettings, *, cluster: Cluster | None = None,
         thresholds: Thresholds | None = None, space: SearchSpace | None = None,
         options: TuneOptions = TuneOptions(),
         on_trial: Callable[[int, int], None] | None = None) -> Recommendation:
    """Search `space` for a gpu_lock config that passes every gate against `baseline` on
    `trace`; re-check the best on fresh seeds; explain. `on_trial(done, target)` reports
    progress. Raises KeyboardInterrupt when interrupted (the study resumes on the next call)."""
    cluster = cluster or default_cluster()
    th = thresholds or Thresholds()
    space = space or SearchSpace()
    _check_options(options)
    ev = Evaluator(trace, cluster, baseline, th, engine=options.engine)
    base_search = ev.baseline_result(options.seed, options.replications)  # checks the inputs
    sha = base_search.inputs["trace"]["sha256"]
    name = options.study_name or study_name_for(sha, baseline.gpu_lock, cluster, th,
                                                space, options)
    job = SearchJob(ev, space, options.storage, options.journal, name, options.seed,
                    options.seed, options.replications, options.trials)
    storage = connect(job)
    run_search(job, storage, options.jobs, on_done=_progress(storage, name, options, on_trial))
    study = optuna.load_study(study_name=name, storage=storage.storage)
    return _decide(ev, study, storage.url, space, options, base_search)


def _check_options(o: TuneOptions) -> None:
    for name in ("trials", "replications", "jobs", "check_candidates", "check_replications"):
        if getattr(o, name) < 1:
            raise InputError("must be >= 1", field=name)
    if o.check_replications < 2:
        raise InputError("must be >= 2 (an interval needs two replications)",
                         field="check_replications")
    if o.per_type_trials < 0:
        raise InputError("must be >= 0", field="per_type_trials")


def _progress(storage: Any, name: str, o: TuneOptions,
              on_trial: Callable[[int, int], None] | None) -> Callable | None:
    if on_trial is None:
        return None

    def done(_: optuna.trial.FrozenTrial) -> None:
        n = len(storage.storage.get_all_trials(
            storage.storage.get_study_id_from_name(name), deepcopy=False,
            states=(optuna.trial.TrialState.COMPLETE,)))
        on_trial(n, o.trials)
    return done


def _decide(ev: Evaluator, study: optuna.Study, storage_url: str, space: SearchSpace,
            o: TuneOptions, base_search: SimulationResult) -> Recommendation:
    trials = ch.views(study)
    picks = ch.shortlist(trials, o.check_candidates)
    cseed = check_seed_of(o.seed)
    checked = ch.recheck(ev, picks, seed=cseed, replications=o.check_replications)
    winner = ch.choose(checked)
    shown = winner or ch.nearest(checked)
    base_check = ev.baseline_result(cseed, o.check_replications)
    what_if = _what_if(ev, space, o, trials, picks, shown, cseed)
    cut, least = ex.reach(study, ev.thresholds)
    head = Headroom(overall=ex.headroom_row(base_check.metrics),
                    by_task_type={k: ex.headroom_row(v)
                                  for k, v in base_check.by_task_type.items()},
                    best_wait_reduction_within_timeout_gate=cut,
                    least_timeout_rate_at_wait_gate=least)
    gates = [_gate(c) for c in shown.scored.criteria] if shown else []
    binding = [g.name for g in gates if not g.passed]
    explanation = _sentences(ev, winner, shown, gates, head, what_if, len(trials), o, space)
    return Recommendation(
        created_at=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        status="recommended" if winner else "infeasible",
        inputs=_inputs(ev, base_search, space, o),
        recommended=_recommended(ev, winner) if winner else None,
        nearest=None if winner or not shown else _candidate(shown),
        binding_gates=binding,
        metrics=_metrics(base_check, shown),
        gates=gates, headroom=head,
        pareto_front=[ParetoPoint(trial=t.number, gpu_lock=t.gpu_lock.model_dump(),
                                  wait_mean_s=t.wait_mean_s, redis_cpu_utilization=t.redis_cpu,
                                  feasible=t.feasible) for t in ch.front(trials)],
        candidates=[_candidate(c) for c in checked],
        importances=_importances(study, o.seed),
        explanation=explanation,
        wait_curves=_curves(ev, base_check, shown),
        what_if=what_if,
        study=StudyInfo(storage=storage_url, name=study.study_name,
                        trials_by_state=_states(study)))


def _what_if(ev: Evaluator, space: SearchSpace, o: TuneOptions, trials: list[ch.TrialView],
             picks: list[ch.TrialView], shown: ch.Checked | None, cseed: int) -> WhatIf:
    base_cfg = shown.scored.gpu_lock if shown else ev.baseline.gpu_lock
    types = sorted(ev.trace.columns.types)
    found = per_type_search(ev, base_cfg, space, types=types, trials=o.per_type_trials,
                            seed=o.seed, sim_seed=o.seed, replications=o.replications,
                            check_seed=cseed, check_replications=o.check_replications)
    per_type = None
    if found is not None:
        waits, s = found
        per_type = PerTypeOption(max_wait_time_by_type=waits, base_config=base_cfg.model_dump(),
                                 gates=[_gate(c) for c in s.criteria],
                                 passed=s.passed_conservatively and meets_types(ev, s),
                                 wait_reduction=s.criterion("wait_mean_reduction").value,
                                 timeout_rate=s.criterion("timeout_rate").value,
                                 timeout_rate_by_task_type={
                                     k: v.get("timeout_rate")
                                     for k, v in sorted(s.result.by_task_type.items())})
    ideal = _ideal(ev, space, o)
    if shown is not None and shown.scored.passed_conservatively:
        return WhatIf(ideal_lock=ideal, per_type_max_wait=per_type)
    # nothing passes: how many GPUs would it take, for today's config or the closest ones
    configs = [ev.baseline.gpu_lock] + [t.gpu_lock for t in picks[:3]]
    rows, needed = ex.gpu_what_if(ev, configs, seed=o.seed, replications=o.replications)
    return WhatIf(ideal_lock=ideal, gpus=rows, gpus_needed=needed, per_type_max_wait=per_type)


def _ideal(ev: Evaluator, space: SearchSpace, o: TuneOptions) -> IdealLock:
    cfg = ex.ideal_lock(space.poll_interval.low)
    s = ev.evaluate(cfg, seed=o.seed, replications=o.replications)
    red = s.criterion("wait_mean_reduction")
    return IdealLock(gpu_lock=cfg.model_dump(),
                     wait_reduction=Estimate(mean=red.value,
                                             ci95=tuple(red.ci95) if red.ci95 else None),
                     timeout_rate=s.criterion("timeout_rate").value)


def _gate(c: Any) -> Gate:
    cons = c.conservative
    cm = None if cons is None else -c.shortfall(cons)
    return Gate(name=c.name, op=c.op, threshold=c.threshold, value=c.value,
                ci95=tuple(c.ci95) if c.ci95 else None, conservative=cons, margin=c.margin,
                conservative_margin=cm, passed=c.passed_conservatively)


def _estimate(r: SimulationResult, key: str) -> Estimate:
    ci = r.ci95.get(key)
    return Estimate(mean=r.metrics.get(key), ci95=tuple(ci) if ci else None)


def _candidate(c: ch.Checked) -> Candidate:
    r = c.scored.result
    return Candidate(trial=c.trial, gpu_lock=c.scored.gpu_lock.model_dump(),
                     wait_mean_s=_estimate(r, "wait_mean_s"),
                     redis_cpu_utilization=_estimate(r, "redis_cpu_utilization"),
                     gates=[_gate(x) for x in c.scored.criteria],
                     passed=c.scored.passed_conservatively)


def _metrics(base: SimulationResult, shown: ch.Checked | None) -> dict[str, dict[str, Estimate]]:
    out = {"baseline": {k: _estimate(base, k) for k in METRICS if k in base.metrics}}
    if shown is not None:
        r = shown.scored.result
        out["candidate"] = {k: _estimate(r, k) for k in METRICS if k in r.metrics}
    return out


def gpu_lock_yaml(cfg: GpuLockConfig) -> str:
    lines = ["gpu_lock:"]
    for k, v in cfg.model_dump().items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        elif isinstance(v, float):
            v = f"{v:.6g}"
        lines.append(f"  {k}: {v}")
    return "\n".join(lines) + "\n"


def _recommended(ev: Evaluator, c: ch.Checked) -> Recommended:
    cfg = c.scored.gpu_lock  # already rounded for pasting (choose.pasteable), and checked so
    base = ev.baseline.gpu_lock.model_dump()
    return Recommended(gpu_lock=cfg.model_dump(), yaml=gpu_lock_yaml(cfg), trial=c.trial,
                       changed=[k for k, v in cfg.model_dump().items() if base.get(k) != v])


def _curves(ev: Evaluator, base: SimulationResult, shown: ch.Checked | None) -> list[WaitCurve]:
    out = []
    runs = [("baseline", base, ev.baseline.gpu_lock)]
    if shown is not None:
        label = "recommended" if shown.scored.passed_conservatively else "nearest"
        runs.append((label, shown.scored.result, shown.scored.gpu_lock))
    for label, res, cfg in runs:
        for t in sorted(res.by_task_type):
            out.append(WaitCurve(config=label, **ex.wait_curve(res, t, cfg.max_wait_time)))
    return out


def _importances(study: optuna.Study, seed: int) -> dict[str, dict[str, float]]:
    """PED-ANOVA importance of each setting for each objective: how much more concentrated a
    setting's values are among the best 10% of trials than among all (Optuna's own evaluator,
    deterministic and without scikit-learn). Empty with too few trials to judge."""
    out = {}
    ev = optuna.importance.PedAnovaImportanceEvaluator()
    for i, name in enumerate(("wait_mean_s", "redis_cpu_utilization")):
        try:
            with warnings.catch_warnings():  # "few trials in a regime": the report says so
                warnings.simplefilter("ignore")
                imp = optuna.importance.get_param_importances(
                    study, evaluator=ev, target=lambda t, i=i: t.values[i])
        except (RuntimeError, ValueError):
            imp = {}
        out[name] = {k: float(v) for k, v in sorted(imp.items())}
    return out


def _states(study: optuna.Study) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name] = counts.get(t.state.name, 0) + 1
    return dict(sorted(counts.items()))


def _inputs(ev: Evaluator, base: SimulationResult, space: SearchSpace,
            o: TuneOptions) -> Inputs:
    cols = ev.trace.columns
    span = float(cols.arrival_s.max() - cols.arrival_s.min()) if len(ev.trace) else 0.0
    tr = base.inputs["trace"]
    return Inputs(
        trace=TraceInfo(path=str(tr["source"]), sha256=tr["sha256"], tasks=int(tr["tasks"]),
                        span_s=span, task_types=sorted(cols.types)),
        baseline={"source": ev.baseline.source, "gpu_lock": ev.baseline.gpu_lock.model_dump()},
        cluster=base.inputs["cluster"], thresholds=ev.thresholds.model_dump(),
        space=space.model_dump(mode="json"),
        search=SearchInfo(sampler=sampler_name(), seed=o.seed, trials=o.trials,
                          replications=o.replications, simulation_seed=o.seed,
                          check_seed=check_seed_of(o.seed),
                          check_replications=o.check_replications,
                          check_candidates=o.check_candidates, selection_rule=ch.SELECTION_RULE),
        versions=Versions(gpusim=__version__, optuna=optuna.__version__,
                          numpy=np.__version__, python=platform.python_version()))


def _sentences(ev: Evaluator, winner: ch.Checked | None, shown: ch.Checked | None,
               gates: list[Gate], head: Headroom, what_if: WhatIf, n_trials: int,
               o: TuneOptions, space: SearchSpace) -> list[str]:
    th = ev.thresholds
    out = []
    if winner is not None:
        s = winner.scored
        out.append(
            f"Recommended (trial {winner.trial}): mean lock wait cut by "
            f"{ex.interval(s.criterion('wait_mean_reduction'))}, success "
            f"{ex.interval(s.criterion('success_rate'))}, timeouts "
            f"{ex.interval(s.criterion('timeout_rate'))}, Redis CPU "
            f"{ex.interval(s.criterion('redis_cpu_increase'))} against today's config, on "
            f"{o.check_replications} replications with seeds the search never used; every "
            f"gate passes at the conservative end of its 95% interval.")
    else:
        out.append(f"No config among {n_trials} searched passes every gate at the conservative "
                   f"end of its 95% interval.")
        if shown is not None:
            miss = "; ".join(f"{g.name} {_fmt(g.conservative)} (needs {g.op} {_fmt(g.threshold)})"
                             for g in gates if not g.passed)
            out.append(f"Nearest config (trial {shown.trial}) misses: {miss}.")
    outside = space.contains(ev.baseline.gpu_lock)
    if outside:
        out.append(f"Today's config lies outside the searched space ({'; '.join(outside)}); it "
                   f"was still the first trial.")
    out += ex.headroom_sentences(head.overall, head.by_task_type, th,
                                 head.best_wait_reduction_within_timeout_gate,
                                 head.least_timeout_rate_at_wait_gate)
    out += _what_if_sentences(what_if)
    return out


def _what_if_sentences(w: WhatIf) -> list[str]:
    out = []
    if w.ideal_lock is not None and w.ideal_lock.wait_reduction.mean is not None:
        i = w.ideal_lock
        ci = i.wait_reduction.ci95
        change = -i.wait_reduction.mean
        rng = f" [{ex.pct(-ci[1], True)}, {ex.pct(-ci[0], True)}]" if ci else ""
        out.append(f"A near-ideal lock (polls every {i.gpu_lock['poll_interval']:g} s, no backoff, "
                   f"no give-up, no expiry) changes the mean wait by {ex.pct(change, True)}"
                   f"{rng} with {ex.pct(i.timeout_rate)} timeouts: about what a lock setting can "
                   f"do for this workload's wait without timing tasks out.")
    if w.gpus:
        if w.gpus_needed is not None:
            out.append(f"With {w.gpus_needed} GPUs per node ({w.gpus[-1].gpu_policy} placement) "
                       f"a searched config passes every gate (search seeds).")
        else:
            out.append(f"Even with {w.gpus[-1].gpus_per_node} GPUs per node no tried config "
                       f"passes every gate.")
    p = w.per_type_max_wait
    if p is not None:
        waits = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(p.max_wait_time_by_type.items()))
        missed = [g.name for g in p.gates if not g.passed] + [
            f"timeout_rate[{k}]" for k, v in p.timeout_rate_by_task_type.items()
            if v is not None and v >= ex_th(p)]
        verdict = "passes every gate, each type's timeouts included" if p.passed else \
            "still misses: " + ", ".join(missed)
        by_type = ", ".join(f"{k} {ex.pct(v)}" for k, v in p.timeout_rate_by_task_type.items())
        out.append(f"A per-task-type max_wait_time (a YiVideo code change: {waits}) gives a wait "
                   f"cut of {ex.pct(p.wait_reduction)} with {ex.pct(p.timeout_rate)} timeouts "
                   f"({by_type}) and {verdict} (check seeds, conservative end).")
    return out


def ex_th(p: PerTypeOption) -> float:
    """The timeout gate the per-type option was judged by."""
    return next(g.threshold for g in p.gates if g.name == "timeout_rate")


def _fmt(v: float | None) -> str:
    return "n/a" if v is None else f"{v:.4g}"


__all__ = ["tune", "TuneOptions", "Recommendation", "check_seed_of", "gpu_lock_yaml",
           "GATES", "Scored"]
