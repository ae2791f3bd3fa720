"""Observed outcomes in the trace format: read by every reader, written back, refused where the
model would need what the record does not hold (traces/README.md, gpusim/traces/observed.py)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from gpusim import simulate
from gpusim.config import GpuLockConfig, LockSettings, config_digest
from gpusim.errors import InputError
from gpusim.traces.format import load_trace, trace_from_rows, write_trace
from gpusim.traces.observed import ACQUIRED, NOT_GIVEN, TIMEOUT, fill_unknown_holds

DIGEST = config_digest(GpuLockConfig())
ROWS = [
    {"task_id": "a", "task_type": "ocr", "arrival_s": 0.0, "duration_s": 2.0, "wait_s": 0.0,
     "outcome": "acquired", "attempts": 1, "config_digest": DIGEST},
    {"task_id": "b", "task_type": "ocr", "arrival_s": 1.0, "wait_s": 300.5,
     "outcome": "timeout", "attempts": 37, "config_digest": DIGEST},
    {"task_id": "c", "task_type": "ocr", "arrival_s": 0.5, "duration_s": 4.0, "wait_s": 1.5,
     "outcome": "acquired", "attempts": 2},
    {"task_id": "d", "task_type": "asr", "arrival_s": 2.0, "duration_s": 9.0},
]


def test_rows_become_columns_in_task_order():
    tr = trace_from_rows(ROWS)
    obs = tr.observed
    assert tr.task_ids == ["a", "c", "b", "d"]  # sorted by arrival; outcomes follow their task
    assert obs.outcome.tolist() == [ACQUIRED, ACQUIRED, TIMEOUT, NOT_GIVEN]
    assert obs.wait_s[:3].tolist() == [0.0, 1.5, 300.5] and math.isnan(obs.wait_s[3])
    assert obs.attempts.tolist() == [1, 2, 37, -1]
    assert obs.config_digest == (DIGEST, None, DIGEST, None)
    assert math.isnan(tr.columns.duration_s[2])
    b = tr.task(2)
    assert (b.duration_s, b.outcome, b.wait_s, b.attempts) == (None, "timeout", 300.5, 37)
    assert tr.tasks[2] == b


def test_a_trace_without_outcomes_has_none():
    tr = trace_from_rows([{"task_type": "x", "arrival_s": 0.0, "duration_s": 1.0}])
    assert tr.observed is None
    assert tr.task(0).outcome is None


@pytest.mark.parametrize("suffix", [".jsonl", ".csv", ".csv.gz", ".jsonl.gz"])
def test_both_formats_round_trip(tmp_path, suffix):
    tr = trace_from_rows(ROWS, source="x")
    path = tmp_path / f"t{suffix}"
    write_trace(tr, path)
    back = load_trace(path)
    def fields(t):
        return (t.task_id, t.task_type, t.arrival_s, t.duration_s, t.wait_s, t.outcome,
                t.attempts, t.config_digest)
    assert [fields(t) for t in back.tasks] == [fields(t) for t in tr.tasks]
    assert back.observed == tr.observed
    # the columns the model reads are the same too (NaN where the hold is unknown)
    assert np.array_equal(back.columns.duration_s, tr.columns.duration_s, equal_nan=True)


@pytest.mark.parametrize("row, field, words", [
    ({"outcome": "lost"}, "outcome", "'acquired' or 'timeout'"),
    ({"wait_s": -1.0}, "wait_s", "greater than or equal to 0"),
    ({"attempts": 1.5}, "attempts", "integer"),
    ({"attempts": -2}, "attempts", "greater than or equal to 0"),
    ({"config_digest": ""}, "config_digest", "at least 1 character"),
])
def test_bad_observed_values_name_line_and_field(row, field, words):
    rows = [{"task_type": "x", "arrival_s": 0.0, "duration_s": 1.0},
            {"task_type": "x", "arrival_s": 1.0, "duration_s": 1.0, **row}]
    with pytest.raises(InputError) as e:
        trace_from_rows(rows, source="obs.jsonl")
    err = e.value.errors[0] if hasattr(e.value, "errors") else e.value
    assert (err.file, err.line, err.field) == ("obs.jsonl", 2, field)
    assert words in str(err)


def test_a_hold_may_be_left_out_only_by_a_task_that_gave_up(tmp_path):
    path = tmp_path / "t.csv"
    path.write_text("task_type,arrival_s,duration_s,outcome\n"
                    "x,0,1.5,acquired\n"
                    "x,1,,timeout\n"
                    "x,2,,acquired\n"
                    "x,3,,\n")
    with pytest.raises(InputError) as e:
        load_trace(path)
    text = str(e.value)
    assert f"{path}, line 4, field 'duration_s'" in text
    assert f"{path}, line 5, field 'duration_s'" in text
    assert "line 3" not in text


def test_the_model_refuses_an_unknown_hold_and_fills_it_only_when_asked():
    tr = trace_from_rows(ROWS, source="obs.jsonl")
    with pytest.raises(InputError) as e:
        simulate(tr, LockSettings())
    assert (e.value.file, e.value.line, e.value.field) == ("obs.jsonl", 2, "duration_s")
    filled, n = fill_unknown_holds(tr)
    assert n == 1
    # the median of the known ocr holds (2.0 and 4.0); nothing else changes
    assert filled.columns.duration_s.tolist() == [2.0, 4.0, 3.0, 9.0]
    assert filled.observed == tr.observed and filled.task_ids == tr.task_ids
    assert simulate(filled, LockSettings()).metrics["tasks"] == 4


def test_a_type_with_no_known_hold_cannot_be_filled():
    rows = [{"task_type": "x", "arrival_s": 0.0, "duration_s": 1.0},
            {"task_type": "y", "arrival_s": 1.0, "outcome": "timeout"}]
    with pytest.raises(InputError) as e:
        fill_unknown_holds(trace_from_rows(rows, source="s"))
    assert (e.value.line, e.value.field) == (2, "duration_s") and "'y'" in str(e.value)


def test_config_digest_names_the_values_not_their_spelling():
    a = GpuLockConfig(poll_interval=2, max_wait_time=1800, lock_timeout=3600)
    b = GpuLockConfig(lock_timeout=3600, poll_interval=2.0, max_wait_time=1800.0)
    assert config_digest(a) == config_digest(b) == config_digest(LockSettings(gpu_lock=a))
    assert config_digest(a).startswith("sha256:") and len(config_digest(a)) == 7 + 16
    for change in ({"poll_interval": 2.5}, {"exponential_backoff": False},
                   {"use_event_driven": False}, {"fallback_timeout": 31}):
        assert config_digest(a.model_copy(update=change)) != config_digest(a)
