"""The `max_wait_time_by_type` model option: a max wait per task type, in both engines.

Deterministic: fixed traces and seeds, exact outcomes (a bound on each wait, not a band), so
none of these fails by chance. That the two engines agree on random cases with the option on is
tests/test_differential.py's job (its strategy draws the option).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from gpusim.cli.app import app
from gpusim.cli.common import main
from gpusim.cluster import ClusterSpec, build_cluster, load_cluster
from gpusim.config import GpuLockConfig
from gpusim.errors import InputError
from gpusim.simulation import simulate
from gpusim.traces.format import trace_from_rows

ROOT = Path(__file__).resolve().parents[1]
CONFIG = ROOT / "examples" / "config.yml"

# One GPU: a 100 s holder, then four waiters, two of each type, all behind it.
ROWS = [{"task_type": "asr", "arrival_s": 0.0, "duration_s": 100.0}] + [
    {"task_type": t, "arrival_s": 1.0 + k, "duration_s": 1.0}
    for k, t in enumerate(["ocr", "asr", "ocr", "asr"])]
POLL = 0.5


def run(overrides: dict[str, float], *, engine: str, use_event_driven: bool,
        time_scale: float = 1.0):
    cluster = build_cluster(ClusterSpec(options={"max_wait_time_by_type": overrides}))
    cfg = GpuLockConfig(poll_interval=POLL, max_poll_interval=POLL, exponential_backoff=False,
                        use_event_driven=use_event_driven, fallback_timeout=30,
                        max_wait_time=300, lock_timeout=600)
    res = simulate(trace_from_rows(ROWS), cfg, cluster, seed=4, engine=engine,
                   time_scale=time_scale)
    return tuple(res.replications[0].records)


@pytest.mark.parametrize("event", [False, True], ids=["polling", "event-driven"])
def test_a_short_wait_for_one_type_times_out_that_type_only(event):
    base = run({}, engine="fast", use_event_driven=event)
    assert all(r.outcome != "timeout" for r in base)  # everyone waits out the 100 s holder
    for engine in ("reference", "fast"):
        recs = run({"ocr": 5.0}, engine=engine, use_event_driven=event)
        for r in recs:
            if r.task_type == "ocr":
                assert r.outcome == "timeout"
                # the loop stops once 5 s are spent; the last sleep (or event wait) may overrun
                # by at most one poll plus a round trip
                assert 5.0 <= r.wait_s <= 5.0 + POLL + 0.01
            else:
                assert r.outcome != "timeout"
        assert recs == run({"ocr": 5.0}, engine="reference", use_event_driven=event)
    # a type the trace does not have changes nothing
    assert run({"ffmpeg": 1.0}, engine="fast", use_event_driven=event) == base


def test_the_time_scale_divides_the_override():
    """A replay compressed 10x waits 10x less, like the node's max_wait_time (both engines,
    bit for bit)."""
    recs = run({"ocr": 5.0}, engine="fast", use_event_driven=False, time_scale=10.0)
    assert recs == run({"ocr": 5.0}, engine="reference", use_event_driven=False,
                       time_scale=10.0)
    ocr = [r for r in recs if r.task_type == "ocr"]
    assert ocr and all(r.outcome == "timeout" and 0.5 <= r.wait_s <= 0.5 + POLL / 10 + 0.01
                       for r in ocr)


@pytest.mark.parametrize("value,needle", [("0", "greater than 0"),
                                          ("1.0e+9", "86400"),
                                          ("fast", "valid number"),
                                          (".nan", "finite")])
def test_a_bad_value_names_file_line_and_field(tmp_path, value, needle):
    path = tmp_path / "cluster.yml"
    path.write_text(f"nodes: 1\noptions:\n  max_wait_time_by_type:\n    ocr: 60\n"
                    f"    asr: {value}\n")
    with pytest.raises(InputError) as info:
        load_cluster(path)
    err = info.value
    assert (err.file, err.line, err.field) == (str(path), 5,
                                               "options.max_wait_time_by_type.asr")
    assert needle in str(err)


def test_cluster_file_sets_it_and_the_cli_flag_refuses_it(tmp_path, capsys):
    path = tmp_path / "cluster.yml"
    path.write_text("options:\n  max_wait_time_by_type: {ocr: 60}\n")
    assert load_cluster(path).options.max_wait_time_by_type == {"ocr": 60.0}
    trace = tmp_path / "t.jsonl"
    trace.write_text('{"task_type": "ocr", "arrival_s": 0, "duration_s": 1}\n')
    for flag in ("max_wait_time_by_type=5", "max_wait_time_by_type"):
        with pytest.raises(SystemExit) as info:
            main(app, ["simulate", str(trace), "-c", str(CONFIG), "--option", flag])
        assert info.value.code == 2
        lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
        assert len(lines) == 1 and "Traceback" not in lines[0], lines
        assert "--option max_wait_time_by_type" in lines[0] and "cluster file" in lines[0]
