"""What one run leaves behind: an immutable record per task and per key incarnation.

Metrics are pure functions of these (gpusim.metrics); the engines only write them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

import numpy as np

OUTCOMES = ("acquired", "crashed", "timeout")
MECHANISMS = ("immediate", "event", "polling")


@dataclass(frozen=True, slots=True)
class TaskRecord:
    index: int
    task_id: str
    task_type: str
    node: str
    gpu: int | None            # GPU index on `node` whose key it acquired; None on timeout
    arrival_s: float           # reached its Celery queue
    slot_s: float              # got a worker slot and started acquiring
    outcome: str               # acquired | crashed | timeout
    mechanism: str | None      # how it acquired: immediate | event | polling
    acquired_s: float | None   # SET NX reply received
    gpu_end_s: float | None    # GPU work ended (release starts, or the worker died)
    end_s: float               # worker slot freed
    wait_s: float              # lock wait: acquired (or gave up) minus slot_s
    attempts: int              # lock tries (one GET round per try; YiVideo's retry count)
    gets: int                  # GETs issued while acquiring
    sets: int                  # SET NX issued while acquiring (> 1 try lost a race)
    event_wakeups: int         # release messages that woke it
    fell_back: bool            # event-driven wait timed out and it polled
    missed_wakeups: int        # releases published between its first try and its SUBSCRIBE
    release: str | None        # owner | not_owner | None (crashed or timed out)
    deleted_other: bool        # its release removed a key another task had set
    lost_lock_s: float | None  # its key vanished while its GPU work still ran
    lost_reason: str | None    # expired | released_by_other | deleted

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


RECORD_FIELDS = tuple(f.name for f in fields(TaskRecord))


@dataclass(frozen=True, slots=True)
class KeyHold:
    """One incarnation of a lock key: SET NX by `holder` until it ended."""

    key: str
    holder: int                # task index that set it
    set_s: float
    end_s: float
    end_reason: str            # released | expired | emergency_deleted | monitor_deleted | open
    ended_by: int | None       # task index whose command ended it (None: TTL, monitor, open)


@dataclass(frozen=True)
class RunLog:
    """Everything a replication produced, before any metric is computed."""

    records: tuple[TaskRecord, ...]
    holds: tuple[KeyHold, ...]
    commands: dict[str, int]          # client-issued commands by type
    commandstats: dict[str, int]      # as INFO commandstats counts them (EVAL's GET/DEL too)
    deliveries: int                   # PUBLISH fan-out: messages delivered to subscribers
    minute_commands: np.ndarray       # [minute, command] counts, by server time
    minute_deliveries: np.ndarray     # [minute] PUBLISH fan-out
    gpus: tuple[tuple[str, int], ...] # physical GPUs (node, index)
    horizon_s: float                  # last event of the run (time 0 = first arrival)
