"""The spec's acceptance gates (GPU_LOCK_CONFIG_001): thresholds, overridable from YAML, and the
judge of a baseline against a candidate on one trace.

Both configs replay the same trace with the same seeds; each task's jitter comes from its own
stream, so replication r of the baseline and replication r of the candidate see the same random
numbers (common random numbers). The intervals are therefore on paired differences.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpusim.errors import InputError, InputErrors
from gpusim.output import jsonable
from gpusim.stats import mean_ci
from gpusim.yamlio import key_lines, line_of, read_yaml

if TYPE_CHECKING:
    from gpusim.simulation import SimulationResult

COMPARE_SCHEMA = "gpusim.compare/1"


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    success_rate_min: float = Field(0.95, ge=0, le=1)          # success rate >= 95%
    wait_reduction_min: float = Field(0.30, le=1)              # average lock wait -30%
    redis_cpu_increase_max: float = Field(0.50, ge=-1)         # Redis CPU increase < 50%
    timeout_rate_max: float = Field(0.05, ge=0, le=1)          # timeout rate < 5%
    # Safety: a lock that expires under a running task lets a second task onto the GPU.
    lock_expired_per_acquisition_max: float = Field(0.001, ge=0, le=1)  # <= 1 per 1,000
    double_occupancy_s_max: float = Field(0.0, ge=0)           # seconds two tasks share a GPU
    # The canary gate of the spec (GPU_LOCK_CONFIG_002): Redis CPU < 80% in the busiest minute.
    redis_cpu_peak_max: float = Field(0.80, gt=0)


def load_thresholds(path: str | Path | None) -> Thresholds:
    if path is None:
        return Thresholds()
    data, text = read_yaml(path, "thresholds file")
    data = data or {}
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"] or {}
    if not isinstance(data, dict):
        raise InputError("expected a YAML mapping", file=str(path), line=1)
    lines = key_lines(text)
    try:
        return Thresholds(**data)
    except ValidationError as err:
        raise InputErrors([
            InputError(f"{e['msg']} (got {e.get('input')!r})", file=str(path),
                       line=line_of(lines, tuple(str(p) for p in e["loc"]))
                       or line_of(lines, ("thresholds",) + tuple(str(p) for p in e["loc"])),
                       field=".".join(str(p) for p in e["loc"]))
            for e in err.errors()]) from None


@dataclass(frozen=True)
class Criterion:
    name: str
    value: float | None
    ci95: list[float] | None
    op: str              # ">=", "<" or "<="
    threshold: float
    passed: bool

    @property
    def margin(self) -> float | None:
        """The value's distance beyond the threshold (> 0: on the passing side)."""
        return None if self.value is None else -self.shortfall(self.value)

    def shortfall(self, at: float) -> float:
        """How far `at` lies on the failing side of the threshold (<= 0: it does not)."""
        return self.threshold - at if self.op == ">=" else at - self.threshold

    @property
    def conservative(self) -> float | None:
        """The end of the 95% interval nearest to failing (the value itself without one)."""
        if self.value is None:
            return None
        if self.ci95 is None:
            return self.value
        return self.ci95[0] if self.op == ">=" else self.ci95[1]

    @property
    def passed_conservatively(self) -> bool:
        """Passes even at the unfavourable end of its interval."""
        return self.conservative is not None and meets(self.conservative, self.op,
                                                       self.threshold)


def meets(value: float, op: str, threshold: float) -> bool:
    if op == ">=":
        return value >= threshold
    if op == "<":
        return value < threshold
    if op == "<=":
        return value <= threshold
    raise ValueError(f"unknown comparison {op!r}")


def _paired(base: SimulationResult, cand: SimulationResult,
            f: Callable[[dict, dict], float | None]) -> tuple[float | None, list[float] | None]:
    vals = [f(b.metrics, c.metrics) for b, c in zip(base.replications, cand.replications)]
    if any(v is None for v in vals):
        return None, None
    return mean_ci(vals)


def _ratio_change(key: str) -> Callable[[dict, dict], float | None]:
    def f(b: dict, c: dict) -> float | None:
        return None if not b[key] else c[key] / b[key] - 1.0
    return f


def _expired_per_acquisition(b: dict, c: dict) -> float:
    return c["lock_expired_while_held"] / c["acquired"] if c["acquired"] else 0.0


def judge(base: SimulationResult, cand: SimulationResult, th: Thresholds) -> list[Criterion]:
    """The spec's four gates, then lock safety and the canary's Redis CPU gate."""
    rows = []

    def add(name: str, value: float | None, ci: list[float] | None, op: str, thr: float):
        ok = value is not None and meets(value, op, thr)
        rows.append(Criterion(name, value, ci, op, thr, ok))

    v, ci = _paired(base, cand, lambda b, c: c["success_rate"])
    add("success_rate", v, ci, ">=", th.success_rate_min)
    change = _ratio_change("wait_mean_s")
    v, ci = _paired(base, cand, lambda b, c: None if change(b, c) is None else -change(b, c))
    add("wait_mean_reduction", v, ci, ">=", th.wait_reduction_min)
    v, ci = _paired(base, cand, _ratio_change("redis_cpu_utilization"))
    add("redis_cpu_increase", v, ci, "<", th.redis_cpu_increase_max)
    v, ci = _paired(base, cand, lambda b, c: c["timeout_rate"])
    add("timeout_rate", v, ci, "<", th.timeout_rate_max)
    v, ci = _paired(base, cand, _expired_per_acquisition)
    add("lock_expired_per_acquisition", v, ci, "<=", th.lock_expired_per_acquisition_max)
    v, ci = _paired(base, cand, lambda b, c: c["double_occupancy_s"])
    add("double_occupancy_s", v, ci, "<=", th.double_occupancy_s_max)
    v, ci = _paired(base, cand, lambda b, c: c["redis_cpu_utilization_peak_1m"])
    add("redis_cpu_peak_1m", v, ci, "<", th.redis_cpu_peak_max)
    return rows


def compare_json(base: SimulationResult, cand: SimulationResult, th: Thresholds,
                 rows: list[Criterion]) -> str:
    doc = jsonable({
        "schema": COMPARE_SCHEMA,
        "thresholds": th.model_dump(),
        "acceptance": [{"criterion": r.name, "value": r.value, "ci95": r.ci95, "op": r.op,
                        "threshold": r.threshold, "margin": r.margin,
                        "result": "PASS" if r.passed else "FAIL"} for r in rows],
        "passed": all(r.passed for r in rows),
        "baseline": base.to_json(),
        "candidate": cand.to_json(),
    })
    return json.dumps(doc, sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def summary_rows(base: SimulationResult, cand: SimulationResult) -> list[tuple[str, Any, Any]]:
    keys = ("success_rate", "timeout_rate", "wait_mean_s", "wait_p95_s", "wait_p99_s",
            "polls", "redis_ops_per_s", "redis_cpu_utilization", "gpu_utilization",
            "lock_expired_while_held", "double_occupancy_s", "emergency_deletes")
    return [(k, base.metrics.get(k), cand.metrics.get(k)) for k in keys]
