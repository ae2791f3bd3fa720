"""rec.json: what `gpusim tune` decided, in a versioned schema a deployment pipeline can read.

`gpusim tune --schema` prints the JSON Schema of `Recommendation`. A change that removes or
renames a field, or changes its meaning, is a new schema version (`gpusim.recommendation/2`);
adding an optional field is not.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

SCHEMA = "gpusim.recommendation/1"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Estimate(_Model):
    """A mean over replications and its Student-t 95% interval (None with one replication)."""
    mean: float | None
    ci95: tuple[float, float] | None = None


class Gate(_Model):
    name: str
    op: Literal[">=", "<", "<="]
    threshold: float
    value: float | None = Field(description="point estimate (paired over replications)")
    ci95: tuple[float, float] | None
    conservative: float | None = Field(
        description="the end of the 95% interval nearest to failing")
    margin: float | None = Field(description="value beyond the threshold (> 0: on the good side)")
    conservative_margin: float | None
    passed: bool = Field(description="passes at the conservative end of its interval")


class TraceInfo(_Model):
    path: str
    sha256: str
    tasks: int
    span_s: float
    task_types: list[str]


class Versions(_Model):
    gpusim: str
    optuna: str
    numpy: str
    python: str


class SearchInfo(_Model):
    sampler: str
    seed: int = Field(description="seed of the sampler and of the search's simulations")
    trials: int = Field(description="target number of complete trials in the study")
    replications: int = Field(description="replications per trial (common random numbers)")
    simulation_seed: int = Field(description="simulate() seed of every search trial")
    check_seed: int = Field(description="simulate() seed of the re-check: never used by the search")
    check_replications: int
    check_candidates: int = Field(description="best feasible trials re-checked on check seeds")
    selection_rule: str


class Inputs(_Model):
    trace: TraceInfo
    baseline: dict[str, Any] = Field(description="source and gpu_lock values of today's config")
    cluster: dict[str, Any]
    thresholds: dict[str, float]
    space: dict[str, Any]
    search: SearchInfo
    versions: Versions


class Recommended(_Model):
    gpu_lock: dict[str, Any]
    yaml: str = Field(description="the gpu_lock block to paste into config.yml")
    trial: int | None
    changed: list[str] = Field(description="settings that differ from the baseline")


class HeadroomRow(_Model):
    tasks: float
    wait_mean_s: float | None
    held_mean_s: float | None = Field(description="mean time the key was held by another task")
    free_mean_s: float | None = Field(
        description="mean time the key was free while the task waited (what a lock setting can "
                    "remove without timing tasks out)")
    free_share: float | None
    timeout_rate: float | None


class Headroom(_Model):
    config: Literal["baseline"] = "baseline"
    overall: HeadroomRow
    by_task_type: dict[str, HeadroomRow]
    best_wait_reduction_within_timeout_gate: float | None = Field(
        description="largest mean-wait cut of any searched config whose timeout rate meets its "
                    "gate, among those meeting the lock-safety and Redis gates (point "
                    "estimates over the search)")
    least_timeout_rate_at_wait_gate: float | None = Field(
        description="smallest timeout rate of any searched config that reaches the wait gate, "
                    "among those meeting the lock-safety and Redis gates")


class ParetoPoint(_Model):
    """A point of the Pareto front on mean lock wait and Redis CPU, taken over the feasible
    trials; with none feasible, over those meeting the lock-safety and Redis gates; with none
    of those either, over every trial."""
    trial: int
    gpu_lock: dict[str, Any]
    wait_mean_s: float
    redis_cpu_utilization: float
    feasible: bool = Field(description="meets every gate on the search's point estimates")


class Candidate(_Model):
    trial: int
    gpu_lock: dict[str, Any]
    wait_mean_s: Estimate
    redis_cpu_utilization: Estimate
    gates: list[Gate]
    passed: bool


class WaitCurve(_Model):
    """Time to get the lock, per task type: tasks that gave up are censored at their
    max_wait_time (they never acquired), not drawn as short waits."""
    task_type: str
    config: Literal["baseline", "recommended", "nearest"]
    tasks: int
    acquired_share: float
    timeout_share: float
    censored_at_s: float
    probabilities: list[float] = Field(description="P(acquired within t) at each quantile")
    wait_s: list[float] = Field(description="waits of acquired tasks at those probabilities")


class GpuWhatIf(_Model):
    gpus_per_node: int
    gpu_policy: str
    passed: bool
    wait_reduction: float | None
    timeout_rate: float | None


class PerTypeOption(_Model):
    """`max_wait_time_by_type`: a model option YiVideo does not have yet (a code change)."""
    option: Literal["max_wait_time_by_type"] = "max_wait_time_by_type"
    max_wait_time_by_type: dict[str, float]
    base_config: dict[str, Any]
    gates: list[Gate]
    passed: bool
    wait_reduction: float | None
    timeout_rate: float | None
    timeout_rate_by_task_type: dict[str, float | None] = Field(
        description="the overall gate can hide one type giving up often")


class IdealLock(_Model):
    """A near-ideal lock (fast polls, no backoff, no give-up, no expiry) against today's config:
    about all any lock setting can take off the wait without timing tasks out."""
    gpu_lock: dict[str, Any]
    wait_reduction: Estimate
    timeout_rate: float | None


class WhatIf(_Model):
    ideal_lock: IdealLock | None = None
    gpus: list[GpuWhatIf] = Field(default_factory=list)
    gpus_needed: int | None = Field(
        None, description="fewest GPUs per node at which some searched config passes every gate")
    per_type_max_wait: PerTypeOption | None = None


class StudyInfo(_Model):
    storage: str = Field(description="storage URL without credentials")
    name: str
    trials_by_state: dict[str, int]


class Recommendation(_Model):
    schema_: Literal["gpusim.recommendation/1"] = Field(SCHEMA, alias="schema")
    created_at: str = Field(description="the one field that differs between identical runs")
    status: Literal["recommended", "infeasible"]
    inputs: Inputs
    recommended: Recommended | None
    nearest: Candidate | None = Field(
        description="when infeasible: the checked config closest to passing")
    binding_gates: list[str]
    metrics: dict[str, dict[str, Estimate]] = Field(
        description="baseline and recommended (or nearest) metrics on the check seeds")
    gates: list[Gate]
    headroom: Headroom
    pareto_front: list[ParetoPoint]
    candidates: list[Candidate]
    importances: dict[str, dict[str, float]]
    explanation: list[str]
    wait_curves: list[WaitCurve]
    what_if: WhatIf
    study: StudyInfo

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    def to_json(self) -> dict[str, Any]:
        return self.model_dump(mode="json", by_alias=True)

    def dumps(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, indent=2, ensure_ascii=False) + "\n"


def json_schema() -> str:
    schema = Recommendation.model_json_schema(by_alias=True)
    schema["$id"] = SCHEMA
    schema["title"] = "gpusim recommendation (gpusim tune)"
    return json.dumps(schema, sort_keys=True, indent=2) + "\n"


def load_recommendation(path: str) -> Recommendation:
    """Read a rec.json back (the report and the rollout tooling start from it)."""
    from pydantic import ValidationError

    from advisor.jsonio import read_schema_doc
    from gpusim import InputError
    doc = read_schema_doc(path, SCHEMA)
    try:
        return Recommendation.model_validate(doc)
    except ValidationError as err:
        e = err.errors()[0]
        raise InputError(e["msg"], file=path,
                         field=".".join(str(p) for p in e["loc"])) from None
