"""Per-task outcomes of one side of a validation, aligned with the trace, one row per run.

Both sides of `gpusim validate` reduce to the same table: for every run (a real replay, a
simulated replication, or the one observed record of a trace) and every trace task, its lock
wait in trace seconds, whether it acquired or gave up, and how many tries, GETs and SETs its
acquire loop made (NaN where a side does not know). The comparison then totals these per
regeneration cycle (`gpusim.real.cycles`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np

__all__ = ["TaskOutcomes", "FIELDS"]

FIELDS = ("wait_s", "acquired", "timeout", "attempts", "gets", "sets")


@dataclass(frozen=True, eq=False)
class TaskOutcomes:
    """(runs x tasks) float arrays; NaN = not known for that task."""

    wait_s: np.ndarray       # lock wait, trace seconds
    acquired: np.ndarray     # 1 acquired (and did not crash), else 0
    timeout: np.ndarray      # 1 gave up, else 0
    attempts: np.ndarray     # tries of the acquire loop
    gets: np.ndarray
    sets: np.ndarray

    @property
    def runs(self) -> int:
        return int(self.wait_s.shape[0])

    def field(self, name: str) -> np.ndarray:
        return getattr(self, name)

    def first(self, k: int) -> "TaskOutcomes":
        return TaskOutcomes(*(self.field(f)[:k] for f in FIELDS))

    @classmethod
    def from_records(cls, runs: Sequence[Sequence[Any]], n_tasks: int,
                     time_scale: float = 1.0) -> "TaskOutcomes":
        """From TaskRecord lists (real runs or simulated replications); ``time_scale`` turns
        replay seconds back into trace seconds. A task missing from a run stays NaN."""
        cols = {f: np.full((len(runs), n_tasks), np.nan) for f in FIELDS}
        for r, records in enumerate(runs):
            for rec in records:
                i = rec.index
                outcome = str(getattr(rec.outcome, "value", rec.outcome))
                cols["wait_s"][r, i] = rec.wait_s * time_scale
                cols["acquired"][r, i] = outcome == "acquired"
                cols["timeout"][r, i] = outcome == "timeout"
                cols["attempts"][r, i] = rec.attempts
                cols["gets"][r, i] = rec.gets
                cols["sets"][r, i] = rec.sets
        return cls(**cols)

    @classmethod
    def from_observed(cls, observed: Any) -> "TaskOutcomes":
        """The observed outcomes of a trace (`gpusim.traces.observed.Observed`) as one run.
        A trace records no GET or SET counts; attempts only where a row gives them."""
        from gpusim.traces.observed import ACQUIRED, NOT_GIVEN, TIMEOUT

        outcome = np.asarray(observed.outcome)
        known = outcome != NOT_GIVEN
        attempts = np.asarray(observed.attempts, dtype=float)
        nan = np.full(len(outcome), np.nan)
        return cls(
            wait_s=np.asarray(observed.wait_s, dtype=float)[None, :],
            acquired=np.where(known, outcome == ACQUIRED, np.nan)[None, :],
            timeout=np.where(known, outcome == TIMEOUT, np.nan)[None, :],
            attempts=np.where(attempts >= 0, attempts, np.nan)[None, :],
            gets=nan[None, :], sets=nan[None, :].copy())
