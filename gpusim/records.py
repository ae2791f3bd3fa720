"""What one run leaves behind: an immutable record per task and per key incarnation.

Metrics are pure functions of these (gpusim.metrics); the engines only write them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from enum import StrEnum
from typing import Any, Iterator, Sequence

import numpy as np


# The categories a record holds. They are strings (records and JSON read as plain text) and their
# order is the integer code the columnar tables and the compiled engine use.
class Outcome(StrEnum):
    ACQUIRED = "acquired"    # got the lock, ran, released
    CRASHED = "crashed"      # got the lock, the worker died while holding it
    TIMEOUT = "timeout"      # gave up after max_wait_time


class Mechanism(StrEnum):
    IMMEDIATE = "immediate"  # the event-driven path's first try
    EVENT = "event"          # woken by a release message
    POLLING = "polling"      # a poll (polling path, or the event path's fallback)


class Release(StrEnum):
    OWNER = "owner"          # compare-and-delete found its own value: DEL, PUBLISH
    NOT_OWNER = "not_owner"  # the value was gone or another's: GET, then the emergency DEL


class LostReason(StrEnum):
    EXPIRED = "expired"                        # TTL ran out under the running task
    RELEASED_BY_OTHER = "released_by_other"    # a same-type task's release deleted it
    DELETED = "deleted"                        # an emergency or monitor DEL


class HoldEnd(StrEnum):
    RELEASED = "released"
    EXPIRED = "expired"
    EMERGENCY_DELETED = "emergency_deleted"
    MONITOR_DELETED = "monitor_deleted"
    OPEN = "open"                              # still set when the run ended


OUTCOMES = tuple(Outcome)
MECHANISMS = tuple(Mechanism)
RELEASES = tuple(Release)
LOST_REASONS = tuple(LostReason)
HOLD_REASONS = tuple(HoldEnd)


@dataclass(frozen=True, slots=True)
class TaskRecord:
    index: int
    task_id: str
    task_type: str
    node: str
    gpu: int | None            # GPU index on `node` whose key it acquired; None on timeout
    arrival_s: float           # reached its Celery queue
    slot_s: float              # got a worker slot and started acquiring
    outcome: Outcome           # acquired | crashed | timeout
    mechanism: Mechanism | None  # how it acquired: immediate | event | polling
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
    release: Release | None    # owner | not_owner | None (crashed or timed out)
    deleted_other: bool        # its release removed a key another task had set
    lost_lock_s: float | None  # its key vanished while its GPU work still ran
    lost_reason: LostReason | None  # expired | released_by_other | deleted
    # The GPU index on `node` whose key it polled while acquiring (also on timeout); None under
    # gpu_policy probe_all, which polls every key of its node. Records made outside the engines
    # (the real-Redis replay) leave it None.
    wait_gpu: int | None = None
    # Its lock wait [slot_s, slot_s + wait_s] split in two (gpusim.headroom, after the run):
    # held_wait_s while its key was held by another task (probe_all: while every key of its node
    # was held), free_wait_s the rest, while the key was free and it had not yet got it (polling
    # notice delay, lost races, lost wake-ups, its own SET round trip). held + free = wait.
    # None until computed (gpusim.engines.replication.run_replication fills them).
    held_wait_s: float | None = None
    free_wait_s: float | None = None
    # Which gpu_lock config it read when it started acquiring: 0 its node's initial one, k the
    # k-th config change in time order (gpusim.schedule; result inputs "config_changes").
    config_index: int = 0

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
    end_reason: HoldEnd        # released | expired | emergency_deleted | monitor_deleted | open
    ended_by: int | None       # task index whose command ended it (None: TTL, monitor, open)


@dataclass(frozen=True)
class RunLog:
    """Everything a replication produced, before any metric is computed."""

    records: Sequence[TaskRecord]     # a tuple, or a TaskTable (columns) from the compiled engine
    holds: Sequence[KeyHold]          # a tuple, or a HoldTable
    commands: dict[str, int]          # client-issued commands by type
    commandstats: dict[str, int]      # as INFO commandstats counts them (EVAL's GET/DEL too)
    deliveries: int                   # PUBLISH fan-out: messages delivered to subscribers
    minute_commands: np.ndarray       # [minute, command] counts, by server time
    minute_deliveries: np.ndarray     # [minute] PUBLISH fan-out
    gpus: tuple[tuple[str, int], ...] # physical GPUs (node, index)
    horizon_s: float                  # last event of the run (time 0 = first arrival)


# -- columnar forms ----------------------------------------------------------------------------
# The compiled engine writes columns, and metrics read columns: a week of a fleet is ~10^5-10^6
# tasks, and one Python object per task costs more than simulating it. The tables still behave
# as sequences of TaskRecord / KeyHold (built on access), so every consumer of records works.


def _code(value: str | None, names: tuple[str, ...]) -> int:
    return -1 if value is None else names.index(value)


class TaskTable:
    """Per-task records as columns (index order). None is NaN for times and -1 for codes."""

    INT_COLS = ("index", "node", "gpu", "outcome", "mechanism", "attempts", "gets", "sets",
                "event_wakeups", "missed_wakeups", "release", "lost_reason", "task_type",
                "wait_gpu", "config_index")
    FLOAT_COLS = ("arrival_s", "slot_s", "acquired_s", "gpu_end_s", "end_s", "wait_s",
                  "lost_lock_s", "held_wait_s", "free_wait_s")
    BOOL_COLS = ("fell_back", "deleted_other")

    def __init__(self, cols: dict[str, np.ndarray], task_ids: Sequence[str],
                 type_names: Sequence[str], node_names: Sequence[str]):
        self.cols = cols
        self.task_ids = task_ids
        self.type_names = tuple(type_names)
        self.node_names = tuple(node_names)
        self._records: tuple[TaskRecord, ...] | None = None

    def __getattr__(self, name: str) -> np.ndarray:
        try:
            return self.__dict__["cols"][name]
        except KeyError:
            raise AttributeError(name) from None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_records": None}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)

    def __len__(self) -> int:
        return len(self.cols["index"])

    def _record(self, i: int) -> TaskRecord:
        c = self.cols

        def opt_f(name: str) -> float | None:
            x = float(c[name][i])
            return None if x != x else x

        def opt_s(name: str, names: tuple[str, ...]) -> str | None:
            k = int(c[name][i])
            return None if k < 0 else names[k]

        gpu = int(c["gpu"][i])
        wait_gpu = int(c["wait_gpu"][i])
        return TaskRecord(
            index=int(c["index"][i]), task_id=self.task_ids[i],
            task_type=self.type_names[int(c["task_type"][i])],
            node=self.node_names[int(c["node"][i])], gpu=None if gpu < 0 else gpu,
            arrival_s=float(c["arrival_s"][i]), slot_s=float(c["slot_s"][i]),
            outcome=OUTCOMES[int(c["outcome"][i])],
            mechanism=opt_s("mechanism", MECHANISMS), acquired_s=opt_f("acquired_s"),
            gpu_end_s=opt_f("gpu_end_s"), end_s=float(c["end_s"][i]),
            wait_s=float(c["wait_s"][i]), attempts=int(c["attempts"][i]),
            gets=int(c["gets"][i]), sets=int(c["sets"][i]),
            event_wakeups=int(c["event_wakeups"][i]), fell_back=bool(c["fell_back"][i]),
            missed_wakeups=int(c["missed_wakeups"][i]), release=opt_s("release", RELEASES),
            deleted_other=bool(c["deleted_other"][i]), lost_lock_s=opt_f("lost_lock_s"),
            lost_reason=opt_s("lost_reason", LOST_REASONS),
            wait_gpu=None if wait_gpu < 0 else wait_gpu, held_wait_s=opt_f("held_wait_s"),
            free_wait_s=opt_f("free_wait_s"), config_index=int(c["config_index"][i]))

    def records(self) -> tuple[TaskRecord, ...]:
        if self._records is None:
            self._records = tuple(self._record(i) for i in range(len(self)))
        return self._records

    def __iter__(self) -> Iterator[TaskRecord]:
        return iter(self.records())

    def __getitem__(self, i: int) -> TaskRecord:
        return self.records()[i]

    def __eq__(self, other: object) -> bool:
        if isinstance(other, (TaskTable, tuple, list)):
            return tuple(self) == tuple(other)
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]

    def with_columns(self, **columns: np.ndarray) -> "TaskTable":
        """A new table with these columns replaced (records are rebuilt on access)."""
        unknown = sorted(set(columns) - set(self.cols))
        if unknown:
            raise KeyError(f"no such column(s): {unknown}")
        return TaskTable({**self.cols, **columns}, self.task_ids, self.type_names,
                         self.node_names)

    def subset(self, mask: np.ndarray, columns: Sequence[str] | None = None) -> "TaskTable":
        """The rows where `mask` is true; only `columns` (and "index") when given."""
        keep = self.cols if columns is None else {"index", *columns}
        return TaskTable({k: v[mask] for k, v in self.cols.items() if k in keep},
                         _Picked(self.task_ids, np.flatnonzero(mask)), self.type_names,
                         self.node_names)

    @classmethod
    def from_records(cls, records: Sequence[TaskRecord]) -> "TaskTable":
        if isinstance(records, TaskTable):
            return records
        types = tuple(sorted({r.task_type for r in records}))
        nodes = tuple(sorted({r.node for r in records}))
        t_code = {t: i for i, t in enumerate(types)}
        n_code = {n: i for i, n in enumerate(nodes)}
        nan = float("nan")
        cols: dict[str, list] = {k: [] for k in cls.INT_COLS + cls.FLOAT_COLS + cls.BOOL_COLS}
        for r in records:
            cols["index"].append(r.index)
            cols["node"].append(n_code[r.node])
            cols["gpu"].append(-1 if r.gpu is None else r.gpu)
            cols["wait_gpu"].append(-1 if r.wait_gpu is None else r.wait_gpu)
            cols["outcome"].append(OUTCOMES.index(r.outcome))
            cols["mechanism"].append(_code(r.mechanism, MECHANISMS))
            cols["release"].append(_code(r.release, RELEASES))
            cols["lost_reason"].append(_code(r.lost_reason, LOST_REASONS))
            cols["task_type"].append(t_code[r.task_type])
            for k in ("attempts", "gets", "sets", "event_wakeups", "missed_wakeups",
                      "config_index", "fell_back", "deleted_other", "arrival_s", "slot_s",
                      "end_s", "wait_s"):
                cols[k].append(getattr(r, k))
            for k in ("acquired_s", "gpu_end_s", "lost_lock_s", "held_wait_s", "free_wait_s"):
                v = getattr(r, k)
                cols[k].append(nan if v is None else v)
        arrays = {k: np.array(v, dtype=np.int64) for k, v in cols.items() if k in cls.INT_COLS}
        arrays.update({k: np.array(cols[k], dtype=np.float64) for k in cls.FLOAT_COLS})
        arrays.update({k: np.array(cols[k], dtype=bool) for k in cls.BOOL_COLS})
        table = cls(arrays, [r.task_id for r in records], types, nodes)
        table._records = tuple(records)
        return table


class _Picked:
    """Some of a sequence's items, read on demand."""

    def __init__(self, items: Sequence[str], idx: np.ndarray):
        self.items, self.idx = items, idx

    def __len__(self) -> int:
        return len(self.idx)

    def __getitem__(self, i: int) -> str:
        return self.items[int(self.idx[i])]


class HoldTable:
    """Key incarnations as columns (log order); iterates as KeyHold."""

    def __init__(self, key: np.ndarray, holder: np.ndarray, set_s: np.ndarray,
                 end_s: np.ndarray, reason: np.ndarray, ended_by: np.ndarray,
                 key_names: Sequence[str]):
        self.key, self.holder, self.set_s, self.end_s = key, holder, set_s, end_s
        self.reason, self.ended_by, self.key_names = reason, ended_by, tuple(key_names)

    def __len__(self) -> int:
        return len(self.key)

    def __iter__(self) -> Iterator[KeyHold]:
        for i in range(len(self)):
            by = int(self.ended_by[i])
            yield KeyHold(self.key_names[int(self.key[i])], int(self.holder[i]),
                          float(self.set_s[i]), float(self.end_s[i]),
                          HOLD_REASONS[int(self.reason[i])], None if by < 0 else by)

    def count(self, *reasons: str) -> int:
        codes = [HOLD_REASONS.index(r) for r in reasons]
        return int(np.isin(self.reason, codes).sum())


def hold_reason_count(holds: Sequence[KeyHold] | HoldTable, *reasons: str) -> int:
    if isinstance(holds, HoldTable):
        return holds.count(*reasons)
    return sum(h.end_reason in reasons for h in holds)
