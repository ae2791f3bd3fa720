"""A `gpusim tune`-like worker with a toy objective, run as a separate process by the tests.

Every evaluation appends {"event": "start"|"done", "pid", "number", "params"} to
EVENTS_DIR/<pid>.jsonl (flushed and fsynced, so a test can kill this process the moment a trial
is RUNNING and still read what it did); at the end WorkerStats goes to EVENTS_DIR/<pid>.stats.json.
The first trial sleeps --first-sleep seconds, the others --sleep (the test that kills a worker
gives the first one a long sleep).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import optuna

from advisor.storage import open_storage
from advisor.worker import Evaluation, run_worker


def _args() -> argparse.Namespace:
    p = argparse.ArgumentParser()
    p.add_argument("--storage", required=True)
    p.add_argument("--study", required=True)
    p.add_argument("--target", type=int, required=True)
    p.add_argument("--seed", type=int, required=True)  # distinct per process: see the tests
    p.add_argument("--events", type=Path, required=True)
    p.add_argument("--sleep", type=float, default=0.05)
    p.add_argument("--first-sleep", type=float, default=None)
    p.add_argument("--heartbeat", type=float, default=0.5)
    p.add_argument("--grace", type=float, default=2.0)
    p.add_argument("--barrier", action="store_true", help="wait for EVENTS_DIR/go to start")
    return p.parse_args()


def _wait_for_go(events: Path) -> None:
    """Lets a test start several workers' loops together, whatever their import times."""
    (events / f"{os.getpid()}.ready").touch()
    deadline = time.monotonic() + 120
    while not (events / "go").exists():
        if time.monotonic() > deadline:
            raise SystemExit("no go signal")
        time.sleep(0.01)


def _emit(path: Path, **event) -> None:
    with path.open("a") as f:
        f.write(json.dumps(event) + "\n")
        f.flush()
        os.fsync(f.fileno())


def main() -> int:
    args = _args()
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = open_storage(args.storage, args.events / "unused.journal",
                           heartbeat_s=args.heartbeat, grace_s=args.grace)
    sampler = optuna.samplers.TPESampler(seed=args.seed, constant_liar=True)
    study = optuna.create_study(storage=storage.storage, study_name=args.study,
                                directions=["minimize", "minimize"], sampler=sampler,
                                load_if_exists=True)
    log = args.events / f"{os.getpid()}.jsonl"
    evaluated = []

    def evaluate(trial: optuna.Trial) -> Evaluation:
        x, y = trial.suggest_float("x", 0, 1), trial.suggest_float("y", 0, 1)
        params = {"x": x, "y": y}
        _emit(log, event="start", pid=os.getpid(), number=trial.number, params=params)
        first = not evaluated and args.first_sleep is not None
        time.sleep(args.first_sleep if first else args.sleep)
        evaluated.append(trial.number)
        _emit(log, event="done", pid=os.getpid(), number=trial.number, params=params)
        return Evaluation(values=(x, (1 - x) ** 2 + y), constraints={"c": x - 0.9},
                          attrs={"pid": os.getpid()})

    if args.barrier:
        _wait_for_go(args.events)
    stats = run_worker(study, evaluate, target_trials=args.target, storage=storage)
    (args.events / f"{os.getpid()}.stats.json").write_text(json.dumps(dataclasses.asdict(stats)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
