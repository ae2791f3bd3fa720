"""Observed outcomes: what actually happened to each task of a recorded trace.

A trace recorded from production (YiVideo's logs, a watched Redis, a real replay) can say, per
task, how long it waited for the lock, whether it got it or gave up, how many tries its acquire
loop made and which config it ran under. The model never reads these: they are what its
predictions are compared with (validation, the canary judge, impact reports).

A task that gave up never held the GPU, so its hold time is unknown: such a row may leave out
``duration_s`` and the trace keeps NaN there. The simulator refuses to replay an unknown hold
(:func:`check_holds_known`); :func:`fill_unknown_holds` fills them explicitly, by a stated rule.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gpusim.errors import InputError

__all__ = ["ACQUIRED", "NOT_GIVEN", "OBSERVED_FIELDS", "OUTCOMES", "TIMEOUT", "Observed",
           "check_holds_known", "fill_unknown_holds", "unknown_holds"]

#: The optional row fields that carry observed outcomes (traces/README.md).
OBSERVED_FIELDS = ("wait_s", "outcome", "attempts", "config_digest")
#: Outcome codes in :attr:`Observed.outcome`; the words are what rows spell.
NOT_GIVEN, ACQUIRED, TIMEOUT = -1, 0, 1
OUTCOMES = ("acquired", "timeout")


@dataclass(frozen=True, eq=False)
class Observed:
    """Observed outcomes as columns aligned with the trace's task order."""

    wait_s: np.ndarray                    # float64, NaN = not given
    outcome: np.ndarray                   # int8: NOT_GIVEN, ACQUIRED or TIMEOUT
    attempts: np.ndarray                  # int64, -1 = not given
    config_digest: tuple[str | None, ...]

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Observed):
            return NotImplemented
        return (np.array_equal(self.wait_s, other.wait_s, equal_nan=True)
                and np.array_equal(self.outcome, other.outcome)
                and np.array_equal(self.attempts, other.attempts)
                and self.config_digest == other.config_digest)

    __hash__ = None  # type: ignore[assignment]  # mutable arrays inside

    @classmethod
    def from_values(cls, wait_s: list[float | None], outcome: list[str | None],
                    attempts: list[int | None], config_digest: list[str | None]
                    ) -> "Observed | None":
        """Columns from per-task values (None = not given); None when nothing was given."""
        if all(v is None for col in (wait_s, outcome, attempts, config_digest) for v in col):
            return None
        code = {None: NOT_GIVEN, "acquired": ACQUIRED, "timeout": TIMEOUT}
        return cls(
            wait_s=np.array([np.nan if w is None else w for w in wait_s], dtype=np.float64),
            outcome=np.array([code[o] for o in outcome], dtype=np.int8),
            attempts=np.array([-1 if a is None else a for a in attempts], dtype=np.int64),
            config_digest=tuple(config_digest))

    def take(self, order: np.ndarray | None) -> "Observed":
        """The same columns in another task order (None: unchanged)."""
        if order is None:
            return self
        return Observed(self.wait_s[order], self.outcome[order], self.attempts[order],
                        tuple(map(self.config_digest.__getitem__, order.tolist())))

    def values(self, i: int) -> tuple[float | None, str | None, int | None, str | None]:
        """Task i's (wait_s, outcome word, attempts, config_digest), None where not given."""
        w = float(self.wait_s[i])
        o = int(self.outcome[i])
        a = int(self.attempts[i])
        return (None if np.isnan(w) else w, None if o == NOT_GIVEN else OUTCOMES[o],
                None if a < 0 else a, self.config_digest[i])

    def __len__(self) -> int:
        return len(self.outcome)

    @property
    def has_outcome(self) -> np.ndarray:
        """Boolean mask of the tasks whose outcome was recorded."""
        return self.outcome != NOT_GIVEN


def unknown_holds(trace) -> np.ndarray:  # noqa: ANN001 - Trace (kept import-free of trace.py)
    """Positions of the tasks whose hold time is unknown (timed out in the record)."""
    return np.flatnonzero(np.isnan(trace.columns.duration_s))


def check_holds_known(trace) -> None:  # noqa: ANN001
    """Refuse to replay a trace with unknown holds, naming the first such task's line."""
    missing = unknown_holds(trace)
    if len(missing):
        i = int(missing[0])
        raise InputError(
            f"task {trace.task_ids[i]!r} timed out in the record, so its GPU hold time is "
            f"unknown ({len(missing)} such tasks); the model needs one to replay it: give it a "
            "duration_s, or fill them with gpusim.traces.observed.fill_unknown_holds "
            "(the median observed hold of the same task type)",
            file=trace.source, line=int(trace.lines[i]), field="duration_s")


def fill_unknown_holds(trace):  # noqa: ANN001, ANN201 - (Trace, int)
    """The trace with each unknown hold set to the median known hold of its task type.

    Returns the new trace and how many holds were filled (0: the same trace). A type with no
    known hold is an error naming the first of its tasks: there is nothing to fill it from.
    """
    missing = unknown_holds(trace)
    if not len(missing):
        return trace, 0
    cols = trace.columns
    durations = cols.duration_s.copy()
    for code in np.unique(cols.task_type[missing]).tolist():
        of_type = cols.task_type == code
        known = durations[of_type & ~np.isnan(cols.duration_s)]
        if not len(known):
            i = int(missing[cols.task_type[missing] == code][0])
            raise InputError(f"no task of type {cols.types[code]!r} has a known hold time to "
                             "fill this timed-out task's from", file=trace.source,
                             line=int(trace.lines[i]), field="duration_s")
        durations[of_type & np.isnan(cols.duration_s)] = float(np.median(known))
    import dataclasses
    # type(trace), not an import of Trace: trace.py imports this module
    filled = type(trace)(columns=dataclasses.replace(cols, duration_s=durations),
                   task_ids=trace.task_ids, lines=trace.lines, source=trace.source,
                   start_epoch=trace.start_epoch, observed=trace.observed)
    return filled, len(missing)
