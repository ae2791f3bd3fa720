"""The Optuna study: a seeded multi-objective TPE search with constraints, shared by any
number of worker processes through one storage.

- Objectives (both minimised): mean lock wait, and Redis CPU (the load the polling puts on it).
- Constraints through `trial.set_constraint` (Optuna 5; `constraints_func` is deprecated): every
  gate's miss, feasible when <= 0 (advisor.evaluate.Scored.constraints).
- The sampler is seeded; with several workers each gets its own seed (seed + worker index) and
  the constant liar, so workers that ask at the same time are steered apart.
- Today's config and the spec's candidate are enqueued as the first trials.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import sys
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna

from gpusim import GpuLockConfig

from advisor.evaluate import Evaluator
from advisor.space import SearchSpace
from advisor.storage import StudyStorage, open_storage
from advisor.worker import Evaluation, run_worker

DIRECTIONS = ("minimize", "minimize")
OBJECTIVES = ("wait_mean_s", "redis_cpu_utilization")
# The spec's candidate (GPU_LOCK_CONFIG_001), which is also YiVideo's built-in default.
SPEC_CANDIDATE = GpuLockConfig(poll_interval=0.5, max_wait_time=300, lock_timeout=600,
                               exponential_backoff=True, max_poll_interval=5)


def sampler(seed: int) -> optuna.samplers.BaseSampler:
    # multivariate TPE models the settings jointly (poll interval and backoff cap interact);
    # the constant liar treats running trials as bad so parallel workers do not pile up.
    return optuna.samplers.TPESampler(seed=seed % 2**32, multivariate=True, constant_liar=True,
                                      n_startup_trials=10)


def sampler_name() -> str:
    return "TPESampler(multivariate=True, constant_liar=True, n_startup_trials=10)"


@contextlib.contextmanager
def quiet_fixed_params():
    """Today's config may lie outside the space; Optuna warns on each of its settings when the
    enqueued trial runs. rec.json says so once, in its explanation."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Fixed parameter .* is out of range")
        yield


def worker_seed(seed: int, worker: int, trials_so_far: int) -> int:
    """The sampler seed of one worker: the user's seed for the first worker of a new study (so
    one worker with one seed gives the same study), mixed with the worker's index and the
    number of trials already in the study otherwise, so a resumed run or a second process
    with the same --seed does not replay the first run's random start-up trials."""
    if worker == 0 and trials_so_far == 0:
        return seed
    x = (seed ^ (worker * 0x9E3779B97F4A7C15) ^ (trials_so_far * 0xBF58476D1CE4E5B9)) % 2**64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) % 2**64  # a SplitMix64 finaliser round
    return (x ^ (x >> 27)) % 2**64


def open_study(storage: StudyStorage, name: str, seed: int, worker: int = 0) -> optuna.Study:
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.create_study(storage=storage.storage, study_name=name, load_if_exists=True,
                                directions=list(DIRECTIONS))
    study.sampler = sampler(worker_seed(seed, worker, len(study.get_trials(deepcopy=False))))
    return study


def params_of(cfg: GpuLockConfig) -> dict[str, Any]:
    return cfg.model_dump()


def enqueue_first(study: optuna.Study, baseline: GpuLockConfig) -> None:
    """Today's config and the spec's candidate first (once, however many workers start)."""
    for cfg in (baseline, SPEC_CANDIDATE):
        study.enqueue_trial(params_of(cfg), skip_if_exists=True)


@dataclass(frozen=True)
class SearchJob:
    """What a worker needs: everything is picklable, so forked workers get it for free."""
    evaluator: Evaluator
    space: SearchSpace
    storage_url: str | None      # as given (None: the journal file below)
    journal: Path
    study_name: str
    seed: int
    simulation_seed: int
    replications: int
    trials: int


def objective(job: SearchJob) -> Callable[[optuna.Trial], Evaluation]:
    def evaluate(trial: optuna.Trial) -> Evaluation:
        cfg = job.space.suggest(trial)
        scored = job.evaluator.evaluate(cfg, seed=job.simulation_seed,
                                        replications=job.replications)
        return Evaluation(values=(scored.wait_mean_s, scored.redis_cpu),
                          constraints=scored.constraints(), attrs=scored.summary())
    return evaluate


def connect(job: SearchJob) -> StudyStorage:
    return open_storage(job.storage_url, job.journal)


def run_search(job: SearchJob, storage: StudyStorage, jobs: int = 1,
               on_done: Callable[[optuna.trial.FrozenTrial], None] | None = None) -> None:
    """Run the study to its target here: this process and `jobs - 1` forked workers (each
    opens its own connection to the storage: connections do not survive a fork)."""
    study = open_study(storage, job.study_name, job.seed)
    enqueue_first(study, job.evaluator.baseline.gpu_lock)
    job.evaluator.baseline_result(job.simulation_seed, job.replications)  # once, before forking
    children = []
    if jobs > 1:
        ctx = mp.get_context("fork")
        for k in range(1, jobs):
            p = ctx.Process(target=_child, args=(job, k), daemon=True)
            p.start()
            children.append(p)
    try:
        with quiet_fixed_params():
            run_worker(study, objective(job), target_trials=job.trials, storage=storage,
                       on_done=on_done)
    finally:
        for p in children:
            p.join()
    bad = [p.exitcode for p in children if p.exitcode != 0]
    if bad:
        raise RuntimeError(f"{len(bad)} worker process(es) failed (exit codes {bad}); "
                           f"the study keeps their finished trials: run the command again")


def _child(job: SearchJob, k: int) -> None:
    try:
        storage = connect(job)
        study = open_study(storage, job.study_name, job.seed, worker=k)
        with quiet_fixed_params():
            run_worker(study, objective(job), target_trials=job.trials, storage=storage)
    except KeyboardInterrupt:
        os._exit(130)
    except BaseException as e:  # noqa: BLE001 - a child reports one line and its exit code
        try:
            sys.stderr.write(f"worker {k}: {type(e).__name__}: {e}\n")
        finally:
            os._exit(1)
    os._exit(0)
