"""The loop every `gpusim tune` process runs against one shared study.

Stop rule (checked before every trial, after stale trials are recovered), with C = COMPLETE
trials, R = RUNNING trials with a fresh heartbeat (other workers'), W = WAITING trials:
  1. W > 0               -> ask(): it pops a WAITING trial (enqueued ones and retries are owed);
  2. C + R < target      -> ask(): it samples a new trial;
  3. C >= target         -> return: the study is done;
  4. otherwise           -> wait for the R in-flight trials (they may fail or go stale).
So a new trial is sampled only while C + R + W < target, and every worker returns only when
C >= target and nothing is WAITING. Overshoot comes only from decisions taken at the same moment
(two workers both see C + R = target - 1, or one finds the WAITING trial it counted on popped
by another and samples instead): at most one extra trial per other worker, so the study ends
with target..target + workers - 1 COMPLETE trials (more only if more than target were enqueued).
A worker in step 4 polls every min(1 s, heartbeat_s); it is what finishes a dead worker's trial.

Heartbeat and retry, the same on every storage kind: while a trial runs, a daemon thread writes
the wall time into its system attr HEARTBEAT_ATTR every heartbeat_s. A RUNNING trial whose last
heartbeat (else its start) is more than grace_s old is stale: any worker may tell it FAIL, and
only the worker whose FAIL the storage accepted (the others get "already finished") enqueues its
params again as a WAITING trial with user attrs RETRY_OF (its number) and RETRY_ROOT. Clocks of
the machines sharing a study must agree to well within grace_s - heartbeat_s.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.exceptions import UpdateFinishedTrialError
from optuna.trial import FrozenTrial, TrialState

from advisor.storage import StudyStorage

__all__ = ["Evaluation", "WorkerStats", "run_worker", "recover_stale_trials", "is_stale",
           "HEARTBEAT_ATTR", "RETRY_OF", "RETRY_ROOT", "RETRY_REASON", "FAIL_REASON",
           "ERROR_ATTR"]

HEARTBEAT_ATTR = "gpusim:heartbeat"  # system attr: time.time() of the last heartbeat
RETRY_OF = "retry_of"  # user attr of a retry: number of the FAILed trial it replaces
RETRY_ROOT = "retry_root"  # user attr of a retry: number of the first trial of the chain
RETRY_REASON = "retry_reason"  # "stale" (worker died) | "interrupted" (Ctrl-C)
STALE_RETRIES = "stale_retries"  # user attr: how often this params set went stale
FAIL_REASON = "fail_reason"  # user attr of a FAILed trial: "stale" | "interrupted" | "error"
ERROR_ATTR = "error"  # user attr of a trial whose evaluation raised: "Type: message"
MAX_STALE_RETRIES = 3  # a params set that kills its worker every time is not retried forever
_BOOKKEEPING = {RETRY_OF, RETRY_ROOT, RETRY_REASON, STALE_RETRIES, FAIL_REASON, ERROR_ATTR}

_log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Evaluation:
    """What evaluate() returns for one trial."""

    values: tuple[float, ...]  # one per study direction
    constraints: dict[str, float] = field(default_factory=dict)  # <= 0 is feasible
    attrs: dict[str, Any] = field(default_factory=dict)  # JSON-able user attrs


@dataclass
class WorkerStats:
    """What this worker did; pass one to run_worker to read it after an exception too."""

    completed: int = 0
    failed: int = 0  # trials whose evaluation raised, told FAIL here
    retried_stale: int = 0  # other workers' stale trials this worker FAILed and re-enqueued
    lost: int = 0  # trials run here that another worker had declared stale meanwhile
    trial_numbers: list[int] = field(default_factory=list)  # COMPLETE trials told here


def _trial_id(trial: optuna.Trial | FrozenTrial) -> int:
    return trial._trial_id  # Optuna has no public accessor; its own callbacks use this one


def _last_sign_of_life(trial: FrozenTrial) -> float | None:
    beat = trial.system_attrs.get(HEARTBEAT_ATTR)
    if isinstance(beat, (int, float)):
        return float(beat)
    # no heartbeat yet: fall back on the start (naive local time in every Optuna storage)
    return trial.datetime_start.timestamp() if trial.datetime_start is not None else None


def is_stale(trial: FrozenTrial, grace_s: float, now: float | None = None) -> bool:
    """Whether a RUNNING trial has shown no sign of life for more than grace_s seconds."""
    last = _last_sign_of_life(trial)
    now = time.time() if now is None else now
    return trial.state == TrialState.RUNNING and last is not None and now - last > grace_s


class _Heartbeat:
    """Writes time.time() into the trial's HEARTBEAT_ATTR now and then every interval_s."""

    def __init__(self, storage: optuna.storages.BaseStorage, trial_id: int, interval_s: float):
        self._storage, self._trial_id, self._interval_s = storage, trial_id, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{trial_id}",
                                        daemon=True)  # a dead worker must not be kept alive

    def _beat(self) -> bool:
        try:
            self._storage.set_trial_system_attr(self._trial_id, HEARTBEAT_ATTR, time.time())
        except UpdateFinishedTrialError:
            return False  # finished, by us or by a worker that thought us dead
        except Exception as err:  # a storage hiccup: the next beat may get through
            _log.warning("heartbeat of trial id %s not recorded: %s", self._trial_id, err)
        return True

    def _run(self) -> None:
        while not self._stop.wait(self._interval_s) and self._beat():
            pass

    def __enter__(self) -> "_Heartbeat":
        self._beat()  # before evaluate starts, so the start time is not the only sign of life
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self._interval_s + 30)


def _fail_running(study: optuna.Study, trial: FrozenTrial, reason: str) -> FrozenTrial | None:
    """Tell a RUNNING trial FAIL; the FrozenTrial if this call did it, None if it was finished.

    The storage refuses to finish a finished trial, so among workers racing to fail the same
    trial exactly one gets a FrozenTrial back: that one, and only that one, may re-enqueue it.
    """
    storage = study._storage  # the study's own (cached) storage; Optuna has no public handle
    try:
        storage.set_trial_user_attr(_trial_id(trial), FAIL_REASON, reason)
        return study.tell(trial.number, state=TrialState.FAIL)
    except UpdateFinishedTrialError:
        return None
    except ValueError:  # tell() refuses a trial it reads as no longer RUNNING
        if storage.get_trial(_trial_id(trial)).state.is_finished():
            return None
        raise


def _enqueue_retry(study: optuna.Study, failed: FrozenTrial, reason: str) -> bool:
    """Add a WAITING trial with failed's params (and any enqueued fixed params) and attrs."""
    stale = int(failed.user_attrs.get(STALE_RETRIES, 0)) + (reason == "stale")
    if stale > MAX_STALE_RETRIES:
        _log.warning("trial %d went stale %d times; its params are not retried again",
                     failed.number, stale)
        return False
    user_attrs = {k: v for k, v in failed.user_attrs.items() if k not in _BOOKKEEPING}
    user_attrs.update({RETRY_OF: failed.number, RETRY_REASON: reason, STALE_RETRIES: stale,
                       RETRY_ROOT: failed.user_attrs.get(RETRY_ROOT, failed.number)})
    fixed = failed.system_attrs.get("fixed_params")  # study.enqueue_trial's params, not all
    system_attrs = {"fixed_params": fixed} if fixed else {}  # suggested before the failure
    study.add_trial(optuna.trial.create_trial(
        state=TrialState.WAITING, params=failed.params, distributions=failed.distributions,
        user_attrs=user_attrs, system_attrs=system_attrs))
    return True


def recover_stale_trials(study: optuna.Study, *, grace_s: float) -> list[int]:
    """FAIL every stale RUNNING trial and re-enqueue its params once; the numbers retried here."""
    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    return _recover(study, running, grace_s)


def _recover(study: optuna.Study, seen: list[FrozenTrial], grace_s: float) -> list[int]:
    """Recover the stale trials among `seen`, a possibly outdated read of the study."""
    retried = []
    now = time.time()
    for trial in seen:
        if not is_stale(trial, grace_s, now):
            continue
        failed = _fail_running(study, trial, "stale")
        if failed is not None:
            _log.warning("trial %d: no heartbeat for over %.0f s, its worker is presumed dead; "
                         "FAILed and its params queued again", trial.number, grace_s)
            if _enqueue_retry(study, failed, "stale"):
                retried.append(trial.number)
    return retried


def _next_step(study: optuna.Study, target_trials: int, grace_s: float) -> str:
    """"ask", "stop" or "wait", by the stop rule in the module docstring."""
    now = time.time()
    complete = running = waiting = 0
    for trial in study.get_trials(deepcopy=False):
        if trial.state == TrialState.COMPLETE:
            complete += 1
        elif trial.state == TrialState.WAITING:
            waiting += 1
        elif trial.state == TrialState.RUNNING and not is_stale(trial, grace_s, now):
            running += 1
    if waiting > 0 or complete + running < target_trials:
        return "ask"
    return "stop" if complete >= target_trials else "wait"


def _check(study: optuna.Study, result: object) -> Evaluation:
    """The evaluation with float values, or an error that fails the trial (never the worker)."""
    if not isinstance(result, Evaluation):
        raise TypeError(f"evaluate returned {type(result).__name__}, expected Evaluation")
    values = tuple(float(v) for v in result.values)
    if len(values) != len(study.directions) or not all(math.isfinite(v) for v in values):
        raise ValueError(f"evaluate returned values {values!r}: need "
                         f"{len(study.directions)} finite numbers")
    bad = {k: v for k, v in result.constraints.items() if not math.isfinite(float(v))}
    if bad:
        raise ValueError(f"evaluate returned constraints that are not finite: {bad!r}")
    json.dumps(result.attrs)  # a TypeError here fails the trial, not the storage write later
    return dataclasses.replace(result, values=values)


def _record(study: optuna.Study, trial: optuna.Trial, result: Evaluation) -> FrozenTrial:
    for name, value in result.constraints.items():
        trial.set_constraint(name, value)  # before tell: samplers read them at tell time
    for key, value in result.attrs.items():
        trial.set_user_attr(key, value)
    return study.tell(trial, list(result.values))


def _fail_with_error(study: optuna.Study, trial: optuna.Trial, err: Exception) -> FrozenTrial:
    text = f"{type(err).__name__}: {err}"
    trial.set_user_attr(ERROR_ATTR, text[:1000])
    trial.set_user_attr(FAIL_REASON, "error")
    return study.tell(trial, state=TrialState.FAIL)


def _on_interrupt(study: optuna.Study, trial: optuna.Trial) -> None:
    """Ctrl-C: FAIL the trial and queue its params, so the same command resumes with them."""
    frozen = trial.storage.get_trial(_trial_id(trial))
    if frozen.state != TrialState.RUNNING:
        return  # already told (the interrupt came after tell) or taken over as stale
    failed = _fail_running(study, frozen, "interrupted")
    if failed is not None:
        _enqueue_retry(study, failed, "interrupted")


def _taken_over(trial: optuna.Trial) -> bool:
    """Whether another worker finished our trial (it thought us dead) while we evaluated."""
    return trial.storage.get_trial(_trial_id(trial)).state.is_finished()


def _run_trial(study: optuna.Study, evaluate: Callable[[optuna.Trial], Evaluation],
               storage: StudyStorage) -> tuple[FrozenTrial | None, Exception | None]:
    """Ask, evaluate with a heartbeat, tell. (told trial or None if lost, evaluate's error)."""
    trial = study.ask()
    try:
        with _Heartbeat(trial.storage, _trial_id(trial), storage.heartbeat_s):
            try:
                result = _check(study, evaluate(trial))
            except Exception as err:  # bad luck or a bug: the caller counts failures in a row
                return _fail_with_error(study, trial, err), err
            return _record(study, trial, result), None
    except KeyboardInterrupt:
        try:
            _on_interrupt(study, trial)
        except Exception as err:  # noqa: BLE001 - Ctrl-C may have torn a journal write
            # (seen once in CI: its lock file gone mid-rename); the trial stays RUNNING, goes
            # stale without heartbeats and is retried by the next run, so Ctrl-C stays Ctrl-C
            _log.info("interrupted trial %d not recorded (%s): the next run retries it",
                      trial.number, err)
        raise
    except (UpdateFinishedTrialError, ValueError):
        if _taken_over(trial):
            _log.warning("trial %d was declared stale by another worker while it ran here; "
                         "its result is dropped and its retry will run it", trial.number)
            return None, None
        raise


def run_worker(study: optuna.Study, evaluate: Callable[[optuna.Trial], Evaluation], *,
               target_trials: int, storage: StudyStorage,
               on_done: Callable[[FrozenTrial], None] | None = None,
               max_failures_in_a_row: int = 3, stats: WorkerStats | None = None) -> WorkerStats:
    """Run trials of the shared `study` until it has target_trials COMPLETE ones.

    on_done gets every trial this worker told (COMPLETE or FAIL). After max_failures_in_a_row
    evaluations raise one after another, the last exception is raised: that is a bug or bad
    input, not bad luck. KeyboardInterrupt FAILs the running trial, queues its params again
    (the next run resumes them) and is re-raised.
    """
    stats = stats if stats is not None else WorkerStats()
    in_a_row = 0
    poll_s = min(1.0, storage.heartbeat_s)
    while True:
        stats.retried_stale += len(recover_stale_trials(study, grace_s=storage.grace_s))
        step = _next_step(study, target_trials, storage.grace_s)
        if step == "stop":
            return stats
        if step == "wait":
            time.sleep(poll_s)
            continue
        told, error = _run_trial(study, evaluate, storage)
        if told is None:
            stats.lost += 1
            continue
        if error is None:
            in_a_row = 0
            stats.completed += 1
            stats.trial_numbers.append(told.number)
        else:
            in_a_row += 1
            stats.failed += 1
        if on_done is not None:
            on_done(told)
        if error is not None and in_a_row >= max_failures_in_a_row:
            raise error
