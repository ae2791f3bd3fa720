"""The in-memory trace: tasks as columns, with Task objects built only when someone asks.

Both readers (the columnar fast path in :mod:`gpusim.traces.fast` and the row-by-row reader in
:mod:`gpusim.traces.format`) end in :func:`assemble`, so the two cannot disagree on how a trace
is numbered, shifted and sorted: they only have to agree on the values of the rows.
"""

from __future__ import annotations

import dataclasses
import gc
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from gpusim.errors import InputError, InputErrors
from gpusim.traces.observed import OBSERVED_FIELDS, Observed

#: Column order used by the writers; also the set of allowed row fields.
FIELDS = ("task_id", "task_type", "arrival_s", "timestamp", "duration_s", "node", "gpu", "crashed",
          *OBSERVED_FIELDS)
#: Report at most this many row errors; a million bad rows should not make a million-line message.
MAX_REPORTED_ERRORS = 50

#: Longest trace (last arrival after the first) and longest hold the model takes: 366 days each.
#: The engines size per-minute arrays by the run's horizon, so a time of 1e12 s would ask for
#: millions of megabytes; a year (a leap year included) covers any recorded workload.
MAX_SPAN_S = 366 * 86400.0
MAX_DURATION_S = 366 * 86400.0

_INT64_MAX = 2**63 - 1
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_MICROSECOND = timedelta(microseconds=1)


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 text -> aware datetime; naive means UTC."""
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 timestamp") from None
    # Naive timestamps are UTC (documented); never the local zone of whoever runs the tool.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


def epoch_us(ts: datetime) -> int:
    """Microseconds since 1970-01-01T00:00Z of an aware datetime (exact)."""
    return (ts - _EPOCH) // _ONE_MICROSECOND


@dataclass(frozen=True, slots=True)
class Task:
    index: int          # 0-based position after sorting by (arrival_s, line); tie-break, RNG id
    task_id: str        # from the row, or f"{stem}:{line}" when absent; duplicates are an error
    task_type: str      # non-empty
    arrival_s: float    # seconds from the FIRST arrival of the trace (first task has 0.0)
    duration_s: float | None  # GPU hold time, finite, > 0; None: unknown (timed out in the record)
    node: str | None    # optional node name ("node0", "node1", ... by default in a cluster)
    gpu: int | None     # optional GPU index >= 0
    crashed: bool       # the worker dies while holding the lock
    line: int           # source line, 1-based (CSV header is line 1, first data row line 2)
    # Observed outcomes (gpusim.traces.observed), None where the row does not give them.
    wait_s: float | None = None      # observed lock wait, s
    outcome: str | None = None       # "acquired" | "timeout"
    attempts: int | None = None      # tries of the acquire loop
    config_digest: str | None = None  # the gpu_lock config it ran under (config_digest())


@dataclass(frozen=True)
class TraceColumns:
    arrival_s: np.ndarray      # float64
    duration_s: np.ndarray     # float64
    crashed: np.ndarray        # bool
    gpu: np.ndarray            # int64, -1 = not given
    node: np.ndarray           # int64 code into `nodes`, -1 = not given
    nodes: tuple[str, ...]     # node names the trace names, sorted
    task_type: np.ndarray      # int64 code into `types`
    types: tuple[str, ...]     # sorted

    @classmethod
    def of(cls, trace: "Trace") -> "TraceColumns":
        return trace.columns

    @classmethod
    def of_tasks(cls, tasks: Sequence[Task]) -> "TraceColumns":
        n = len(tasks)
        types = tuple(sorted({t.task_type for t in tasks}))
        type_code = {t: i for i, t in enumerate(types)}
        nodes = tuple(sorted({t.node for t in tasks if t.node is not None}))
        node_code: dict[str | None, int] = {nd: i for i, nd in enumerate(nodes)}
        node_code[None] = -1
        return cls(
            arrival_s=np.fromiter((t.arrival_s for t in tasks), np.float64, n),
            duration_s=np.fromiter((np.nan if t.duration_s is None else t.duration_s
                                    for t in tasks), np.float64, n),
            crashed=np.fromiter((t.crashed for t in tasks), np.bool_, n),
            gpu=np.fromiter((-1 if t.gpu is None else t.gpu for t in tasks), np.int64, n),
            node=np.fromiter((node_code[t.node] for t in tasks), np.int64, n),
            nodes=nodes,
            task_type=np.fromiter((type_code[t.task_type] for t in tasks), np.int64, n),
            types=types)


class Trace:
    """A trace: its tasks sorted by (arrival_s, line), where it came from, and when it started.

    Built either from Task objects (``Trace(tasks, source, start_epoch)``) or, by the readers,
    from columns; each view is derived from the other on first use and then kept. A million
    Task objects cost about a second to build, and the simulation never needs them: it reads
    ``columns``, ``task_ids`` and ``lines``. Immutable, like the frozen dataclass it replaces.
    """

    def __init__(self, tasks: Iterable[Task] | None = None, source: str = "<memory>",
                 start_epoch: float | None = None, *, columns: TraceColumns | None = None,
                 task_ids: Sequence[str] | None = None, lines: np.ndarray | None = None,
                 observed: Observed | None = None):
        set_ = object.__setattr__
        set_(self, "source", source)            # path as given, or "<synth>", "<memory>"
        set_(self, "start_epoch", start_epoch)  # epoch s of the first arrival (ISO timestamps)
        if tasks is not None:
            if columns is not None:
                raise TypeError("give tasks or columns, not both")
            self.__dict__["tasks"] = tuple(tasks)
            if observed is not None:
                raise TypeError("observed outcomes come with the tasks")
        elif columns is None or task_ids is None or lines is None:
            raise TypeError("give tasks, or columns with task_ids and lines")
        else:
            self.__dict__.update(columns=columns, task_ids=list(task_ids), lines=lines,
                                 observed=observed)

    source: str
    start_epoch: float | None

    def __setattr__(self, name: str, value: Any) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot assign to field '{name}'")

    def __delattr__(self, name: str) -> None:
        raise dataclasses.FrozenInstanceError(f"cannot delete field '{name}'")

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Trace):
            return NotImplemented
        return (self.source, self.start_epoch, self.tasks) == \
            (other.source, other.start_epoch, other.tasks)

    def __hash__(self) -> int:
        return hash((self.tasks, self.source, self.start_epoch))

    def __repr__(self) -> str:
        return (f"Trace(source={self.source!r}, tasks={len(self)}, "
                f"start_epoch={self.start_epoch!r})")

    def __len__(self) -> int:
        return len(self.__dict__["tasks"] if "tasks" in self.__dict__ else self.task_ids)

    @cached_property
    def tasks(self) -> tuple[Task, ...]:
        """The tasks as objects, in order (built on first use from the columns: about 4 s for
        a million tasks; `task(i)`, `task_ids` and `columns` need none of them)."""
        was_enabled = gc.isenabled()
        gc.disable()  # a million new objects: no collection passes over them meanwhile
        try:
            return self._build_tasks()
        finally:
            if was_enabled:
                gc.enable()

    def _build_tasks(self) -> tuple[Task, ...]:
        cols = self.columns
        n = len(self)
        types = np.array(cols.types, dtype=object)[cols.task_type].tolist()
        nodes = np.array(cols.nodes + (None,), dtype=object)[cols.node].tolist()
        gpus = np.where(cols.gpu < 0, None, cols.gpu.astype(object)).tolist()
        holds = np.where(np.isnan(cols.duration_s), None,
                         cols.duration_s.astype(object)).tolist()
        tasks = map(Task, range(n), self.task_ids, types, cols.arrival_s.tolist(), holds, nodes,
                    gpus, cols.crashed.tolist(), self.lines.tolist())
        obs = self.observed
        if obs is None:
            return tuple(tasks)
        return tuple(dataclasses.replace(t, **dict(zip(OBSERVED_FIELDS, obs.values(t.index))))
                     for t in tasks)

    @cached_property
    def observed(self) -> Observed | None:
        """What happened to each task in the record (None: the trace gives no outcomes)."""
        ts = self.tasks
        return Observed.from_values([t.wait_s for t in ts], [t.outcome for t in ts],
                                    [t.attempts for t in ts], [t.config_digest for t in ts])

    @cached_property
    def columns(self) -> TraceColumns:
        """The tasks as arrays (built once per trace: the engines and checks read these)."""
        return TraceColumns.of_tasks(self.tasks)

    @cached_property
    def task_ids(self) -> list[str]:
        """Each task's id, in task order."""
        return [t.task_id for t in self.tasks]

    @cached_property
    def lines(self) -> np.ndarray:
        """Each task's source line (int64), in task order."""
        return np.fromiter((t.line for t in self.tasks), np.int64, len(self.tasks))

    @cached_property
    def task_types(self) -> tuple[str, ...]:
        return self.columns.types

    @property
    def horizon_s(self) -> float:
        arrivals = self.columns.arrival_s
        return float(arrivals[-1]) if len(arrivals) else 0.0

    def task(self, i: int) -> Task:
        """Task ``i`` alone, without building the others."""
        if "tasks" in self.__dict__:
            return self.tasks[i]
        cols = self.columns
        gpu = int(cols.gpu[i])
        node = int(cols.node[i])
        hold = float(cols.duration_s[i])
        index = range(len(self))[i]
        seen = self.observed.values(index) if self.observed is not None else ()
        return Task(index, self.task_ids[i], cols.types[cols.task_type[i]],
                    float(cols.arrival_s[i]), None if np.isnan(hold) else hold,
                    cols.nodes[node] if node >= 0 else None, gpu if gpu >= 0 else None,
                    bool(cols.crashed[i]), int(self.lines[i]), *seen)


# ---------------------------------------------------------------------------------------------
# Assembly: rows in file order -> a sorted, shifted, numbered trace


@dataclass
class Coded:
    """Text column as codes into distinct values (any order; None allowed among them)."""
    values: list[str | None]
    codes: np.ndarray               # int64 index into values


@dataclass
class RawColumns:
    """Validated rows in file order, as both readers hand them over.

    Times come either as ``arrival_s`` (seconds, any origin) or as ``epoch_us`` (integer
    microseconds since 1970 of each ISO timestamp, exact); the other is None.
    """
    lines: np.ndarray               # int64, 1-based source lines
    task_id: list[str | None]       # None: not given (the id is then f"{stem}:{line}")
    task_type: list[str] | Coded
    duration_s: np.ndarray          # float64
    node: list[str | None] | Coded  # None: not given
    gpu: list[int | None] | np.ndarray  # or int64 with -1 for "not given"
    crashed: np.ndarray             # bool
    arrival_s: np.ndarray | None = None
    epoch_us: list[int] | None = None
    observed: Observed | None = None  # in file order; None: no row gives outcomes


def assemble(raw: RawColumns, source: str) -> Trace:
    """Number, shift and sort validated rows; duplicate ids and a too long span are errors.

    Times count from the first arrival (the first of equal minima); tasks are ordered by
    (arrival, line). ISO timestamps are differenced as integer microseconds and divided by
    10**6 once, so the seconds are exact to the microsecond and equal to datetime arithmetic.
    """
    lines = np.asarray(raw.lines, dtype=np.int64)
    n = len(lines)
    if n == 0:
        raise InputError("empty trace: no task rows", file=source)
    ids = _ids(raw.task_id, lines, source)
    if len(set(ids)) != n:
        raise_all(_duplicate_errors(ids, lines.tolist(), source))
    arrivals, start_epoch = _arrivals(raw, lines, source)
    order = _order(arrivals, lines)
    types, type_codes = _sorted_codes(raw.task_type)
    nodes, node_codes = _sorted_codes(raw.node)

    def sort(column: np.ndarray) -> np.ndarray:
        return column if order is None else column[order]

    columns = TraceColumns(
        arrival_s=sort(arrivals),
        duration_s=sort(np.asarray(raw.duration_s, dtype=np.float64)),
        crashed=sort(np.asarray(raw.crashed, dtype=np.bool_)),
        gpu=sort(_gpus(raw.gpu, lines, source)),
        node=sort(node_codes), nodes=nodes,
        task_type=sort(type_codes), types=types)
    if order is not None:
        ids = list(map(ids.__getitem__, order.tolist()))
    observed = raw.observed.take(order) if raw.observed is not None else None
    return Trace(columns=columns, task_ids=ids, lines=sort(lines), source=source,
                 start_epoch=start_epoch, observed=observed)


def _order(arrivals: np.ndarray, lines: np.ndarray) -> np.ndarray | None:
    """Positions by (arrival, line); None when the rows are in that order already."""
    lines_ascending = bool(np.all(lines[1:] > lines[:-1]))
    if lines_ascending and bool(np.all(arrivals[1:] >= arrivals[:-1])):
        return None
    if lines_ascending:  # a stable sort keeps equal arrivals in line order
        return np.argsort(arrivals, kind="stable")
    return np.lexsort((lines, arrivals))


def _sorted_codes(column: list[str | None] | Coded) -> tuple[tuple[str, ...], np.ndarray]:
    """Distinct values sorted, and each row's code into them (-1 for None)."""
    if isinstance(column, Coded):
        names = tuple(sorted(v for v in set(column.values) if v is not None))
        code = {v: i for i, v in enumerate(names)}
        lut = np.array([code[v] if v is not None else -1 for v in column.values] + [-1],
                       dtype=np.int64)
        return names, lut[np.asarray(column.codes, dtype=np.int64)]
    names = tuple(sorted(set(column) - {None}))  # type: ignore[type-var]
    code: dict[str | None, int] = {v: i for i, v in enumerate(names)}
    code[None] = -1
    return names, np.fromiter(map(code.__getitem__, column), np.int64, len(column))


def _ids(given: list[str | None], lines: np.ndarray, source: str) -> list[str]:
    if None not in given:
        return given  # type: ignore[return-value]
    stem = file_stem(source)
    return [tid if tid is not None else f"{stem}:{ln}" for tid, ln in zip(given, lines.tolist())]


def _gpus(gpus: list[int | None] | np.ndarray, lines: np.ndarray, source: str) -> np.ndarray:
    if isinstance(gpus, np.ndarray):
        return gpus.astype(np.int64, copy=False)
    values = [-1 if g is None else g for g in gpus]
    try:
        return np.array(values, dtype=np.int64)
    except OverflowError:
        j = next(j for j, g in enumerate(values) if g > _INT64_MAX)
        raise InputError(f"must be at most {_INT64_MAX} (got {values[j]!r})", file=source,
                         line=int(lines[j]), field="gpu") from None


def _arrivals(raw: RawColumns, lines: np.ndarray, source: str) -> tuple[np.ndarray, float | None]:
    """Seconds from the first arrival, in file order, and the epoch of that first arrival."""
    if raw.epoch_us is None:
        assert raw.arrival_s is not None
        arrival = np.asarray(raw.arrival_s, dtype=np.float64)
        return arrival - arrival[int(np.argmin(arrival))], None
    us = raw.epoch_us
    t0 = min(us)
    # datetime's range (years 1 to 9999) fits int64 microseconds with room to spare
    delta = np.array(us, dtype=np.int64) - t0
    if int(delta.max()) > MAX_SPAN_S * 10**6:
        # The error's figures as datetime arithmetic gives them: Python integers, divided once.
        _check_span([(u - t0) / 10**6 for u in us], lines.tolist(), source)
    return delta / 1e6, t0 / 10**6


def _check_span(arrivals: list[float], lines: list[int], source: str) -> None:
    """Timestamps may lie anywhere in time, but the first and last at most MAX_SPAN_S apart."""
    last = max(range(len(arrivals)), key=arrivals.__getitem__)
    if arrivals[last] > MAX_SPAN_S:
        raise InputError(f"the trace spans {arrivals[last] / 86400:.6g} days; at most 366 days "
                         f"({MAX_SPAN_S:.0f} s) from the first arrival", file=source,
                         line=lines[last], field="timestamp")


def _duplicate_errors(ids: list[str], lines: list[int], source: str) -> list[InputError]:
    first: dict[str, int] = {}
    errors = []
    for task_id, lineno in zip(ids, lines):
        seen = first.setdefault(task_id, lineno)
        if seen != lineno:
            errors.append(InputError(f"duplicate task_id {task_id!r} (first on line {seen})",
                                     file=source, line=lineno, field="task_id"))
    return errors


def raise_all(errors: list[InputError]) -> None:
    """Raise InputErrors for a non-empty list, sorted by line, at most MAX_REPORTED_ERRORS."""
    errors = sorted(errors, key=lambda e: (e.line or 0))
    if len(errors) > MAX_REPORTED_ERRORS:
        more = len(errors) - MAX_REPORTED_ERRORS
        errors = errors[:MAX_REPORTED_ERRORS] + [
            InputError(f"... and {more} more errors", file=errors[0].file)]
    raise InputErrors(errors)


def file_stem(source: str) -> str:
    """'traces/day1.jsonl.gz' -> 'day1' (the prefix of generated task ids)."""
    name = Path(source).name
    for suffix in (".gz", ".jsonl", ".ndjson", ".csv"):
        name = name.removesuffix(suffix)
    return name or source
