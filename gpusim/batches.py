"""Column-level summaries of a run's task records for tools built on gpusim (the advisor):
per-batch totals and per-type wait samples, without building a Python object per task.

Per-batch task totals: the trace cut into consecutive batches of tasks (by task index, i.e.
arrival order), for intervals that carry the workload's own variability.

Replications of one trace differ only in jitter and message delivery; with backoff off and
polling, every replication is the same run and their interval has zero width. Batches of
consecutive tasks are roughly independent samples of the workload (the batch-means method), so
an interval over batches says how much a figure depends on which hours the trace happened to
hold.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from gpusim.records import OUTCOMES, Outcome, TaskRecord, TaskTable


def task_batches(records: Sequence[TaskRecord] | TaskTable, batches: int) -> dict[str, np.ndarray]:
    """Totals per batch of consecutive tasks: tasks, acquired, timeouts and summed lock wait.

    Batch b holds the tasks with index * batches // n == b (sizes differ by at most one)."""
    t = TaskTable.from_records(records)
    n = len(t)
    if batches < 1 or batches > max(n, 1):
        raise ValueError(f"batches must be from 1 to the number of tasks ({n}), got {batches}")
    order = np.asarray(t.index, dtype=np.int64)
    b = order * batches // max(n, 1)
    outcome = np.asarray(t.outcome)

    def total(weights: np.ndarray) -> np.ndarray:
        return np.bincount(b, weights=weights, minlength=batches)

    return {
        "tasks": total(np.ones(n)),
        "acquired": total((outcome == OUTCOMES.index(Outcome.ACQUIRED)).astype(float)),
        "timeouts": total((outcome == OUTCOMES.index(Outcome.TIMEOUT)).astype(float)),
        "wait_s": total(np.asarray(t.wait_s, dtype=float)),
    }


def waits_by_type(records: Sequence[TaskRecord] | TaskTable
                  ) -> dict[str, tuple[np.ndarray, int, int]]:
    """Per task type: (lock waits of the tasks that acquired, tasks, timeouts). A timed-out
    task never acquired, so its wait is not among the waits: it is censored, and counted."""
    t = TaskTable.from_records(records)
    outcome = np.asarray(t.outcome)
    timeout = outcome == OUTCOMES.index(Outcome.TIMEOUT)
    out = {}
    for code, name in enumerate(t.type_names):
        mine = np.asarray(t.task_type) == code
        if mine.any():
            out[name] = (np.asarray(t.wait_s)[mine & ~timeout], int(mine.sum()),
                         int((mine & timeout).sum()))
    return out
