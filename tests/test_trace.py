"""Trace schema, readers and writer: round trips, and every bad input names file, line, field."""

from __future__ import annotations

import dataclasses
import gzip
import json

import numpy as np
import pytest

from gpusim.errors import InputError, InputErrors
from gpusim.traces.format import MAX_REPORTED_ERRORS, Task, Trace, load_trace, trace_from_rows, write_trace

ROWS = [
    {"task_id": "a", "task_type": "paddleocr", "arrival_s": 5.0, "duration_s": 0.1 + 0.2},
    {"task_id": "b", "task_type": "ffmpeg", "arrival_s": 7.25, "duration_s": 45.0,
     "node": "node1", "gpu": 3},
    {"task_id": "c", "task_type": "faster_whisper", "arrival_s": 6.0, "duration_s": 1 / 3,
     "crashed": True},
    {"task_id": "d, \"quoted\"", "task_type": "ffmpeg", "arrival_s": 6.0, "duration_s": 1e-9},
]


def without_line(trace: Trace) -> list[Task]:
    return [dataclasses.replace(t, line=0) for t in trace.tasks]


def write_text(path, text: str):
    path.write_text(text, encoding="utf-8")
    return path


def errors_of(exc: InputError) -> list[InputError]:
    return exc.errors if isinstance(exc, InputErrors) else [exc]


def where(exc: InputError) -> list[tuple]:
    return [(e.file, e.line, e.field) for e in errors_of(exc)]


# --- good path -----------------------------------------------------------------------------------

def test_rows_are_sorted_shifted_and_numbered():
    trace = trace_from_rows(ROWS)
    assert [t.task_id for t in trace.tasks] == ["a", "c", 'd, "quoted"', "b"]  # tie: lower line
    assert [t.index for t in trace.tasks] == [0, 1, 2, 3]
    assert [t.arrival_s for t in trace.tasks] == [0.0, 1.0, 1.0, 2.25]  # from the first arrival
    assert [t.line for t in trace.tasks] == [1, 3, 4, 2]
    assert trace.tasks[3].node == "node1" and trace.tasks[3].gpu == 3
    assert trace.tasks[1].crashed and not trace.tasks[0].crashed
    assert len(trace) == 4 and trace.horizon_s == 2.25
    assert trace.task_types == ("faster_whisper", "ffmpeg", "paddleocr")
    assert trace.start_epoch is None and trace.source == "<memory>"


@pytest.mark.parametrize("name", ["t.jsonl", "t.csv", "t.ndjson", "t.jsonl.gz", "t.csv.gz"])
def test_round_trip_is_exact_and_byte_stable(tmp_path, name):
    trace = trace_from_rows(ROWS)
    path = tmp_path / name
    write_trace(trace, path)
    again = load_trace(path)
    assert without_line(again) == without_line(trace)  # floats bit-identical (repr)
    assert again.source == str(path)
    second = tmp_path / ("again-" + name)
    write_trace(again, second)
    assert second.read_bytes() == path.read_bytes()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_csv_line_numbers_start_after_header_and_follow_multiline_cells(tmp_path):
    path = write_text(tmp_path / "x.csv", 'task_id,task_type,arrival_s,duration_s\n'
                      '"two\nlines",ocr,0,1\n\nthird,ocr,1,1\n')
    trace = load_trace(path)
    assert [t.line for t in trace.tasks] == [2, 5]
    assert trace.tasks[0].task_id == "two\nlines"


def test_defaults_task_id_from_stem_and_line(tmp_path):
    path = write_text(tmp_path / "day1.jsonl.gz", "")
    with gzip.open(path, "wt") as fh:
        fh.write('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1}\n\n'
                 '{"task_type": "ocr", "arrival_s": 1, "duration_s": 2}\n')
    assert [t.task_id for t in load_trace(path).tasks] == ["day1:1", "day1:3"]


@pytest.mark.parametrize("cell,expected", [("true", True), ("FALSE", False), ("1", True),
                                           ("0", False), ("yes", True), ("no", False),
                                           ("", False)])
def test_csv_crashed_values(tmp_path, cell, expected):
    path = write_text(tmp_path / "c.csv",
                      f"task_type,arrival_s,duration_s,crashed,node,gpu\nocr,0,1,{cell},,\n")
    task = load_trace(path).tasks[0]
    assert task.crashed is expected and task.node is None and task.gpu is None


def test_iso_timestamps_utc_offsets_and_naive(tmp_path):
    path = write_text(tmp_path / "ts.jsonl", "\n".join(json.dumps(r) for r in [
        {"task_type": "ocr", "timestamp": "2024-03-01T10:00:01.250+02:00", "duration_s": 1},
        {"task_type": "ocr", "timestamp": "2024-03-01T08:00:00Z", "duration_s": 1},
        {"task_type": "ocr", "timestamp": "2024-03-01 08:30:00", "duration_s": 1},  # naive = UTC
    ]))
    trace = load_trace(path)
    assert [t.arrival_s for t in trace.tasks] == [0.0, 1.25, 1800.0]
    assert trace.start_epoch == 1709280000.0  # 2024-03-01T08:00:00Z


def test_numpy_scalars_are_accepted_in_memory():
    trace = trace_from_rows([{"task_type": "ocr", "arrival_s": np.float64(1.5),
                              "duration_s": np.float32(2.0), "gpu": np.int64(1),
                              "crashed": np.bool_(True)}])
    task = trace.tasks[0]
    assert (task.gpu, task.duration_s, task.crashed) == (1, 2.0, True)
    assert type(task.gpu) is int


# --- errors --------------------------------------------------------------------------------------

BAD_JSONL = [
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 0}', "duration_s"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": -2}', "duration_s"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": "3"}', "duration_s"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1e999}', "duration_s"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": NaN}', "duration_s"),
    ('{"task_type": "ocr", "arrival_s": 0}', "duration_s"),
    ('{"task_type": "", "arrival_s": 0, "duration_s": 1}', "task_type"),
    ('{"arrival_s": 0, "duration_s": 1}', "task_type"),
    ('{"task_type": "ocr", "arrival_s": -1, "duration_s": 1}', "arrival_s"),
    ('{"task_type": "ocr", "arrival_s": true, "duration_s": 1}', "arrival_s"),
    ('{"task_type": "ocr", "duration_s": 1}', "arrival_s"),
    ('{"task_type": "ocr", "arrival_s": 0, "timestamp": "2024-01-01T00:00:00Z", '
     '"duration_s": 1}', "timestamp"),
    ('{"task_type": "ocr", "timestamp": "yesterday", "duration_s": 1}', "timestamp"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "gpu": -1}', "gpu"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "gpu": 1.5}', "gpu"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "gpu": true}', "gpu"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "crashed": "yes"}', "crashed"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "node": ""}', "node"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "task_id": 7}', "task_id"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1, "priority": 3}', "priority"),
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1', None),  # broken JSON
    ('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1} x', None),  # trailing data
    ('["ocr", 0, 1]', None),
]


@pytest.mark.parametrize("bad,field", BAD_JSONL)
def test_bad_jsonl_row_names_file_line_field(tmp_path, bad, field):
    good = '{"task_type": "ocr", "arrival_s": 0, "duration_s": 1}'
    path = write_text(tmp_path / "bad.jsonl", f"{good}\n\n{bad}\n{good}\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    # One place; a row can break two rules there (a bad timestamp also mixes time fields).
    assert set(where(info.value)) == {(str(path), 3, field)}


BAD_CSV = [
    ("ocr,0,abc,,", 3, "duration_s"),
    ("ocr,0,inf,,", 3, "duration_s"),
    ("ocr,0,nan,,", 3, "duration_s"),
    ("ocr,0,,,", 3, "duration_s"),
    (",0,1,,", 3, "task_type"),
    ("ocr,,1,,", 3, "arrival_s"),
    ("ocr,-0.5,1,,", 3, "arrival_s"),
    ("ocr,0,1,1.5,", 3, "gpu"),
    ("ocr,0,1,-1,", 3, "gpu"),
    ("ocr,0,1,0,maybe", 3, "crashed"),
    ("ocr,0,1,0", 3, "crashed"),         # too few cells: the first missing column
    ("ocr,0,1,0,true,extra", 3, "column 6"),
]


@pytest.mark.parametrize("bad,line,field", BAD_CSV)
def test_bad_csv_row_names_file_line_field(tmp_path, bad, line, field):
    path = write_text(tmp_path / "bad.csv",
                      f"task_type,arrival_s,duration_s,gpu,crashed\nocr,0,1,,\n{bad}\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert where(info.value) == [(str(path), line, field)]


def test_csv_header_problems_are_line_1(tmp_path):
    path = write_text(tmp_path / "h.csv",
                      "task_type,arrival_s,duration_s,prio,queue\nocr,0,1,2,q\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert where(info.value) == [(str(path), 1, "prio"), (str(path), 1, "queue")]
    path = write_text(tmp_path / "d.csv", "task_type,arrival_s,duration_s,task_type\nocr,0,1,x\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert where(info.value) == [(str(path), 1, "task_type")]


def test_mixing_arrival_and_timestamp_names_the_line(tmp_path):
    path = write_text(tmp_path / "m.csv", "task_type,arrival_s,timestamp,duration_s\n"
                      "ocr,0,,1\nocr,2,,1\nocr,,2024-01-01T00:00:00Z,1\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert where(info.value) == [(str(path), 4, "timestamp")]
    assert "line 2 uses arrival_s" in info.value.message


def test_duplicate_task_id_names_both_lines(tmp_path):
    path = write_text(tmp_path / "dup.csv", "task_id,task_type,arrival_s,duration_s\n"
                      "x,ocr,0,1\ny,ocr,1,1\nx,ocr,2,1\n")
    with pytest.raises(InputError) as info:
        load_trace(path)
    assert where(info.value) == [(str(path), 4, "task_id")]
    assert "first on line 2" in info.value.message


def test_all_bad_rows_are_reported_in_one_pass_and_capped(tmp_path):
    rows = [{"task_type": "ocr", "arrival_s": i, "duration_s": -1} for i in range(200)]
    with pytest.raises(InputErrors) as info:
        trace_from_rows(rows, source="many")
    errs = info.value.errors
    assert len(errs) == MAX_REPORTED_ERRORS + 1
    assert [e.line for e in errs[:3]] == [1, 2, 3] and errs[0].field == "duration_s"
    assert "150 more errors" in errs[-1].message


@pytest.mark.parametrize("name,content", [("e.jsonl", ""), ("e.jsonl", "\n  \n"),
                                          ("e.csv", "task_type,arrival_s,duration_s\n")])
def test_empty_trace_is_an_error(tmp_path, name, content):
    path = write_text(tmp_path / name, content)
    with pytest.raises(InputError, match="empty trace") as info:
        load_trace(path)
    assert info.value.file == str(path)


def test_empty_csv_file_has_no_header(tmp_path):
    path = write_text(tmp_path / "nothing.csv", "")
    with pytest.raises(InputError, match="no CSV header") as info:
        load_trace(path)
    assert (info.value.file, info.value.line) == (str(path), 1)


def test_unknown_suffix_and_missing_file(tmp_path):
    with pytest.raises(InputError, match="unknown trace format"):
        load_trace(tmp_path / "t.txt")
    with pytest.raises(InputError, match="no such file") as info:
        load_trace(tmp_path / "absent.jsonl")
    assert info.value.file == str(tmp_path / "absent.jsonl")
    with pytest.raises(InputError, match="unknown trace format"):
        write_trace(trace_from_rows(ROWS), tmp_path / "t.parquet")
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_temp_file(tmp_path, monkeypatch):
    (tmp_path / "dir.jsonl").mkdir()  # a directory is refused before anything is written
    with pytest.raises(InputError, match="is a directory") as info:
        write_trace(trace_from_rows(ROWS), tmp_path / "dir.jsonl")
    assert info.value.file == str(tmp_path / "dir.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.jsonl"]

    # A failure after the checks (disk full, the folder removed meanwhile): monkeypatched, as
    # no real file system fails on cue; the temp file must go and the error name the path.
    def full(src, dst):
        raise OSError(28, "No space left on device")
    monkeypatch.setattr("gpusim.output.os.replace", full)
    with pytest.raises(InputError, match="No space left on device"):
        write_trace(trace_from_rows(ROWS), tmp_path / "t.jsonl")
    assert [p.name for p in tmp_path.iterdir()] == ["dir.jsonl"]


def test_a_large_file_loads_every_row_exactly(tmp_path):
    """100k rows: every row arrives, in order, with its own fields (loading speed is measured by
    the benchmarks under bench/, not asserted in a test). Deterministic: a fixed-seed file."""
    path = tmp_path / "big.jsonl"
    rng = np.random.default_rng(1)
    arrivals = np.cumsum(rng.exponential(1.0, 100_000))
    with open(path, "w") as fh:
        for i, a in enumerate(arrivals.tolist()):
            fh.write(json.dumps({"task_id": f"t{i}", "task_type": "ocr", "arrival_s": a,
                                 "duration_s": 1.5 + (i % 7), "gpu": i % 4}) + "\n")
    trace = load_trace(path)
    assert len(trace) == 100_000
    cols = trace.columns
    # times are relative to the first arrival; each row keeps its line number and id
    np.testing.assert_array_equal(cols.arrival_s, arrivals - arrivals[0])
    np.testing.assert_array_equal(cols.duration_s, 1.5 + np.arange(100_000) % 7)
    np.testing.assert_array_equal(cols.gpu, np.arange(100_000) % 4)
    assert [(t.task_id, t.line) for t in trace.tasks[::9_999]] == \
        [(f"t{i}", i + 1) for i in range(0, 100_000, 9_999)]


def test_given_lines_break_ties_even_out_of_order():
    rows = [{"task_type": "ocr", "arrival_s": 1.0, "duration_s": 1, "task_id": "late"},
            {"task_type": "ocr", "arrival_s": 1.0, "duration_s": 1, "task_id": "early"}]
    trace = trace_from_rows(rows, "log.csv", lines=[9, 4])
    assert [(t.task_id, t.line) for t in trace.tasks] == [("early", 4), ("late", 9)]
