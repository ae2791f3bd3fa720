"""Shared by the round-trip tests of `trace record` and `trace import-yivideo-logs`: the known
trace, its config and time scale, how a replay's records pair with imported rows, and the
tolerances (not a test module)."""

from __future__ import annotations

from typing import Any

import numpy as np

from gpusim.config import GpuLockConfig

F = 20.0  # the replay's time scale
# Event-driven (YiVideo's default), waits long enough for wake-ups, short enough for a few
# timeouts; at F = 20 the smallest poll sleep is 0.5 * 1.5 * 0.8 / 20 = 30 ms of wall time.
EVENT = GpuLockConfig(poll_interval=0.5, max_wait_time=8, lock_timeout=60, max_poll_interval=2,
                      use_event_driven=True, fallback_timeout=3)
POLLING = EVENT.model_copy(update={"use_event_driven": False})
# Two types on one key; arrivals at least 0.5 trace s (25 ms wall) apart.
ROWS = ([dict(task_id=f"t{i}", task_type=("ocr" if i % 2 else "asr"), arrival_s=1.0 * i,
              duration_s=3.0) for i in range(7)]
        + [dict(task_id="short", task_type="ocr", arrival_s=2.5, duration_s=1.0),
           dict(task_id="later", task_type="asr", arrival_s=16.0, duration_s=0.5)])

# Tolerances, wall seconds. The imported time and the replay's own differ by what lies between
# the replay's clock reading and the event the importer sees (the command reaching Redis, the
# log line being written: ~0.1 ms, plus 1 ms per truncated asctime for logs) and by thread
# wake-up delays in between. Those delays are the replay's own timing noise, which it measures
# (start lateness, sleep and hold overshoot): so the bounds are the instrument's resolution plus
# that noise. Median: 3 ms + the worst p95 noise (measured median differences 0.03-1.2 ms on an
# idle 2-core VM, 1-3 ms with two CPU hogs, when the noise p95 was 3-17 ms). Max: 20 ms + twice
# the worst noise (measured max 2.6 ms idle, 8.9 ms with hogs).
BASE_MEDIAN_S, BASE_MAX_S = 0.003, 0.020


def tolerances(lateness: dict[str, float]) -> tuple[float, float]:
    p95 = max(lateness[k] for k in ("start_p95_s", "sleep_overshoot_p95_s",
                                    "hold_overshoot_p95_s"))
    top = max(lateness[k] for k in ("start_max_s", "sleep_overshoot_max_s",
                                    "hold_overshoot_max_s"))
    return BASE_MEDIAN_S + max(0.0, p95), BASE_MAX_S + 2 * max(0.0, top)


def pair(records: list[Any], rows: list[dict[str, Any]]) -> list[tuple[Any, dict[str, Any]]]:
    """Each replay record with the row of its type (or of unknown type) whose arrival, counted
    from each side's first arrival, is nearest; every row used once."""
    assert len(records) == len(rows), (len(records), len(rows))
    r0 = min(r.slot_s for r in records)
    a0 = min(row["arrival_s"] for row in rows)
    free = list(rows)
    out = []
    for rec in sorted(records, key=lambda r: r.slot_s):
        fits = [row for row in free if row["task_type"] in (rec.task_type, "unknown")]
        assert fits, rec
        best = min(fits, key=lambda row: abs((row["arrival_s"] - a0) / F - (rec.slot_s - r0)))
        free.remove(best)
        out.append((rec, best))
    return out


def arrival_error(rec: Any, row: dict[str, Any], records: list[Any],
                  rows: list[dict[str, Any]]) -> float:
    r0 = min(r.slot_s for r in records)
    a0 = min(x["arrival_s"] for x in rows)
    return abs((row["arrival_s"] - a0) / F - (rec.slot_s - r0))


def check_close(name: str, diffs: list[float], tol: tuple[float, float]) -> None:
    assert diffs, name
    assert np.median(diffs) <= tol[0] and max(diffs) <= tol[1], (name, diffs, tol)
