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
from pathlib import Path
from typing import Annotated, Any, Literal, Required

import numpy as np
from pydantic import AfterValidator, ConfigDict, Field, TypeAdapter, ValidationError
from typing_extensions import TypedDict

from gpusim.errors import InputError, InputErrors
from gpusim.output import atomic_write_bytes
from gpusim.traces.observed import OBSERVED_FIELDS, Observed
from gpusim.traces.trace import (FIELDS, MAX_DURATION_S, MAX_REPORTED_ERRORS, MAX_SPAN_S,
                                 RawColumns, Task, Trace, TraceColumns, assemble, epoch_us,
                                 file_stem, parse_timestamp, raise_all)

__all__ = ["FIELDS", "MAX_DURATION_S", "MAX_REPORTED_ERRORS", "MAX_SPAN_S", "Task", "Trace",
           "TraceColumns", "TraceRow", "load_trace", "make_trace", "parse_timestamp",
           "raise_all", "read_csv_table", "file_stem", "task_row", "trace_format",
           "trace_from_rows", "write_rows", "write_trace"]

# ---------------------------------------------------------------------------------------------
# Row schema. A TypedDict (not a BaseModel) because validating a list of plain dicts in one
# pydantic-core call is several times faster than building a model per row.


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
    duration_s: _Hold | None  # required, except on a row whose outcome is "timeout"
    node: _NonEmpty | None
    gpu: _GpuIndex | None
    crashed: bool | None
    # observed outcomes (gpusim/traces/observed.py)
    wait_s: _Seconds | None
    outcome: Literal["acquired", "timeout"] | None
    attempts: Annotated[int, Field(ge=0)] | None
    config_digest: _NonEmpty | None



@functools.cache
def _rows_adapter() -> TypeAdapter:
    """The row validator, built on first use (the columnar reader never needs it)."""
    return TypeAdapter(list[TraceRow])


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
    """Read a trace file; the format follows the suffix (.jsonl/.ndjson/.csv, optionally .gz).

    A columnar reader loads the file when every row is plainly valid; the first doubt (a bad
    row, an unusual spelling it does not vouch for) hands the file to the row-by-row reader,
    which gives the same trace or words the errors, naming file, line and field.
    """
    source = str(path)
    fmt = trace_format(source)
    from gpusim.traces.fast import read_columns
    raw = read_columns(source, fmt)
    if raw is not None:
        return assemble(raw, source)
    return _load_rows(source, fmt)


def _load_rows(source: str, fmt: str) -> Trace:
    """The row-by-row reader: every row through the pydantic schema (the reference reader)."""
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
        valid: list[dict] | None = _rows_adapter().validate_python(rows, strict=strict)
    except ValidationError as exc:
        valid = None
        for err in exc.errors(include_url=False):
            errors.append(_row_error(err, lines, source))
    errors.extend(_time_mode_errors(rows, lines, source))
    errors.extend(_hold_errors(rows, lines, source))
    if errors:
        raise_all(errors)
    assert valid is not None
    return assemble(_raw_columns(valid, lines), source)


def _hold_errors(rows: list[dict], lines: list[int], source: str) -> list[InputError]:
    """duration_s may be absent only where the task gave up: then the hold is unknown."""
    return [InputError("required field is missing (only a row with outcome \"timeout\" may "
                       "leave the hold time out)", file=source, line=lineno, field="duration_s")
            for row, lineno in zip(rows, lines)
            if row.get("duration_s") is None and row.get("outcome") != "timeout"]


def _raw_columns(valid: list[dict], lines: list[int]) -> RawColumns:
    """Validated row dicts (one time field, the same in every row) as columns in file order."""
    timestamps = bool(valid) and "timestamp" in valid[0]
    holds = [r.get("duration_s") for r in valid]
    return RawColumns(
        lines=np.array(lines, dtype=np.int64),
        task_id=[r.get("task_id") for r in valid],
        task_type=[r["task_type"] for r in valid],
        duration_s=np.array([np.nan if h is None else h for h in holds], dtype=np.float64),
        node=[r.get("node") for r in valid],
        gpu=[r.get("gpu") for r in valid],
        crashed=np.array([bool(r.get("crashed")) for r in valid], dtype=np.bool_),
        arrival_s=None if timestamps else np.array([r["arrival_s"] for r in valid],
                                                   dtype=np.float64),
        epoch_us=[epoch_us(r["timestamp"]) for r in valid] if timestamps else None,
        observed=Observed.from_values(*([r.get(f) for r in valid] for f in OBSERVED_FIELDS)))


def make_trace(records: list[tuple], source: str, start_epoch: float | None = None) -> Trace:
    """Assemble an already-valid trace from (task_id, task_type, arrival_s, duration_s, node,
    gpu, crashed, line) tuples: sort by (arrival_s, line), number, shift nothing.

    For generators (synth) that produce valid values by construction.
    """
    # Sorting by (arrival, line) keeps tie order stable and independent of the input order.
    records = sorted(records, key=lambda r: (r[2], r[7]))
    tasks = tuple(Task(i, *r) for i, r in enumerate(records))
    return Trace(tasks, source, start_epoch)


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


# ---------------------------------------------------------------------------------------------
# Writer


def task_row(task: Task) -> dict[str, Any]:
    """One task as a trace row (optional fields left out when at their default)."""
    row: dict[str, Any] = {"task_id": task.task_id, "task_type": task.task_type,
                           "arrival_s": task.arrival_s}
    if task.duration_s is not None:
        row["duration_s"] = task.duration_s
    if task.node is not None:
        row["node"] = task.node
    if task.gpu is not None:
        row["gpu"] = task.gpu
    if task.crashed:
        row["crashed"] = True
    for name in OBSERVED_FIELDS:
        value = getattr(task, name)
        if value is not None:
            row[name] = value
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
