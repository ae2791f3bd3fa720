"""Map an arbitrary CSV (a cluster's job log, a scheduler export) onto the trace format.

The user names the columns; every row is either kept, excluded by an explicit ``--filter``
(counted and reported per filter), or an error naming file, line and source column. Nothing is
dropped quietly. Absolute times are written as ISO 8601 UTC ``timestamp`` so the wall clock
survives; relative times (``seconds``) are written as ``arrival_s``.
"""

from __future__ import annotations

import gzip
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from gpusim.errors import InputError
from gpusim.traces.format import (
    Trace,
    file_stem,
    parse_timestamp,
    raise_all,
    read_csv_table,
    trace_from_rows,
)

TIME_FORMATS = ("iso", "seconds", "epoch", "epoch_ms")  # or any strptime pattern (contains %)
DURATION_UNITS = {"s": 1.0, "ms": 1e-3, "min": 60.0}
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_ONE_SECOND = timedelta(seconds=1)


@dataclass(frozen=True)
class RowFilter:
    """Keep a row when ``column == value`` (or ``!=`` when negate); compared as stripped text."""
    column: str
    value: str
    negate: bool = False

    @classmethod
    def parse(cls, text: str) -> RowFilter:
        if "!=" in text:
            col, _, val = text.partition("!=")
            negate = True
        elif "=" in text:
            col, _, val = text.partition("=")
            negate = False
        else:
            raise InputError(f"filter {text!r} is not COLUMN=VALUE or COLUMN!=VALUE",
                             field="filter")
        if not col.strip():
            raise InputError(f"filter {text!r} names no column", field="filter")
        return cls(col.strip(), val.strip(), negate)

    def keeps(self, row: Mapping[str, str]) -> bool:
        return (row[self.column] == self.value) != self.negate

    def __str__(self) -> str:
        return f"{self.column}{'!=' if self.negate else '='}{self.value}"


@dataclass(frozen=True)
class ImportResult:
    trace: Trace                     # the imported rows, validated as a trace
    rows: list[dict[str, Any]]       # output rows in source order, ready for write_rows
    kept: int
    filtered: dict[str, int]         # filter text -> rows it excluded (first failing filter)
    unused_type_map: tuple[str, ...] = field(default=())  # --type-map keys never seen

    def summary(self) -> str:
        text = _counts(self.kept, self.filtered)
        if self.unused_type_map:
            text += f"; type-map entries never matched: {', '.join(self.unused_type_map)}"
        return text


def _counts(kept: int, filtered: Mapping[str, int]) -> str:
    """'kept 3, filtered 2 by status=SUCCEED, 1 by queue!=cpu'"""
    by = [f"{n} by {f}" for f, n in filtered.items() if n]
    return f"kept {kept}" + (", filtered " + ", ".join(by) if by else "")


def parse_mapping(items: Iterable[str], option: str) -> dict[str, str]:
    """``old=new`` pairs (for --type-map) as a dict; malformed or repeated keys are errors."""
    out: dict[str, str] = {}
    for item in items:
        old, sep, new = item.partition("=")
        if not sep or not old.strip() or not new.strip():
            raise InputError(f"{item!r} is not OLD=NEW", field=option)
        if old.strip() in out:
            raise InputError(f"{old.strip()!r} mapped twice", field=option)
        out[old.strip()] = new.strip()
    return out


def _time_parser(time_format: str) -> Callable[[str], datetime | float]:
    """Cell text -> aware datetime (absolute formats) or float seconds (``seconds``)."""
    def number(text: str) -> float:
        value = float(text)
        if not math.isfinite(value):
            raise ValueError("not a finite number")
        return value

    if time_format == "iso":
        return parse_timestamp
    if time_format == "seconds":
        return number
    if time_format == "epoch":
        return lambda text: _EPOCH + timedelta(seconds=number(text))
    if time_format == "epoch_ms":
        return lambda text: _EPOCH + timedelta(milliseconds=number(text))
    if "%" in time_format:
        def strptime(text: str) -> datetime:
            ts = datetime.strptime(text, time_format)
            return ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
        return strptime
    raise InputError(f"unknown time format {time_format!r}: use {', '.join(TIME_FORMATS)} "
                     "or a strptime pattern such as '%Y-%m-%d %H:%M:%S'", field="time-format")


def import_csv(src: str | Path, *, arrival_col: str, type_col: str, time_format: str = "iso",
               duration_col: str | None = None, duration_unit: str = "s",
               end_col: str | None = None, id_col: str | None = None,
               node_col: str | None = None, gpu_col: str | None = None,
               filters: Iterable[str | RowFilter] = (),
               type_map: Mapping[str, str] | None = None) -> ImportResult:
    """Read ``src`` and map its columns to trace rows; raises InputError(s) on any bad row."""
    source = str(src)
    if (duration_col is None) == (end_col is None):
        raise InputError("give exactly one of --duration-col and --end-col", field="duration-col")
    if duration_unit not in DURATION_UNITS:
        raise InputError(f"unknown unit {duration_unit!r} (s, ms, min)", field="duration-unit")
    parse_time = _time_parser(time_format)
    row_filters = [f if isinstance(f, RowFilter) else RowFilter.parse(f) for f in filters]
    type_map = dict(type_map or {})
    try:
        opener = gzip.open if source.endswith(".gz") else open
        with opener(source, "rt", encoding="utf-8-sig", newline="") as fh:
            header, table = read_csv_table(fh, source)
            wanted = {"arrival-col": arrival_col, "type-col": type_col,
                      "duration-col": duration_col, "end-col": end_col, "id-col": id_col,
                      "node-col": node_col, "gpu-col": gpu_col}
            missing = [InputError(f"--{opt} column not in the header ({', '.join(header)})",
                                  file=source, line=1, field=col)
                       for opt, col in wanted.items() if col is not None and col not in header]
            missing += [InputError(f"--filter column not in the header ({', '.join(header)})",
                                   file=source, line=1, field=f.column)
                        for f in row_filters if f.column not in header]
            if missing:
                raise_all(missing)
            mapper = _RowMapper(source, parse_time, time_format == "seconds", arrival_col,
                                type_col, duration_col, DURATION_UNITS[duration_unit], end_col,
                                id_col, node_col, gpu_col, type_map)
            filtered = {str(f): 0 for f in row_filters}
            rows, lines = [], []
            for lineno, cells in table:
                failing = next((f for f in row_filters if not f.keeps(cells)), None)
                if failing is not None:
                    filtered[str(failing)] += 1
                    continue
                row = mapper.map(lineno, cells)
                if row is not None:
                    rows.append(row)
                    lines.append(lineno)
    except FileNotFoundError:
        raise InputError("no such file", file=source) from None
    except (OSError, UnicodeDecodeError, EOFError) as exc:
        raise InputError(f"cannot read: {exc}", file=source) from None
    if mapper.errors:
        raise_all(mapper.errors)
    if not rows:
        raise InputError(f"no rows left to import ({_counts(0, filtered)})",
                         file=source)
    # The trace reader's own checks, with errors pointing at the source lines.
    trace = trace_from_rows(rows, source, lines=lines)
    unused = tuple(k for k in type_map if k not in mapper.types_seen)
    return ImportResult(trace, rows, len(rows), {k: v for k, v in filtered.items() if v},
                        unused)


class _RowMapper:
    """Turns one CSV record into a trace row, collecting errors instead of stopping at one."""

    def __init__(self, source, parse_time, relative, arrival_col, type_col, duration_col,
                 unit_s, end_col, id_col, node_col, gpu_col, type_map):
        self.source, self.parse_time, self.relative = source, parse_time, relative
        self.arrival_col, self.type_col = arrival_col, type_col
        self.duration_col, self.unit_s, self.end_col = duration_col, unit_s, end_col
        self.id_col, self.node_col, self.gpu_col = id_col, node_col, gpu_col
        self.type_map = type_map
        self.stem = file_stem(source)
        self.errors: list[InputError] = []
        self.ids: dict[str, int] = {}
        self.types_seen: set[str] = set()

    def _error(self, line: int, column: str, message: str) -> None:
        self.errors.append(InputError(message, file=self.source, line=line, field=column))

    def _cell(self, line: int, cells: Mapping[str, str], column: str) -> str | None:
        value = cells[column]
        if value == "":
            self._error(line, column, "empty cell")
            return None
        return value

    def _time(self, line: int, cells: Mapping[str, str], column: str):
        text = self._cell(line, cells, column)
        if text is None:
            return None
        try:
            return self.parse_time(text)
        except (ValueError, OverflowError) as exc:
            self._error(line, column, f"cannot parse time {text!r}: {exc}")
            return None

    def map(self, line: int, cells: Mapping[str, str]) -> dict[str, Any] | None:
        n_errors = len(self.errors)
        row: dict[str, Any] = {}
        if self.id_col:
            task_id = self._cell(line, cells, self.id_col)
        else:
            task_id = f"{self.stem}:{line}"  # traceable to the source row
        if task_id is not None:
            first = self.ids.setdefault(task_id, line)
            if first != line:
                self._error(line, self.id_col or "task_id",
                            f"duplicate id {task_id!r} (first on line {first})")
            row["task_id"] = task_id

        kind = self._cell(line, cells, self.type_col)
        if kind is not None:
            self.types_seen.add(kind)
            row["task_type"] = self.type_map.get(kind, kind)

        start = self._time(line, cells, self.arrival_col)
        if start is not None:
            if self.relative:
                if start < 0:
                    self._error(line, self.arrival_col, f"negative time {start!r}")
                row["arrival_s"] = start
            else:
                # Microsecond ISO text: the exact value the datetime holds.
                row["timestamp"] = start.astimezone(UTC).isoformat()

        duration = None
        if self.duration_col:
            text = self._cell(line, cells, self.duration_col)
            if text is not None:
                try:
                    duration = float(text) * self.unit_s
                except ValueError:
                    self._error(line, self.duration_col, f"not a number: {text!r}")
            column = self.duration_col
        else:
            end = self._time(line, cells, self.end_col)
            if end is not None and start is not None:
                diff = end - start
                duration = diff if self.relative else diff / _ONE_SECOND
            column = self.end_col
        if duration is not None:
            if not (math.isfinite(duration) and duration > 0):
                what = "end is not after start" if self.end_col else "duration must be > 0"
                self._error(line, column, f"{what} (duration {duration!r} s)")
            row["duration_s"] = duration

        if self.node_col and cells[self.node_col] != "":
            row["node"] = cells[self.node_col]
        if self.gpu_col and cells[self.gpu_col] != "":
            text = cells[self.gpu_col]
            if text.isascii() and text.isdigit():  # a GPU index: no sign, no decimals
                row["gpu"] = int(text)
            else:
                self._error(line, self.gpu_col, f"GPU index must be an integer >= 0, got {text!r}")
        return row if len(self.errors) == n_errors else None
