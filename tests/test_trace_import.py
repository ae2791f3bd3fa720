"""CSV import: public-cluster-shaped logs in, valid traces out, bad rows named by line/column."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from gpusim.cli.trace import trace_app
from gpusim.errors import InputError, InputErrors
from gpusim.traces.format import load_trace
from gpusim.traces.csv_import import RowFilter, import_csv, parse_mapping

runner = CliRunner()

# Shaped like the Philly trace (jobs with wall-clock start/end, a status and a virtual cluster).
PHILLY = """\
job_name,user,vc,status,start_time,end_time,gpu_type,machine,gpu_id
j1,alice,ocr,Pass,2017-10-03 02:09:22,2017-10-03 02:09:24,P100,m1,0
j2,bob,asr,Pass,2017-10-03 02:10:00,2017-10-03 02:18:30,P100,m2,1
j3,bob,asr,Failed,2017-10-03 02:11:00,2017-10-03 02:11:05,P100,m2,1
j4,carol,cpu,Pass,2017-10-03 02:12:00,2017-10-03 02:20:00,,m3,
j5,alice,video,Pass,2017-10-03 02:09:22,2017-10-03 02:10:07,V100,m1,3
j6,dave,ocr,Killed,2017-10-03 02:13:00,,P100,m1,0
"""

# Shaped like Alibaba PAI 2020 (epoch seconds, task names, instance counts).
PAI = """\
job_name,task_name,inst_num,status,start_time,end_time,plan_gpu,gpu_type
a1,worker,1,Terminated,1590000000,1590000002.5,100,T4
a2,ps,1,Terminated,1590000001,1590000061,0,MISC
a3,worker,1,Running,1590000003,,100,T4
"""


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def philly(tmp_path, **overrides):
    kwargs = dict(arrival_col="start_time", end_col="end_time", type_col="vc",
                  time_format="%Y-%m-%d %H:%M:%S", id_col="job_name", node_col="machine",
                  gpu_col="gpu_id", filters=["status=Pass", "vc!=cpu"],
                  type_map={"ocr": "paddleocr", "asr": "faster_whisper", "video": "ffmpeg"})
    kwargs.update(overrides)
    return import_csv(write(tmp_path, "philly.csv", PHILLY), **kwargs)


def test_philly_like_import(tmp_path):
    result = philly(tmp_path)
    assert result.kept == 3
    assert result.filtered == {"status=Pass": 2, "vc!=cpu": 1}
    assert result.summary() == "kept 3, filtered 2 by status=Pass, 1 by vc!=cpu"
    tasks = {t.task_id: t for t in result.trace.tasks}
    assert set(tasks) == {"j1", "j2", "j5"}
    assert (tasks["j1"].task_type, tasks["j1"].duration_s, tasks["j1"].arrival_s) == \
           ("paddleocr", 2.0, 0.0)
    assert (tasks["j2"].task_type, tasks["j2"].duration_s, tasks["j2"].arrival_s) == \
           ("faster_whisper", 510.0, 38.0)
    assert (tasks["j5"].node, tasks["j5"].gpu, tasks["j5"].line) == ("m1", 3, 6)
    # j1 and j5 arrive together: the earlier source line goes first.
    assert [t.task_id for t in result.trace.tasks] == ["j1", "j5", "j2"]
    assert result.trace.start_epoch == 1506996562.0  # 2017-10-03T02:09:22Z (naive = UTC)


@pytest.mark.parametrize("suffix", [".jsonl", ".csv"])
def test_cli_import_writes_a_loadable_trace(tmp_path, suffix):
    src = write(tmp_path, "philly.csv", PHILLY)
    out = tmp_path / f"out{suffix}"
    result = runner.invoke(trace_app, [
        "import", str(src), "--out", str(out), "--arrival-col", "start_time",
        "--time-format", "%Y-%m-%d %H:%M:%S", "--end-col", "end_time", "--type-col", "vc",
        "--id-col", "job_name", "--filter", "status=Pass", "--filter", "vc!=cpu",
        "--type-map", "ocr=paddleocr", "--type-map", "nope=x"])
    assert result.exit_code == 0, result.output
    assert "kept 3, filtered 2 by status=Pass, 1 by vc!=cpu" in result.output
    assert "never matched: nope" in result.output
    trace = load_trace(out)
    assert [(t.task_id, t.task_type, t.arrival_s, t.duration_s) for t in trace.tasks] == [
        ("j1", "paddleocr", 0.0, 2.0), ("j5", "video", 0.0, 45.0), ("j2", "asr", 38.0, 510.0)]
    assert trace.start_epoch == 1506996562.0  # absolute time survives as ISO timestamps


def test_pai_like_epoch_seconds_and_generated_ids(tmp_path):
    src = write(tmp_path, "pai_job.csv", PAI)
    result = import_csv(src, arrival_col="start_time", end_col="end_time", type_col="task_name",
                        time_format="epoch", filters=["status=Terminated"])
    assert result.filtered == {"status=Terminated": 1}
    assert [(t.task_id, t.task_type, t.arrival_s, t.duration_s) for t in result.trace.tasks] \
        == [("pai_job:2", "worker", 0.0, 2.5), ("pai_job:3", "ps", 1.0, 60.0)]
    assert result.trace.start_epoch == 1590000000.0


@pytest.mark.parametrize("fmt,start,end", [("epoch_ms", "1590000000000", "1590000002500"),
                                           ("iso", "2020-05-20T18:40:00Z",
                                            "2020-05-20T20:40:02.5+02:00"),
                                           ("seconds", "10", "12.5")])
def test_time_formats(tmp_path, fmt, start, end):
    src = write(tmp_path, "t.csv", f"kind,s,e\nocr,{start},{end}\n")
    result = import_csv(src, arrival_col="s", end_col="e", type_col="kind", time_format=fmt)
    assert result.trace.tasks[0].duration_s == 2.5
    key = "arrival_s" if fmt == "seconds" else "timestamp"
    assert key in result.rows[0]


@pytest.mark.parametrize("unit,expected", [("s", 1500.0), ("ms", 1.5), ("min", 90000.0)])
def test_duration_column_units(tmp_path, unit, expected):
    src = write(tmp_path, "d.csv", "kind,t,dur\nocr,0,1500\n")
    result = import_csv(src, arrival_col="t", duration_col="dur", duration_unit=unit,
                        type_col="kind", time_format="seconds")
    assert result.trace.tasks[0].duration_s == expected


# --- errors name file, line and the SOURCE column ----------------------------------------------

BAD_ROWS = [
    ("ocr,2017-10-03 02:00:10,2017-10-03 02:00:00,a", "end_time"),   # end before start
    ("ocr,2017-10-03 02:00:10,2017-10-03 02:00:10,a", "end_time"),   # zero length
    ("ocr,03/10/2017,2017-10-03 02:00:10,a", "start_time"),          # wrong format
    ("ocr,2017-10-03 02:00:10,,a", "end_time"),                      # empty end
    (",2017-10-03 02:00:00,2017-10-03 02:00:10,a", "kind"),          # empty type
    ("ocr,2017-10-03 02:00:00,2017-10-03 02:00:10,", "id"),          # empty id
    ("ocr,2017-10-03 02:00:00,2017-10-03 02:00:10,first", "id"),     # duplicate id
]


@pytest.mark.parametrize("bad,column", BAD_ROWS)
def test_bad_row_names_file_line_column(tmp_path, bad, column):
    src = write(tmp_path, "log.csv", "kind,start_time,end_time,id\n"
                "ocr,2017-10-03 02:00:00,2017-10-03 02:00:01,first\n" + bad + "\n")
    with pytest.raises(InputError) as info:
        import_csv(src, arrival_col="start_time", end_col="end_time", type_col="kind",
                   id_col="id", time_format="%Y-%m-%d %H:%M:%S")
    errs = info.value.errors if isinstance(info.value, InputErrors) else [info.value]
    assert [(e.file, e.line, e.field) for e in errs] == [(str(src), 3, column)]


@pytest.mark.parametrize("bad,column", [("x,0,-5,1", "dur"), ("x,0,abc,1", "dur"),
                                        ("x,0,nan,1", "dur"), ("x,-1,5,1", "t"),
                                        ("x,0,5,1.5", "gpu"), ("x,0,5,-1", "gpu")])
def test_bad_numbers(tmp_path, bad, column):
    src = write(tmp_path, "n.csv", f"kind,t,dur,gpu\n{bad}\n")
    with pytest.raises(InputError) as info:
        import_csv(src, arrival_col="t", duration_col="dur", type_col="kind", gpu_col="gpu",
                   time_format="seconds")
    assert (info.value.file, info.value.line, info.value.field) == (str(src), 2, column)


def test_all_bad_rows_reported_together(tmp_path):
    src = write(tmp_path, "m.csv", "kind,t,dur\nx,0,-1\nx,zz,1\n,0,1\n")
    with pytest.raises(InputErrors) as info:
        import_csv(src, arrival_col="t", duration_col="dur", type_col="kind",
                   time_format="seconds")
    assert [(e.line, e.field) for e in info.value.errors] == [(2, "dur"), (3, "t"), (4, "kind")]


def test_missing_columns_are_header_errors(tmp_path):
    src = write(tmp_path, "h.csv", "kind,t,dur\nx,0,1\n")
    with pytest.raises(InputErrors) as info:
        import_csv(src, arrival_col="start", duration_col="dur", type_col="kind",
                   time_format="seconds", filters=["status=ok"])
    assert [(e.file, e.line, e.field) for e in info.value.errors] == [
        (str(src), 1, "start"), (str(src), 1, "status")]


def test_ragged_row_is_an_error_not_dropped(tmp_path):
    src = write(tmp_path, "r.csv", "kind,t,dur\nx,0,1\nx,1\n")
    with pytest.raises(InputError) as info:
        import_csv(src, arrival_col="t", duration_col="dur", type_col="kind",
                   time_format="seconds")
    assert (info.value.line, info.value.field) == (3, "dur")


@pytest.mark.parametrize("kwargs,field", [
    ({"duration_col": "dur", "end_col": "t"}, "duration-col"),
    ({}, "duration-col"),
    ({"duration_col": "dur", "duration_unit": "h"}, "duration-unit"),
    ({"duration_col": "dur", "time_format": "fortnights"}, "time-format"),
    ({"duration_col": "dur", "filters": ["status"]}, "filter"),
])
def test_bad_options(tmp_path, kwargs, field):
    src = write(tmp_path, "o.csv", "kind,t,dur\nx,0,1\n")
    kwargs = {"time_format": "seconds", **kwargs}
    with pytest.raises(InputError) as info:
        import_csv(src, arrival_col="t", type_col="kind", **kwargs)
    assert info.value.field == field


def test_everything_filtered_is_an_error(tmp_path):
    src = write(tmp_path, "f.csv", "kind,t,dur,status\nx,0,1,bad\n")
    with pytest.raises(InputError, match="no rows left.*filtered 1 by status=ok"):
        import_csv(src, arrival_col="t", duration_col="dur", type_col="kind",
                   time_format="seconds", filters=["status=ok"])


def test_filter_and_mapping_parsers():
    assert RowFilter.parse("queue != cpu") == RowFilter("queue", "cpu", negate=True)
    assert RowFilter.parse("status=") == RowFilter("status", "")  # keep rows with empty status
    assert str(RowFilter.parse("a=b=c")) == "a=b=c"
    assert parse_mapping(["a=b", "c = d"], "type-map") == {"a": "b", "c": "d"}
    for bad in (["a"], ["=b"], ["a=b", "a=c"]):
        with pytest.raises(InputError) as info:
            parse_mapping(bad, "type-map")
        assert info.value.field == "type-map"


def test_cli_import_bad_row_exits_2_and_writes_nothing(tmp_path):
    src = write(tmp_path, "philly.csv", PHILLY)
    out = tmp_path / "out.jsonl"
    # Without the status filter j6 (no end_time) is an error, not a silently dropped row.
    result = runner.invoke(trace_app, [
        "import", str(src), "--out", str(out), "--arrival-col", "start_time",
        "--time-format", "%Y-%m-%d %H:%M:%S", "--end-col", "end_time", "--type-col", "vc"])
    assert result.exit_code == 2
    assert f"{src}, line 7, field 'end_time': empty cell" in result.output
    assert not out.exists()


@pytest.mark.parametrize("args", [
    ["--out", "{tmp}/o.txt", "--arrival-col", "t", "--duration-col", "dur", "--type-col", "kind"],
    ["--out", "{tmp}/o.jsonl", "--arrival-col", "t", "--type-col", "kind"],
    ["--out", "{tmp}/o.jsonl", "--arrival-col", "t", "--duration-col", "dur"],  # typer: missing
    ["--out", "{tmp}/o.jsonl", "--arrival-col", "t", "--duration-col", "dur", "--type-col",
     "kind", "--type-map", "broken"],
    ["--out", "{tmp}/no/such/dir/o.jsonl", "--arrival-col", "t", "--duration-col", "dur",
     "--type-col", "kind", "--time-format", "seconds"],
])
def test_cli_import_bad_options_exit_2(tmp_path, args):
    src = write(tmp_path, "o.csv", "kind,t,dur\nx,0,1\n")
    result = runner.invoke(trace_app, ["import", str(src),
                                       *[a.format(tmp=tmp_path) for a in args]])
    assert result.exit_code == 2, result.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.csv"]


def test_cli_names_the_units_the_importer_takes():
    from gpusim.cli.trace import DURATION_UNIT_NAMES
    from gpusim.traces.csv_import import DURATION_UNITS

    assert DURATION_UNIT_NAMES == tuple(DURATION_UNITS)
