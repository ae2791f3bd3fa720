"""Columnar trace readers: the whole file parsed into columns and checked with numpy.

JSONL rows are decoded by msgspec into a typed struct (the same JSON types the row schema
takes in strict mode), CSV by pyarrow's reader with every column as text, then numbers are
vetted by a regular expression and converted in one cast. Both parsers round decimal text
correctly, as Python and pydantic do, so the values are the same to the bit.

These readers vouch only for what they can check exactly. Anything else (a row that breaks a
rule, or an unusual but legal spelling such as ``1_000`` or a quoted CSV cell) makes them
return None, and the caller hands the file to the row-by-row reader in
:mod:`gpusim.traces.format`, which then loads it or words each error with file, line and field.
"""

from __future__ import annotations

import functools
import gzip
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from itertools import count
from operator import attrgetter
from typing import Annotated, Any, Literal

import msgspec
import numpy as np

from gpusim.traces.observed import OBSERVED_FIELDS
from gpusim.traces.trace import FIELDS, MAX_DURATION_S, MAX_SPAN_S, Coded, RawColumns

_BOM = b"\xef\xbb\xbf"
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_NAIVE_EPOCH = datetime(1970, 1, 1)
_MICROSECOND = timedelta(microseconds=1)

#: The characters str.strip() removes (str.isspace()); tests/test_trace_fast.py checks the list.
PY_WHITESPACE = ("\t\n\x0b\x0c\r\x1c\x1d\x1e\x1f \x85\xa0\u1680\u2000\u2001\u2002\u2003\u2004"
                 "\u2005\u2006\u2007\u2008\u2009\u200a\u2028\u2029\u202f\u205f\u3000")

# Decimal numbers as both Python/pydantic and Arrow read them, to the same double; no sign, no
# "inf"/"nan", no underscores (those go to the row reader, which knows what pydantic makes of them).
_DECIMAL = r"^(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?$"
_INDEX = r"^[0-9]{1,18}$"
_TRUE = ["1", "on", "t", "true", "y", "yes"]      # pydantic's words for a bool, any ASCII case
_FALSE = ["0", "off", "f", "false", "n", "no"]


def read_columns(source: str, fmt: str) -> RawColumns | None:
    """The validated rows of a trace file, or None when only the row reader can say."""
    data = _read_bytes(source)
    if data is None:
        return None
    if fmt == "jsonl":
        return _jsonl(data)
    return _csv(data)


def _read_bytes(source: str) -> bytes | None:
    """The file's bytes when they decode as UTF-8 with one kind of line break."""
    try:
        if source.endswith(".gz"):
            with gzip.open(source, "rb") as fh:
                data = fh.read()
        else:
            with open(source, "rb") as fh:
                data = fh.read()
    except (OSError, EOFError):
        return None  # the row reader words it
    data = data.removeprefix(_BOM)
    if not data.isascii():
        try:
            data.decode("utf-8")
        except UnicodeDecodeError:
            return None
    # Python splits lines at \n, \r\n and a lone \r; the columnar readers only at \n.
    if b"\r" in data and data.count(b"\r") != data.count(b"\r\n"):
        return None
    return data


# ---------------------------------------------------------------------------------------------
# JSONL


_Text = Annotated[str, msgspec.Meta(min_length=1)]


_REQUIRED = object()

#: One JSONL row in the JSON types the strict row schema accepts, as (field, type, default).
#: Absent and null are alike where the schema treats them alike; the two time fields must
#: tell absent (UNSET) from null (an error).
_ROW_FIELDS: list[tuple[str, Any, Any]] = [
    ("task_type", _Text, _REQUIRED),
    ("duration_s", float, _REQUIRED),
    ("task_id", _Text | None, None),
    ("arrival_s", float | msgspec.UnsetType, msgspec.UNSET),
    ("timestamp", _Text | msgspec.UnsetType, msgspec.UNSET),
    ("node", _Text | None, None),
    ("gpu", int | None, None),
    ("crashed", bool | None, None),
]


def _row_struct(name: str, types: dict[str, Any]) -> type[msgspec.Struct]:
    fields = [(f, types.get(f, t)) if d is _REQUIRED else (f, types.get(f, t), d)
              for f, t, d in _ROW_FIELDS]
    return msgspec.defstruct(name, fields, forbid_unknown_fields=True, gc=False)


_Row = _row_struct("_Row", {})
_DECODER = msgspec.json.Decoder(_Row)


def _jsonl(data: bytes) -> RawColumns | None:
    if not data or data.isspace():
        return None  # no rows: the row reader says so
    decoder = _decoder_for(data)
    try:
        rows, lines = _one_object_a_line(data, decoder)
    except msgspec.DecodeError:
        if decoder is _DECODER:
            return None  # an invalid row: the row reader words it
        try:  # maybe only a task type or node the first rows did not show
            rows, lines = _one_object_a_line(data, _DECODER)
        except msgspec.DecodeError:
            return None
    return _jsonl_columns(rows, lines) if rows else None


def _decoder_for(data: bytes) -> msgspec.json.Decoder:
    """A decoder that takes task_type and node from the values the first rows use (Literal
    types): msgspec then hands out one shared string per value instead of a new one per row,
    a fifth less work. A row with another value fails it, and the generic decoder is used."""
    end = data.find(b"\n", 1 << 16)
    try:
        sample = _DECODER.decode_lines(data if end < 0 else data[:end])
    except msgspec.DecodeError:
        return _DECODER
    types = tuple(sorted({r.task_type for r in sample}))
    nodes = tuple(sorted({r.node for r in sample if r.node is not None}))
    if not types or len(types) > 64 or len(nodes) > 64:
        return _DECODER
    return _literal_decoder(types, nodes)


@functools.lru_cache(maxsize=16)
def _literal_decoder(types: tuple[str, ...], nodes: tuple[str, ...]) -> msgspec.json.Decoder:
    literal: dict[str, Any] = {"task_type": Literal[types]}  # type: ignore[valid-type]
    if nodes:
        literal["node"] = Literal[nodes] | None  # type: ignore[valid-type]
    return msgspec.json.Decoder(_row_struct("_LiteralRow", literal))


def _one_object_a_line(data: bytes, decoder: msgspec.json.Decoder
                       ) -> tuple[list, np.ndarray]:
    """The rows and their lines; blank lines are not rows."""
    buf = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(buf == 10)
    total = len(breaks) + (0 if data.endswith(b"\n") else 1)
    starts = np.append(0, breaks + 1)[:total]
    ends = np.append(breaks, len(buf))[:total]  # where each line's text ends, before a \r
    ends = ends - (buf[ends - 1] == 13)        # (an empty line's end - 1 is the \n before it)
    if data[:1] == b"{" and bool(np.all(ends > starts)) and \
            bool(np.all(buf[starts] == 0x7B)) and bool(np.all(buf[ends - 1] == 0x7D)):
        # Every line starts with "{" and ends with "}". A row holds no nested object and no
        # string spans lines, so no object spans lines either, and as many objects as lines
        # means one a line: decode the whole buffer in one call.
        rows = decoder.decode_lines(data)
        if len(rows) == total:
            return rows, np.arange(1, total + 1, dtype=np.int64)
    texts = data.split(b"\n")[:total]
    keep = [i for i, text in enumerate(texts) if text.strip()]
    rows = [decoder.decode(texts[i]) for i in keep]
    return rows, np.array(keep, dtype=np.int64) + 1


def _jsonl_columns(rows: list, lines: np.ndarray) -> RawColumns | None:
    n = len(rows)
    duration = np.fromiter(map(attrgetter("duration_s"), rows), np.float64, n)
    gpu = _jsonl_gpus(list(map(attrgetter("gpu"), rows)))
    crashed = np.fromiter(map(attrgetter("crashed"), rows), np.bool_, n)  # None: False
    unset = msgspec.UNSET
    if rows[0].arrival_s is not unset:
        if any(map(attrgetter("timestamp"), rows)):  # UNSET is false, a timestamp is not
            return None  # a row with both time fields
        try:
            arrival = np.fromiter(map(attrgetter("arrival_s"), rows), np.float64, n)
        except TypeError:
            return None  # a row without arrival_s
        us = None
    else:
        stamps = list(map(attrgetter("timestamp"), rows))
        if any(r.arrival_s is not unset for r in rows) or unset in stamps:
            return None
        arrival, us = None, _epoch_us(stamps)
        if us is None:
            return None
    if gpu is None or not _times_ok(arrival, duration):
        return None
    return RawColumns(lines=lines, task_id=list(map(attrgetter("task_id"), rows)),
                      task_type=_coded_attr(rows, "task_type"), duration_s=duration,
                      node=_coded_attr(rows, "node"), gpu=gpu, crashed=crashed,
                      arrival_s=arrival, epoch_us=us)


def _coded_attr(rows: list, name: str) -> Coded:
    """One text field as codes in order of first appearance (one hash per row, in C)."""
    first_seen: defaultdict[str | None, int] = defaultdict(count().__next__)
    codes = np.fromiter(map(first_seen.__getitem__, map(attrgetter(name), rows)), np.int64,
                        len(rows))
    return Coded(values=list(first_seen), codes=codes)


def _jsonl_gpus(values: list[int | None]) -> np.ndarray | None:
    """GPU indexes as int64, -1 where not given; None for a negative or too large one."""
    missing = None
    if None in values:
        missing = np.array([g is None for g in values], dtype=np.bool_)
        values = [0 if g is None else g for g in values]
    try:
        gpu = np.array(values, dtype=np.int64)
    except OverflowError:
        return None
    if len(gpu) and gpu.min() < 0:
        return None
    if missing is not None:
        gpu[missing] = -1
    return gpu


def _epoch_us(stamps: list[str]) -> list[int] | None:
    """Microseconds since 1970 of each ISO timestamp (naive = UTC), as the row reader gets them
    (parse_timestamp, then epoch_us), with less work a row; None if one does not parse."""
    parse = datetime.fromisoformat
    out: list[int] = []
    append = out.append
    try:
        for text in stamps:
            ts = parse(text)
            append((ts - (_NAIVE_EPOCH if ts.tzinfo is None else _EPOCH)) // _MICROSECOND)
    except ValueError:
        return None
    return out


def _times_ok(arrival: np.ndarray | None, duration: np.ndarray) -> bool:
    """The schema's bounds: 0 <= arrival <= MAX_SPAN_S, 0 < duration <= MAX_DURATION_S, finite
    (NaN fails every comparison, infinities the upper bounds)."""
    ok = bool(np.all((duration > 0) & (duration <= MAX_DURATION_S)))
    if arrival is not None:
        ok = ok and bool(np.all((arrival >= 0) & (arrival <= MAX_SPAN_S)))
    return ok


# ---------------------------------------------------------------------------------------------
# CSV


def _csv(data: bytes) -> RawColumns | None:
    # Without quotes a record is a physical line and a cell the text between commas, and
    # Python's csv module and Arrow agree on every byte; with quotes they need not (Python's
    # reader forgives stray quotes), so quoted files go to the row reader. A NUL stops Python's.
    if b'"' in data or b"\0" in data:
        return None
    end = data.find(b"\n")
    first = (data if end < 0 else data[:end]).removesuffix(b"\r").decode("utf-8")
    header = [h.strip() for h in first.split(",")]
    if not first or len(set(header)) != len(header) or not set(header) <= set(FIELDS) \
            or "" in header or set(header) & set(OBSERVED_FIELDS):
        # header problems are worded by the row reader, which also reads observed outcomes
        # (recorded traces are small; the columnar path is for the long replay inputs)
        return None
    table = _arrow_table(data, header)
    if table is None:
        return None
    lines = _csv_lines(data, table.num_rows)
    if lines is None:
        return None
    return _csv_columns(table, lines)


def _arrow_table(data: bytes, header: list[str]):  # noqa: ANN202 - pyarrow.Table
    import pyarrow as pa
    import pyarrow.csv as pacsv

    try:
        return pacsv.read_csv(
            pa.py_buffer(data),
            read_options=pacsv.ReadOptions(column_names=header, skip_rows=1),
            parse_options=pacsv.ParseOptions(quote_char=False, escape_char=False,
                                              newlines_in_values=False, ignore_empty_lines=True),
            convert_options=pacsv.ConvertOptions(
                column_types={h: pa.string() for h in header}, strings_can_be_null=False,
                quoted_strings_can_be_null=False))
    except (pa.ArrowInvalid, pa.ArrowException):
        return None  # ragged rows and the like: the row reader names the line


def _csv_lines(data: bytes, rows: int) -> np.ndarray | None:
    """The line of each data row: physical lines, less the header and the empty ones."""
    total = data.count(b"\n") + (0 if data.endswith(b"\n") else 1)
    if rows == total - 1:
        # Without quotes a record is one line and Arrow skips only empty lines: none here.
        return np.arange(2, total + 1, dtype=np.int64) if rows > 0 else None
    buf = np.frombuffer(data, dtype=np.uint8)
    breaks = np.flatnonzero(buf == 10)
    starts = np.concatenate(([0], breaks + 1))[:total]
    ends = np.concatenate((breaks, [len(buf)]))[:total]
    has_cr = (ends > starts) & (buf[np.maximum(ends - 1, 0)] == 13)
    empty = (ends - starts - has_cr) == 0
    lines = np.flatnonzero(~empty)[1:] + 1
    return lines if len(lines) == rows and rows > 0 else None


def _csv_columns(table, lines: np.ndarray) -> RawColumns | None:  # noqa: ANN001
    import pyarrow.compute as pc

    n = table.num_rows
    cells = {name: pc.utf8_trim(table.column(name), characters=PY_WHITESPACE)
             for name in table.column_names}
    given = {name: pc.not_equal(col, "") for name, col in cells.items()}

    def all_given(name: str) -> bool:
        return name in cells and bool(pc.all(given[name]).as_py())

    if not (all_given("task_type") and all_given("duration_s")):
        return None
    mode = _time_mode(given, n)
    if mode is None:
        return None
    duration = _decimals(cells["duration_s"])
    arrival = _decimals(cells["arrival_s"]) if mode == "arrival_s" else None
    us = _epoch_us(cells["timestamp"].to_pylist()) if mode == "timestamp" else None
    gpu = _indexes(cells["gpu"], given["gpu"], pc) if "gpu" in cells else np.full(n, -1)
    crashed = _bools(cells["crashed"], pc) if "crashed" in cells else np.zeros(n, np.bool_)
    if duration is None or (mode == "arrival_s" and arrival is None) or \
            (mode == "timestamp" and us is None) or gpu is None or crashed is None or \
            not _times_ok(arrival, duration):
        return None
    return RawColumns(lines=lines, task_id=_optional_text(cells.get("task_id"), n),
                      task_type=_coded(cells["task_type"]), duration_s=duration,
                      node=_coded(cells["node"]) if "node" in cells else [None] * n, gpu=gpu,
                      crashed=crashed, arrival_s=arrival, epoch_us=us)


def _time_mode(given: dict, n: int) -> str | None:
    """'arrival_s' or 'timestamp' when every row gives that one and only that one."""
    import pyarrow.compute as pc

    counts = {name: int(pc.sum(given[name]).as_py() or 0) if name in given else 0
              for name in ("arrival_s", "timestamp")}
    for mode, other in (("arrival_s", "timestamp"), ("timestamp", "arrival_s")):
        if counts[mode] == n and counts[other] == 0:
            return mode
    return None


def _decimals(col) -> np.ndarray | None:  # noqa: ANN001
    import pyarrow as pa
    import pyarrow.compute as pc

    if not bool(pc.all(pc.match_substring_regex(col, _DECIMAL)).as_py()):
        return None
    return pc.cast(col, pa.float64()).to_numpy(zero_copy_only=False)


def _indexes(col, given, pc) -> np.ndarray | None:  # noqa: ANN001
    import pyarrow as pa

    ok = pc.or_(pc.invert(given), pc.match_substring_regex(col, _INDEX))
    if not bool(pc.all(ok).as_py()):
        return None
    values = pc.cast(pc.if_else(given, col, "-1"), pa.int64())
    return values.to_numpy(zero_copy_only=False)


def _bools(col, pc) -> np.ndarray | None:  # noqa: ANN001
    word = pc.ascii_lower(col)
    true = pc.is_in(word, value_set=_arrow_strings(_TRUE))
    known = pc.or_(pc.or_(true, pc.is_in(word, value_set=_arrow_strings(_FALSE))),
                   pc.equal(word, ""))
    if not bool(pc.all(known).as_py()):
        return None
    return true.to_numpy(zero_copy_only=False).astype(np.bool_)


def _arrow_strings(values: list[str]):  # noqa: ANN202
    import pyarrow as pa

    return pa.array(values, type=pa.string())


def _coded(col) -> Coded:  # noqa: ANN001
    """A text column as distinct values and codes; an empty cell is None (not given)."""
    import pyarrow.compute as pc

    encoded = pc.dictionary_encode(col).combine_chunks()
    values = [v or None for v in encoded.dictionary.to_pylist()]
    return Coded(values=values, codes=encoded.indices.to_numpy(zero_copy_only=False))


def _optional_text(col, n: int) -> list[str | None]:  # noqa: ANN001
    if col is None:
        return [None] * n
    values = col.to_pylist()
    return [v or None for v in values] if "" in values else values
