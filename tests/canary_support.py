"""Fixtures shared by the canary tests: a minimal recommended rec.json, synthetic 2-node traces.

A real `gpusim tune` on the bundled 2-node sample takes 30 s to 2 min on the 2-core machine, so
the tests write the smallest rec.json the schema accepts (validated by `Recommendation`
itself): the inputs the plan reads (trace path and digest, baseline, cluster, thresholds) and a
recommended gpu_lock block. Nothing in it is a figure the tests judge.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from gpusim import Thresholds, load_cluster, load_trace
from gpusim.simulation import cluster_summary, trace_digest

from advisor.recommendation import Recommendation

ROOT = Path(__file__).resolve().parents[1]

PRODUCTION = {"poll_interval": 2.0, "max_wait_time": 1800.0, "lock_timeout": 3600,
              "exponential_backoff": True, "max_poll_interval": 10.0,
              "use_event_driven": True, "fallback_timeout": 30.0}
SPEC_CANDIDATE = dict(PRODUCTION, poll_interval=0.5, max_wait_time=300.0, lock_timeout=600,
                      max_poll_interval=5.0)


def write_rec(path: Path, trace_path: Path, cluster_path: Path, baseline: dict[str, Any],
              candidate: dict[str, Any], status: str = "recommended") -> Path:
    tr = load_trace(trace_path)
    cols = tr.columns
    doc = {
        "schema": "gpusim.recommendation/1", "created_at": "2026-11-28T00:00:00+00:00",
        "status": status,
        "inputs": {
            "trace": {"path": str(trace_path), "sha256": trace_digest(tr), "tasks": len(tr),
                      "span_s": float(cols.arrival_s[-1] - cols.arrival_s[0]),
                      "task_types": sorted(cols.types)},
            "baseline": {"source": "test baseline", "gpu_lock": baseline},
            "cluster": cluster_summary(load_cluster(cluster_path)),
            "thresholds": Thresholds().model_dump(), "space": {},
            "search": {"sampler": "none", "seed": 0, "trials": 0, "replications": 1,
                       "simulation_seed": 0, "check_seed": 1, "check_replications": 2,
                       "check_candidates": 1, "selection_rule": "test fixture"},
            "versions": {"gpusim": "test", "optuna": "test", "numpy": "test",
                         "python": "test"}},
        "recommended": ({"gpu_lock": candidate, "yaml": "gpu_lock: {}\n", "trial": None,
                         "changed": sorted(k for k in candidate if candidate[k] != baseline[k])}
                        if status == "recommended" else None),
        "nearest": None,
        "binding_gates": [] if status == "recommended" else ["timeout_rate"],
        "metrics": {}, "gates": [],
        "headroom": {"overall": {"tasks": 0.0, "wait_mean_s": None, "held_mean_s": None,
                                 "free_mean_s": None, "free_share": None,
                                 "timeout_rate": None},
                     "by_task_type": {}, "best_wait_reduction_within_timeout_gate": None,
                     "least_timeout_rate_at_wait_gate": None},
        "pareto_front": [], "candidates": [], "importances": {},
        "explanation": ["test fixture"], "wait_curves": [], "what_if": {},
        "study": {"storage": "none", "name": "fixture", "trials_by_state": {}},
    }
    rec = Recommendation.model_validate(doc)     # the schema accepts it
    path.write_text(rec.dumps())
    return path


def two_node_cluster(path: Path, gpus: int = 1) -> Path:
    path.write_text(f"nodes: [{{name: n0}}, {{name: n1}}]\ngpus_per_node: {gpus}\n"
                    "workers_per_service: 64\n")
    return path


def light_rows(n_per_node: int, *, seed: int, gap_s: float = 4.0,
               hold_s: float = 2.0) -> list[dict[str, Any]]:
    """Poisson arrivals on each of nodes n0 and n1, short holds: load hold/gap (0.5) per GPU,
    so about half the tasks queue for the lock and a faster poll shows in their waits."""
    rng = np.random.default_rng(seed)
    rows = []
    for node in ("n0", "n1"):
        t = 0.0
        for i in range(n_per_node):
            rows.append({"task_id": f"{node}-{i}", "task_type": "paddleocr", "arrival_s": t,
                         "duration_s": hold_s, "node": node, "gpu": 0})
            t += float(rng.exponential(gap_s))
    return rows


def burst_rows(bursts: int, *, size: int = 3, hold_s: float = 200.0,
               every_s: float = 700.0) -> list[dict[str, Any]]:
    """Bursts of `size` tasks of `hold_s` seconds at once on each node: the third task of a
    burst waits 2 x 200 = 400 s > the spec candidate's max_wait_time (300 s), so a third of
    the tasks time out under it and none under today's 1800 s."""
    rows = []
    for node in ("n0", "n1"):
        for b in range(bursts):
            for j in range(size):
                rows.append({"task_id": f"{node}-{b}-{j}", "task_type": "faster_whisper",
                             "arrival_s": b * every_s, "duration_s": hold_s, "node": node,
                             "gpu": 0})
    return rows


def read_json(path: Path) -> dict[str, Any]:
    return json.loads(Path(path).read_text())
