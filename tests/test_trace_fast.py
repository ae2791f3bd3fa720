"""The columnar trace reader against the row-by-row reader it stands in for.

`load_trace` first tries the columnar reader (gpusim.traces.fast) and hands the file to the
row reader when the columnar one cannot vouch for it. Held here:
* on any file, valid or not, `load_trace` gives what the row reader gives: the same trace
  (every column to the bit, ids, lines, start) or the same errors (message, file, line, field);
* on plainly written valid files the columnar reader really is the one that loads them (else
  the first property would hold trivially);
* a bad row anywhere in a large file is reported at its own line.
Timings are not tested here; bench/bench_io.py measures them.
"""

from __future__ import annotations

import csv
import io
import json
import random
import tempfile
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gpusim.errors import InputError, InputErrors
from gpusim.simulation import trace_digest
from gpusim.traces.fast import PY_WHITESPACE, read_columns
from gpusim.traces.format import _load_rows, load_trace, trace_format
from gpusim.traces.trace import Trace

SETTINGS = settings(max_examples=75, deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def snapshot(trace: Trace) -> tuple:
    c = trace.columns
    arrays = tuple((a.dtype.str, a.tobytes()) for a in (c.arrival_s, c.duration_s, c.crashed,
                                                        c.gpu, c.node, c.task_type))
    return (arrays, c.nodes, c.types, tuple(trace.task_ids), trace.lines.tolist(),
            trace.start_epoch, trace.source, trace_digest(trace))


def outcome(load, path: Path):
    """A loaded trace's snapshot, or the errors as (message, file, line, field)."""
    try:
        return ("trace", snapshot(load(path)))
    except InputError as exc:
        errors = exc.errors if isinstance(exc, InputErrors) else [exc]
        return ("errors", [(e.message, e.file, e.line, e.field) for e in errors])


def row_reader(path: Path) -> Trace:
    source = str(path)
    return _load_rows(source, trace_format(source))


def same_as_row_reader(path: Path):
    got = outcome(load_trace, path)
    assert got == outcome(row_reader, path)
    return got


# --- drawn traces ----------------------------------------------------------------------------

TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\0"), min_size=1, max_size=8)
PLAIN = st.text("abcxyz_-.:09 ", min_size=1, max_size=8).map(str.strip).filter(bool)


@st.composite
def timestamps(draw):
    when = draw(st.datetimes(datetime(2020, 1, 1), datetime(2020, 12, 31)))
    zone = draw(st.sampled_from([None, UTC, timezone(timedelta(hours=8)),
                                 timezone(timedelta(hours=-5, minutes=-30))]))
    text = when.replace(tzinfo=zone).isoformat(sep=draw(st.sampled_from(["T", " "])))
    return text.replace("+00:00", "Z") if draw(st.booleans()) else text


@st.composite
def rows(draw, text=PLAIN, nulls: bool = True):
    """Valid rows (up to the uniqueness of task ids), optional fields present or absent."""
    n = draw(st.integers(1, 30))
    use_stamps = draw(st.booleans())
    absent = [None] if nulls else []
    out = []
    for _ in range(n):
        row = {"task_type": draw(st.sampled_from(["ocr", "ffmpeg"]) | text)}
        if use_stamps:
            row["timestamp"] = draw(timestamps())
        else:
            row["arrival_s"] = draw(st.integers(0, 10**6) | st.floats(0, 366 * 86400.0))
        row["duration_s"] = draw(st.integers(1, 10**5) | st.floats(1e-300, 366 * 86400.0))
        for key, values in (("task_id", text), ("node", st.sampled_from(["node0", "n1"]) | text),
                            ("gpu", st.integers(0, 2**40)), ("crashed", st.booleans())):
            if draw(st.booleans()):
                row[key] = draw(st.sampled_from(absent) | values) if absent else draw(values)
        out.append(row)
    return out


def jsonl_text(draw, rows: list[dict]) -> str:
    ascii_only = draw(st.booleans())
    newline = draw(st.sampled_from(["\n", "\r\n"]))
    lines = [json.dumps(r, ensure_ascii=ascii_only) for r in rows]
    for _ in range(draw(st.integers(0, 2))):  # blank lines are not rows
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["", "  ", "\t"])))
    return newline.join(lines) + (newline if draw(st.booleans()) else "")


BOOL_WORDS = {True: ["true", "True", "TRUE", "1", "yes", "on", "t", "Y"],
              False: ["false", "False", "0", "no", "off", "f", "N"]}


def csv_text(draw, rows: list[dict], plain: bool) -> str:
    columns = [f for f in ("task_id", "task_type", "arrival_s", "timestamp", "duration_s",
                           "node", "gpu", "crashed") if any(f in r for r in rows)]
    if not plain:
        columns = draw(st.permutations(columns))
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator=draw(st.sampled_from(["\n", "\r\n"])))
    writer.writerow(columns)
    for r in rows:
        writer.writerow([cell(draw, r.get(c), plain) for c in columns])
    return buf.getvalue()


def cell(draw, value, plain: bool) -> str:
    if value is None:
        return "" if plain else draw(st.sampled_from(["", " "]))
    if isinstance(value, bool):
        return draw(st.sampled_from(BOOL_WORDS[value]))
    if isinstance(value, float):
        text = draw(st.sampled_from([repr(value), f"{value:.17g}", f"{value:.6e}"]))
    else:
        text = str(value)
    if plain:
        return text
    return draw(st.sampled_from([text, f" {text}", f"{text}\t", text.upper()]))


@SETTINGS
@given(data=st.data())
def test_jsonl_loads_as_the_row_reader_loads_it(data):
    rs = data.draw(rows(text=data.draw(st.sampled_from([PLAIN, TEXT]))))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.jsonl"
        path.write_text(jsonl_text(data.draw, rs), encoding="utf-8")
        kind, _ = same_as_row_reader(path)
        ids = [r.get("task_id") for r in rs if r.get("task_id") is not None]
        if len(set(ids)) == len(ids):
            assert kind == "trace"
            assert read_columns(str(path), "jsonl") is not None  # the columnar reader did it


@SETTINGS
@given(data=st.data())
def test_csv_loads_as_the_row_reader_loads_it(data):
    plain = data.draw(st.booleans())
    rs = data.draw(rows(text=PLAIN if plain else TEXT, nulls=False))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "t.csv"
        path.write_text(csv_text(data.draw, rs, plain), encoding="utf-8", newline="")
        kind, _ = same_as_row_reader(path)
        ids = [r["task_id"] for r in rs if "task_id" in r]
        if plain and len(set(ids)) == len(ids):
            assert kind == "trace"
            assert read_columns(str(path), "csv") is not None


def test_whitespace_list_is_what_str_strip_removes():
    assert set(PY_WHITESPACE) == {chr(c) for c in range(0x110000) if chr(c).isspace()}


# --- spellings the columnar reader leaves to the row reader, and bad rows ----------------------

GOOD = {"task_type": "ocr", "arrival_s": 1.5, "duration_s": 2}

ODD_JSONL = [
    '  {"task_type": "ocr", "arrival_s": 0, "duration_s": 1}',     # leading blanks
    '\x0b{"task_type": "ocr", "arrival_s": 0, "duration_s": 1}',   # str.strip() whitespace
    '{"task_type": "ocr", "arrival_s": -0.0, "duration_s": 1}',    # ge=0 admits -0.0
    '{"task_type": "o\\u0063r", "arrival_s": 0, "duration_s": 1, "gpu": null}',
    '{"task_type": "ocr", "arrival_s": 0, "arrival_s": 3, "duration_s": 1}',  # last one wins
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1e-320}',  # subnormal, > 0
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "crashed": null, "node": null}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1}\r{"task_type": "ocr", '
    '"arrival_s": 1, "duration_s": 1}',                            # a lone CR ends a line
    '\xa0',                                                       # blank to str.strip()
]
BAD_JSONL = [
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 0}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": NaN}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1e999}',
    '{"task_type": "ocr", "arrival_s": 31622400.5, "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": null, "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": "1", "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": true}',
    '{"task_type": "", "arrival_s": 0, "duration_s": 1}',
    '{"task_type": "ocr", "task_id": "", "arrival_s": 0, "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "node": ""}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "gpu": -1}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "gpu": 1.0}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "gpu": 99999999999999999999}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "crashed": 1}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "task_id": 7}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "extra": 7}',
    '{"task_type": "ocr", "timestamp": "2024-01-01T00:00:00Z", "duration_s": 1}',  # mixes
    '{"task_type": "ocr", "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "task_id": "dup"}',
    '{"task_type": "ocr", "task_id": "\\ud800", "arrival_s": 0, "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1} {"task_type": "ocr", '
    '"arrival_s": 0, "duration_s": 1}',
    '{"task_type": "ocr", "arrival_s": 0,\n"duration_s": 1}',
    '["ocr", 0, 1]',
]


def write_jsonl(path: Path, size: int, odd: str, at: int) -> Path:
    lines = [json.dumps({**GOOD, "task_id": f"t{i}", "arrival_s": i / 4}) for i in range(size)]
    lines[1] = json.dumps({**GOOD, "task_id": "dup"})
    lines.insert(at, odd)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("odd", ODD_JSONL)
def test_odd_jsonl_spellings_load_as_the_row_reader_loads_them(tmp_path, odd):
    kind, _ = same_as_row_reader(write_jsonl(tmp_path / "odd.jsonl", 40, odd, at=17))
    assert kind == "trace"


@pytest.mark.parametrize("bad", BAD_JSONL)
def test_bad_jsonl_rows_get_the_row_readers_errors(tmp_path, bad):
    path = write_jsonl(tmp_path / "bad.jsonl", 40, bad, at=17)
    if "dup" not in bad:  # a duplicate id is found after the rows are read, by shared code
        assert read_columns(str(path), "jsonl") is None
    kind, result = same_as_row_reader(path)
    assert kind == "errors" and 18 in [line for _, _, line, _ in result]


ODD_CSV = [
    "ocr, 1.5,2,,",       # a blank around a number
    "ocr,1_000,2,,",      # pydantic reads underscores
    "ocr,+1.5,2,,",
    "ocr,1.5,2,3.0,",     # an integral float as a GPU index
    "ocr,1.5,2,,\x1c",    # str.strip() whitespace, not Arrow's
    "ocr\u3000,1.5,2,,",
    '"ocr",1.5,2,,',      # quotes
    "ocr,-0,2,,",
    "   ",                # a blank line
]
BAD_CSV = [
    "ocr,1.5,0,,", "ocr,1.5,-2,,", "ocr,1.5,inf,,", "ocr,1.5,nan,,", "ocr,1.5,abc,,",
    "ocr,,2,,", ",1.5,2,,", "ocr,1.5,,,", "ocr,1.5,2,-1,", "ocr,1.5,2,x,", "ocr,1.5,2,,maybe",
    "ocr,1.5,2,,,", "ocr,1.5,2,", "ocr,40000000,2,,", "ocr,1.5,2,99999999999999999999,",
]


def write_csv(path: Path, size: int, odd: str, at: int) -> Path:
    lines = ["task_type,arrival_s,duration_s,gpu,crashed"]
    lines += [f"ocr,{i / 4},2,{i % 4},{'true' if i % 5 == 0 else ''}" for i in range(size)]
    lines.insert(at, odd)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


@pytest.mark.parametrize("odd", ODD_CSV)
def test_odd_csv_spellings_load_as_the_row_reader_loads_them(tmp_path, odd):
    kind, _ = same_as_row_reader(write_csv(tmp_path / "odd.csv", 40, odd, at=17))
    assert kind == "trace"


@pytest.mark.parametrize("bad", BAD_CSV)
def test_bad_csv_rows_get_the_row_readers_errors(tmp_path, bad):
    path = write_csv(tmp_path / "bad.csv", 40, bad, at=17)
    assert read_columns(str(path), "csv") is None
    kind, result = same_as_row_reader(path)
    assert kind == "errors" and [line for _, _, line, _ in result] == [18]


def test_a_nul_byte_is_left_to_the_row_reader(tmp_path):
    path = write_csv(tmp_path / "nul.csv", 10, "ocr,1.5,2,,\0", at=3)
    assert read_columns(str(path), "csv") is None


@pytest.mark.parametrize("fmt", ["jsonl", "csv"])
def test_a_bad_row_anywhere_in_a_large_file_is_named_by_its_line(tmp_path, fmt):
    rng = random.Random(12)
    for _ in range(3):
        at = rng.randrange(1, 30_000)
        if fmt == "jsonl":
            bad = '{"task_type": "ocr", "arrival_s": 0, "duration_s": -1}'
            path = write_jsonl(tmp_path / "big.jsonl", 30_000, bad, at=at)
            line = at + 1
        else:
            path = write_csv(tmp_path / "big.csv", 30_000, "ocr,0,-1,,", at=at)
            line = at + 1
        kind, result = same_as_row_reader(path)
        assert kind == "errors"
        errors = [(file, ln, field) for _, file, ln, field in result]
        assert (str(path), line, "duration_s") in errors


def test_blank_lines_keep_their_line_numbers(tmp_path):
    path = tmp_path / "gaps.csv"
    path.write_text("task_type,arrival_s,duration_s\r\nocr,0,1\r\n\r\nocr,1,1\n\nocr,2,1\n\n",
                    encoding="utf-8", newline="")
    assert read_columns(str(path), "csv") is not None
    kind, _ = same_as_row_reader(path)
    assert load_trace(path).lines.tolist() == [2, 4, 6]
    path = tmp_path / "gaps.jsonl"
    path.write_text('\n{"task_type": "a", "arrival_s": 0, "duration_s": 1}\n \n'
                    '{"task_type": "a", "arrival_s": 1, "duration_s": 1}\r\n', encoding="utf-8",
                    newline="")
    assert read_columns(str(path), "jsonl") is not None
    same_as_row_reader(path)
    assert load_trace(path).lines.tolist() == [2, 4]


def test_a_timestamp_trace_longer_than_a_year_is_refused_the_same_way(tmp_path):
    start = datetime(2024, 1, 1, tzinfo=UTC)
    lines = [json.dumps({"task_type": "a", "duration_s": 1,
                         "timestamp": (start + timedelta(days=d)).isoformat()})
             for d in (0, 200, 366.5, 100)]
    path = tmp_path / "long.jsonl"
    path.write_text("\n".join(lines), encoding="utf-8")
    kind, result = same_as_row_reader(path)
    assert kind == "errors" and result[0][2:] == (3, "timestamp")


def test_tasks_built_on_demand_match_the_columns(tmp_path):
    path = write_csv(tmp_path / "t.csv", 50, "ocr,3.25,2,,", at=5)
    trace = load_trace(path)
    assert "tasks" not in trace.__dict__  # nothing built yet
    one = trace.task(7)
    assert trace.tasks[7] == one and len(trace.tasks) == len(trace) == 51
    assert [t.index for t in trace.tasks] == list(range(51))
    cols = trace.columns
    np.testing.assert_array_equal(cols.arrival_s, [t.arrival_s for t in trace.tasks])
    assert type(trace.tasks[0].gpu) is int and type(trace.tasks[0].arrival_s) is float
    assert Trace(trace.tasks, trace.source, trace.start_epoch) == trace


@pytest.mark.parametrize("name,text", [
    ("bom.jsonl", '\ufeff{"task_type": "a", "arrival_s": 2, "duration_s": 1}\r\n'
                  '{"task_type": "b", "arrival_s": 1, "duration_s": 1, "gpu": 3}\r\n'),
    ("bom.csv", "\ufefftask_type,arrival_s,duration_s,gpu\r\na,2,1,\r\nb,1,1,3\r\n"),
])
def test_a_bom_and_crlf_lines_take_the_columnar_path(tmp_path, name, text):
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8"))
    assert read_columns(str(path), trace_format(str(path))) is not None
    same_as_row_reader(path)
    assert load_trace(path).task_types == ("a", "b")


def test_a_loaded_trace_pickles_whole(tmp_path):
    """Worker processes get the trace by pickle when fork is not available."""
    import pickle

    trace = load_trace(write_csv(tmp_path / "p.csv", 20, "ocr,3.25,2,,", at=5))
    again = pickle.loads(pickle.dumps(trace))
    assert snapshot(again) == snapshot(trace) and again == trace


def test_a_task_type_first_seen_late_in_a_file_still_loads_columnar(tmp_path):
    """The JSONL reader specialises its decoder to the task types and nodes of the first rows
    (about 64 KB); a value that shows up only later must not change the outcome."""
    rows = [{**GOOD, "task_id": f"t{i}", "arrival_s": i / 8, "node": "node0"} for i in range(4000)]
    rows[3500] = {**rows[3500], "task_type": "late_type", "node": "late_node"}
    path = tmp_path / "late.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    assert path.stat().st_size > 2 * 65536
    assert read_columns(str(path), "jsonl") is not None
    kind, _ = same_as_row_reader(path)
    trace = load_trace(path)
    assert kind == "trace" and trace.task_types == ("late_type", "ocr")
    assert trace.columns.nodes == ("late_node", "node0")
