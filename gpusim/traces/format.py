"""Trace schema, readers and writer (format documented in traces/README.md).

A trace is a list of GPU tasks: when each one starts asking for the lock (``arrival_s``) and how
long it then holds the GPU (``duration_s``). Readers validate every row with pydantic and report
each bad row as an :class:`~gpusim.errors.InputError` naming file, 1-based line and field;
nothing is dropped, clipped or rescaled. The only transformation is a shift of the time origin:
``Task.arrival_s`` counts from the first arrival, so the first task always starts at 0.0.
"""

from __future__ import annotations

import csv
import functools
import gc
import gzip
import io
import json
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from pathlib import Path
from typing import Annotated, Any, Required

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from gpusim.errors import InputError, InputErrors
from gpusim.output import atomic_write_bytes

#: Column order used by the writers; also the set of allowed row fields.
FIELDS = ("task_id", "task_type", "arrival_s", "timestamp", "duration_s", "node", "gpu", "crashed")
#: Report at most this many row errors; a million bad rows should not make a million-line message.
MAX_REPORTED_ERRORS = 50

_ONE_SECOND = timedelta(seconds=1)

#: Longest trace (last arrival after the first) and longest hold the model takes: 366 days each.
#: The engines size per-minute arrays by the run's horizon, so a time of 1e12 s would ask for
#: millions of megabytes; a year (a leap year included) covers any recorded workload.
MAX_SPAN_S = 366 * 86400.0
MAX_DURATION_S = 366 * 86400.0


@dataclass(frozen=True, slots=True)
class Task:
    index: int          # 0-based position after sorting by (arrival_s, line); tie-break, RNG id
    task_id: str        # from the row, or f"{stem}:{line}" when absent; duplicates are an error
    task_type: str      # non-empty
    arrival_s: float    # seconds from the FIRST arrival of the trace (first task has 0.0)
    duration_s: float   # GPU hold time, finite, > 0
    node: str | None    # optional node name ("node0", "node1", ... by default in a cluster)
    gpu: int | None     # optional GPU index >= 0
    crashed: bool       # the worker dies while holding the lock
    line: int           # source line, 1-based (CSV header is line 1, first data row line 2)


@dataclass(frozen=True)
class Trace:
    tasks: tuple[Task, ...]
    source: str                 # path as given, or "<synth>", "<memory>"
    start_epoch: float | None   # epoch seconds of the first arrival when rows used ISO timestamps

    def __len__(self) -> int:
        return len(self.tasks)

    @cached_property
    def task_types(self) -> tuple[str, ...]:
        return tuple(sorted({t.task_type for t in self.tasks}))

    @cached_property
    def columns(self) -> "TraceColumns":
        """The tasks as arrays (built once per trace: the engines and checks read these)."""
        return TraceColumns.of(self)

    @property
    def horizon_s(self) -> float:
        return self.tasks[-1].arrival_s if self.tasks else 0.0


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
        tasks = trace.tasks
        n = len(tasks)
        types = trace.task_types
        type_code = {t: i for i, t in enumerate(types)}
        nodes = tuple(sorted({t.node for t in tasks if t.node is not None}))
        node_code: dict[str | None, int] = {nd: i for i, nd in enumerate(nodes)}
        node_code[None] = -1
        return cls(
            arrival_s=np.fromiter((t.arrival_s for t in tasks), np.float64, n),
            duration_s=np.fromiter((t.duration_s for t in tasks), np.float64, n),
            crashed=np.fromiter((t.crashed for t in tasks), np.bool_, n),
            gpu=np.fromiter((-1 if t.gpu is None else t.gpu for t in tasks), np.int64, n),
            node=np.fromiter((node_code[t.node] for t in tasks), np.int64, n),
            nodes=nodes,
            task_type=np.fromiter((type_code[t.task_type] for t in tasks), np.int64, n),
            types=types)


# ---------------------------------------------------------------------------------------------
# Row schema. A TypedDict (not a BaseModel) because validating a list of plain dicts in one
# pydantic-core call is several times faster than building a model per row.


def parse_timestamp(value: str) -> datetime:
    """ISO 8601 text -> aware datetime; naive means UTC."""
    try:
        ts = datetime.fromisoformat(value)
    except ValueError:
        raise ValueError("not an ISO 8601 timestamp") from None
    # Naive timestamps are UTC (documented); never the local zone of whoever runs the tool.
    return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)


_NonEmpty = Annotated[str, Field(min_length=1)]
_Seconds = Annotated[float, Field(ge=0, le=MAX_SPAN_S, allow_inf_nan=False)]
_Hold = Annotated[float, Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)]
_GpuIndex = Annotated[int, Field(ge=0)]
_Timestamp = Annotated[str, AfterValidator(parse_timestamp)]


class TraceRow(TypedDict, total=False):
    __pydantic_config__ = ConfigDict(extra="forbid")  # type: ignore[misc]  # unknown field = error

    task_id: _NonEmpty | None
    task_type: Required[_NonEmpty]
    arrival_s: _Seconds
    timestamp: _Timestamp
    duration_s: Required[_Hold]
    node: _NonEmpty | None
    gpu: _GpuIndex | None
    crashed: bool | None


_ROWS = TypeAdapter(list[TraceRow])


# ---------------------------------------------------------------------------------------------
# Public readers


def _no_gc(fn):
    """Pause the cyclic GC while a reader builds millions of small acyclic objects.

    Each generation-0 collection rescans everything allocated so far; with the collector on, a
    million-row load spends about a third of its time there for nothing.
    """
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        was_enabled = gc.isenabled()
        gc.disable()
        try:
            return fn(*args, **kwargs)
        finally:
            if was_enabled:
                gc.enable()
    return wrapper


@_no_gc
def load_trace(path: str | Path) -> Trace:
    """Read a trace file; the format follows the suffix (.jsonl/.ndjson/.csv, optionally .gz)."""
    source = str(path)
    fmt = trace_format(source)
    try:
        opener = gzip.open if source.endswith(".gz") else open
        with opener(source, "rt", encoding="utf-8-sig", newline="") as fh:
            if fmt == "jsonl":
                rows, lines, errors = _read_jsonl(fh, source)
                strict = True
            else:
                rows, lines, errors = _read_csv(fh, source)
                strict = False  # CSV cells are text: let pydantic parse "1.5", "true", "3"
    except FileNotFoundError:
        raise InputError("no such file", file=source) from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read: {exc}", file=source) from None
    return _validate(rows, lines, source, strict=strict, errors=errors)


@_no_gc
def trace_from_rows(rows: Iterable[Mapping[str, Any]], source: str = "<memory>", *,
                    lines: Iterable[int] | None = None) -> Trace:
    """Build a trace from Python mappings (same schema and checks as the file readers).

    ``line`` is the 1-based row number unless ``lines`` gives each row's line in ``source``
    (the importer passes the CSV lines it read). Values must have the JSON types (str, int,
    float, bool, None); numpy scalars, as pandas hands them out, are converted with ``.item()``.
    """
    plain = [{k: _unnumpy(v) for k, v in row.items()} for row in rows]
    numbers = list(lines) if lines is not None else list(range(1, len(plain) + 1))
    if len(numbers) != len(plain):
        raise ValueError(f"{len(numbers)} line numbers for {len(plain)} rows")
    return _validate(plain, numbers, source, strict=True, errors=[])


def _unnumpy(value: Any) -> Any:
    return value.item() if type(value).__module__ == "numpy" and hasattr(value, "item") else value


def trace_format(source: str) -> str:
    """'jsonl' or 'csv' from a file name; anything else is an InputError."""
    name = source[:-3] if source.endswith(".gz") else source
    if name.endswith((".jsonl", ".ndjson")):
        return "jsonl"
    if name.endswith(".csv"):
        return "csv"
    raise InputError("unknown trace format: use a .jsonl, .ndjson or .csv file (optionally .gz)",
                     file=source)


def _read_jsonl(fh: Iterable[str], source: str) -> tuple[list[dict], list[int], list[InputError]]:
    rows: list[dict] = []
    lines: list[int] = []
    errors: list[InputError] = []
    # scan_once is the C scanner behind json.loads without its per-call Python wrapper: about
    # twice as fast on a million short lines. json.loads is still used to word the error.
    scan = json.JSONDecoder().scan_once
    for lineno, text in enumerate(fh, 1):
        text = text.strip()
        if not text:
            continue  # blank lines are not rows (a trailing newline is common)
        try:
            obj, end = scan(text, 0)
            if end != len(text):
                raise ValueError
        except (StopIteration, ValueError):
            try:
                json.loads(text)
                msg = "invalid JSON"
            except json.JSONDecodeError as exc:
                msg = f"invalid JSON: {exc.msg} (column {exc.colno})"
            errors.append(InputError(msg, file=source, line=lineno))
            continue
        if not isinstance(obj, dict):
            errors.append(InputError(f"expected a JSON object, got {type(obj).__name__}",
                                     file=source, line=lineno))
            continue
        rows.append(obj)
        lines.append(lineno)
    return rows, lines, errors


def _csv_records(fh: Iterable[str]) -> Iterator[tuple[int, list[str]]]:
    """Yield (first physical line, cells) per CSV record; quoted cells may span lines."""
    reader = csv.reader(fh)
    start = 1
    for cells in reader:
        yield start, cells
        start = reader.line_num + 1


def read_csv_table(fh: Iterable[str], source: str
                   ) -> tuple[list[str], Iterator[tuple[int, dict[str, str]]]]:
    """Header + rows of a CSV file as {column: stripped cell}; bad shape raises InputError.

    Shared with the importer so both report ragged rows and bad headers the same way.
    """
    records = _csv_records(fh)
    try:
        _, header = next(records)
    except StopIteration:
        raise InputError("empty file: no CSV header", file=source, line=1) from None
    header = [h.strip() for h in header]
    seen: set[str] = set()
    for i, name in enumerate(header, 1):
        if not name:
            raise InputError(f"empty column name (column {i})", file=source, line=1)
        if name in seen:
            raise InputError("duplicate column", file=source, line=1, field=name)
        seen.add(name)

    def rows() -> Iterator[tuple[int, dict[str, str]]]:
        width = len(header)
        for lineno, cells in records:
            if not cells or (len(cells) == 1 and not cells[0].strip()):
                continue  # blank line
            if len(cells) != width:
                field = header[len(cells)] if len(cells) < width else f"column {width + 1}"
                raise InputError(f"row has {len(cells)} cells, header has {width}",
                                 file=source, line=lineno, field=field)
            yield lineno, {h: c.strip() for h, c in zip(header, cells)}

    return header, rows()


def _read_csv(fh: Iterable[str], source: str) -> tuple[list[dict], list[int], list[InputError]]:
    header, table = read_csv_table(fh, source)
    unknown = [h for h in header if h not in FIELDS]
    if unknown:
        raise InputErrors([InputError(f"unknown column (allowed: {', '.join(FIELDS)})",
                                      file=source, line=1, field=h) for h in unknown])
    rows: list[dict] = []
    lines: list[int] = []
    errors: list[InputError] = []
    for lineno, cells in table:
        # An empty cell means "absent": optional fields take their default, required ones are
        # reported as missing by the schema.
        rows.append({k: v for k, v in cells.items() if v != ""})
        lines.append(lineno)
    return rows, lines, errors


# ---------------------------------------------------------------------------------------------
# Validation and assembly


def _validate(rows: list[dict], lines: list[int], source: str, *, strict: bool,
              errors: list[InputError]) -> Trace:
    errors = list(errors)
    try:
        valid: list[dict] | None = _ROWS.validate_python(rows, strict=strict)
    except ValidationError as exc:
        valid = None
        for err in exc.errors(include_url=False):
            errors.append(_row_error(err, lines, source))
    errors.extend(_time_mode_errors(rows, lines, source))
    if errors:
        raise_all(errors)
    assert valid is not None
    if not valid:
        raise InputError("empty trace: no task rows", file=source)

    stem = file_stem(source)
    ids = [row.get("task_id") or f"{stem}:{lineno}" for row, lineno in zip(valid, lines)]
    if len(set(ids)) != len(ids):
        raise_all(_duplicate_errors(ids, lines, source))
    if "timestamp" in valid[0]:
        t0 = min(r["timestamp"] for r in valid)
        # timedelta arithmetic is exact in microseconds, epoch floats are not.
        arrivals = [(r["timestamp"] - t0) / _ONE_SECOND for r in valid]
        start_epoch: float | None = t0.timestamp()
        _check_span(arrivals, lines, source)
    else:
        base = min(r["arrival_s"] for r in valid)
        arrivals = [r["arrival_s"] - base for r in valid]
        start_epoch = None
    # Build the Task objects straight from the validated dicts in sorted order: at a million rows
    # an intermediate list of tuples costs a second. Python's sort is stable, so with lines
    # ascending (as every reader gives them) sorting by arrival alone is by (arrival, line).
    if all(a < b for a, b in zip(lines, lines[1:])):
        order = sorted(range(len(valid)), key=arrivals.__getitem__)
    else:
        order = sorted(range(len(valid)), key=lambda j: (arrivals[j], lines[j]))
    tasks = []
    for i, j in enumerate(order):
        row = valid[j]
        tasks.append(Task(i, ids[j], row["task_type"], arrivals[j], row["duration_s"],
                          row.get("node"), row.get("gpu"), bool(row.get("crashed")), lines[j]))
    return Trace(tasks=tuple(tasks), source=source, start_epoch=start_epoch)


def _duplicate_errors(ids: list[str], lines: list[int], source: str) -> list[InputError]:
    first: dict[str, int] = {}
    errors = []
    for task_id, lineno in zip(ids, lines):
        seen = first.setdefault(task_id, lineno)
        if seen != lineno:
            errors.append(InputError(f"duplicate task_id {task_id!r} (first on line {seen})",
                                     file=source, line=lineno, field="task_id"))
    return errors


def make_trace(records: list[tuple], source: str, start_epoch: float | None = None) -> Trace:
    """Assemble an already-valid trace from (task_id, task_type, arrival_s, duration_s, node,
    gpu, crashed, line) tuples: sort by (arrival_s, line), number, shift nothing.

    For generators (synth) that produce valid values by construction; readers call it last.
    """
    # Sorting by (arrival, line) keeps tie order stable and independent of the input order.
    records = sorted(records, key=lambda r: (r[2], r[7]))
    tasks = tuple(Task(i, *r) for i, r in enumerate(records))
    return Trace(tasks=tasks, source=source, start_epoch=start_epoch)


def _row_error(err: Mapping[str, Any], lines: list[int], source: str) -> InputError:
    loc = err["loc"]
    line = lines[loc[0]] if loc and isinstance(loc[0], int) else None
    field = str(loc[1]) if len(loc) > 1 else None
    if err["type"] == "extra_forbidden":
        return InputError(f"unknown field (allowed: {', '.join(FIELDS)})",
                          file=source, line=line, field=field)
    if err["type"] == "missing":
        return InputError("required field is missing", file=source, line=line, field=field)
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "less_than_equal" and field in ("arrival_s", "duration_s"):
        msg = (f"must be at most {err['ctx']['le']:.0f} s (366 days: the longest trace and "
               "the longest hold gpusim models)")
    return InputError(f"{msg} (got {err['input']!r})", file=source, line=line, field=field)


def _check_span(arrivals: list[float], lines: list[int], source: str) -> None:
    """Timestamps may lie anywhere in time, but the first and last at most MAX_SPAN_S apart."""
    last = max(range(len(arrivals)), key=arrivals.__getitem__)
    if arrivals[last] > MAX_SPAN_S:
        raise InputError(f"the trace spans {arrivals[last] / 86400:.6g} days; at most 366 days "
                         f"({MAX_SPAN_S:.0f} s) from the first arrival", file=source,
                         line=lines[last], field="timestamp")


def _time_mode_errors(rows: list[dict], lines: list[int], source: str) -> list[InputError]:
    """Each row has exactly one of arrival_s / timestamp, and the whole file uses the same one."""
    errors = []
    mode = None
    for row, lineno in zip(rows, lines):
        has_a, has_t = "arrival_s" in row, "timestamp" in row
        if has_a and has_t:
            errors.append(InputError("give arrival_s or timestamp, not both",
                                     file=source, line=lineno, field="timestamp"))
        elif not (has_a or has_t):
            errors.append(InputError("required field is missing (arrival_s or timestamp)",
                                     file=source, line=lineno, field="arrival_s"))
        else:
            this = "arrival_s" if has_a else "timestamp"
            if mode is None:
                mode = (this, lineno)
            elif this != mode[0]:
                errors.append(InputError(
                    f"mixes time fields: this row uses {this}, line {mode[1]} uses {mode[0]}",
                    file=source, line=lineno, field=this))
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


# ---------------------------------------------------------------------------------------------
# Writer


def task_row(task: Task) -> dict[str, Any]:
    """One task as a trace row (optional fields left out when at their default)."""
    row: dict[str, Any] = {"task_id": task.task_id, "task_type": task.task_type,
                           "arrival_s": task.arrival_s, "duration_s": task.duration_s}
    if task.node is not None:
        row["node"] = task.node
    if task.gpu is not None:
        row["gpu"] = task.gpu
    if task.crashed:
        row["crashed"] = True
    return row


def write_trace(trace: Trace, path: str | Path) -> None:
    """Write a trace as JSONL or CSV (by suffix, optionally .gz), atomically.

    Times are written as ``arrival_s`` with repr floats, so loading the file gives back the same
    tasks (all fields but ``line``). ``start_epoch`` is not stored: the format has no header.
    """
    write_rows((task_row(t) for t in trace.tasks), path)


def write_rows(rows: Iterable[Mapping[str, Any]], path: str | Path) -> None:
    """Write trace rows (dicts with keys from FIELDS) as JSONL or CSV; atomic, deterministic."""
    target = str(path)
    fmt = trace_format(target)
    rows = list(rows)
    buf = io.StringIO(newline="")
    if fmt == "jsonl":
        for row in rows:
            buf.write(json.dumps(row, ensure_ascii=False, allow_nan=False))
            buf.write("\n")
    else:
        present = {k for row in rows for k in row}
        columns = [f for f in FIELDS if f in present]
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(columns)
        for row in rows:
            writer.writerow([_csv_cell(row.get(c, False if c == "crashed" else None))
                             for c in columns])
    data = buf.getvalue().encode("utf-8")
    if target.endswith(".gz"):
        # mtime=0 and no file name in the header: same trace, same bytes.
        raw = io.BytesIO()
        with gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz:
            gz.write(data)
        data = raw.getvalue()
    atomic_write_bytes(target, data)


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    return str(value)
