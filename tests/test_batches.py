"""Workload intervals: per-batch totals, the batch-means ratio interval, and the advisor's use.

Deterministic: fixed data and fixed seeds; every assertion is an identity that holds for any
input (totals add up, an interval reduces to the textbook one in its special case), so nothing
here can fail by chance.
"""

from __future__ import annotations

import numpy as np
import pytest

from gpusim import (GpuLockConfig, LockSettings, Thresholds, default_cluster, mean_ci, ratio_ci,
                    simulate, task_batches, trace_from_rows)
from gpusim.records import OUTCOMES, Outcome

from advisor.evaluate import Evaluator, with_workload_intervals


def test_ratio_ci_with_equal_denominators_is_the_t_interval_of_the_ratios():
    num = np.array([3.0, 5.0, 4.0, 9.0, 6.0])
    den = np.full(5, 10.0)
    r, ci = ratio_ci(num, den)
    m, ci_t = mean_ci(num / den)
    assert r == pytest.approx(m) and ci == pytest.approx(ci_t)


def test_ratio_ci_edge_cases():
    r, ci = ratio_ci([1.0, 2.0], [0.0, 0.0])
    assert np.isnan(r) and ci is None
    assert ratio_ci([2.0], [4.0]) == (0.5, None)
    r, ci = ratio_ci([2.0, 4.0], [4.0, 8.0])  # the same ratio in every batch: no spread
    assert r == 0.5 and ci == [0.5, 0.5]


def short_trace(n=400):
    rng = np.random.default_rng(5)
    return trace_from_rows([{"task_id": f"t{i}", "task_type": "ocr", "arrival_s": float(a),
                             "duration_s": 3.0}
                            for i, a in enumerate(np.cumsum(rng.exponential(5.0, n)))])


def test_batch_totals_add_up_to_the_run():
    res = simulate(short_trace(), GpuLockConfig(max_wait_time=20), seed=1)
    recs = res.replications[0].records
    b = task_batches(recs, 7)
    sizes = b["tasks"]
    assert sizes.sum() == len(recs) and sizes.max() - sizes.min() <= 1
    outcomes = [OUTCOMES.index(r.outcome) for r in recs]
    assert b["timeouts"].sum() == outcomes.count(OUTCOMES.index(Outcome.TIMEOUT))
    assert b["wait_s"].sum() == pytest.approx(sum(r.wait_s for r in recs))
    with pytest.raises(ValueError):
        task_batches(recs, 0)


def test_workload_interval_is_wider_where_replications_are_all_the_same_run():
    """Backoff off, polling: no random draw, so every replication is the same run and the
    replication interval has zero width; the batch interval still carries the workload."""
    trace = short_trace()
    slow = LockSettings(gpu_lock=GpuLockConfig(poll_interval=10, max_poll_interval=10,
                                               exponential_backoff=False,
                                               use_event_driven=False))
    fast = GpuLockConfig(poll_interval=0.5, max_poll_interval=0.5, exponential_backoff=False,
                         use_event_driven=False)
    ev = Evaluator(trace, default_cluster(), slow, Thresholds())
    plain = ev.evaluate(fast, seed=0, replications=3)
    wide = ev.evaluate(fast, seed=0, replications=3, workload_batches=10)
    red_plain = plain.criterion("wait_mean_reduction")
    red_wide = wide.criterion("wait_mean_reduction")
    assert red_plain.ci95[0] == pytest.approx(red_plain.ci95[1])   # zero width
    assert red_wide.ci95[1] - red_wide.ci95[0] > 0.01
    assert red_wide.ci95[0] <= red_plain.ci95[0] and red_wide.ci95[1] >= red_plain.ci95[1]
    assert red_wide.value == red_plain.value
    # the hull of the two intervals, by construction
    base = ev.baseline_result(0, 3)
    again = with_workload_intervals(base, plain.result, plain.criteria, batches=10)
    assert [c.ci95 for c in again] == [c.ci95 for c in wide.criteria]


def test_too_few_tasks_for_batches_leaves_the_intervals_alone():
    """30 tasks make one batch of 20 at most: no batch interval is claimed."""
    trace = short_trace(30)
    ev = Evaluator(trace, default_cluster(), LockSettings(), Thresholds())
    cfg = GpuLockConfig(poll_interval=0.2)
    plain = ev.evaluate(cfg, seed=0, replications=3)
    wide = ev.evaluate(cfg, seed=0, replications=3, workload_batches=10)
    assert [c.ci95 for c in wide.criteria] == [c.ci95 for c in plain.criteria]
