"""The staged rollout of GPU_LOCK_CONFIG_002: stages, gates, rollback triggers (--stages S.yml).

Defaults are the spec's (../shared/seed/gpu-lock-configuration-spec.md):
- stages: the candidate on 10% of the worker nodes for 24 h, then 50% for 48 h, then all nodes
  after a technical lead's approval ("全量发布前获得技术负责人批准"); the final stage is
  simulated for 24 h (the spec gives it no length; it is the first day on the whole fleet);
- gates on the canary nodes (GPU_LOCK_CONFIG_002): task success rate >= 95%, lock acquisition
  failure rate < 10%, task timeout rate < 5%, Redis CPU < 80%;
- rollback triggers: task timeout rate > 10% (GPU_LOCK_CONFIG_004's scenario: "发现任务超时率
  异常升高 (> 10%)"). The design notes list "timeout rate > 5%" as a trigger; that 5% is the
  stage gate of GPU_LOCK_CONFIG_002, and the spec's own rollback figure is 10%: the spec wins,
  so 5% stops a stage (FAIL, no promotion) and 10% rolls it back. Lock acquisition failure
  > 10% and Redis CPU > 80% are triggers too (the design notes' list): breaching a gate that
  hard is as clear as a trigger gets.

Definitions, on what one task can show (an acquisition attempt = one task entering YiVideo's
`gpu_lock` decorator and starting to acquire):
- task success rate = tasks that got the lock and ran to completion (not crashed) / attempts;
- lock acquisition failure rate = attempts that ended without the lock / attempts. In YiVideo
  (services/common/locks.py) an acquire call ends without the lock only by giving up at
  max_wait_time, so on a trace it counts the same events as the timeout rate; the spec's two
  thresholds are still two gates, and the timeout gate (5%) is the stricter;
- task timeout rate = tasks that failed with GPU_LOCK_TIMEOUT (gave up waiting) / attempts;
- Redis CPU = the shared Redis's CPU utilisation in its busiest minute (the whole fleet's lock
  traffic plus the background load), as `gpusim compare` judges it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

from gpusim import InputError

from advisor.rollout.inputs import load_yaml_model

MAX_STAGE_H = 8784.0    # a stage of at most a (leap) year, like a trace


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Stage(_Model):
    name: str = Field(min_length=1)
    share: float = Field(gt=0, le=1, description="share of worker nodes on the candidate")
    duration_h: float = Field(gt=0, le=MAX_STAGE_H, allow_inf_nan=False)
    approval: bool = Field(False, description="a person approves before this stage starts")


class Gates(_Model):
    success_rate_min: float = Field(0.95, gt=0, lt=1)
    acquisition_failure_max: float = Field(0.10, gt=0, lt=1)
    timeout_rate_max: float = Field(0.05, gt=0, lt=1)
    redis_cpu_max: float = Field(0.80, gt=0)


class Rollback(_Model):
    timeout_rate_max: float = Field(0.10, gt=0, lt=1)
    acquisition_failure_max: float = Field(0.10, gt=0, lt=1)
    redis_cpu_max: float = Field(0.80, gt=0)


class Waits(_Model):
    """The Kayenta-style comparison of canary and control lock waits (Mann-Whitney U).

    The effect size is the common-language effect size (CLES), P(canary wait > control wait)
    + P(tie) / 2: 0.5 is no difference. It is used rather than a ratio of mean waits because
    lock waits are heavy-tailed (on a real replay of 100 tasks a node, one 40 s wait moved the
    mean ratio by a third while the CLES stayed at 0.50). 0.6 and 0.7 are about Cohen's d 0.36
    and 0.74 for normal data (CLES = Phi(d / sqrt 2)): a small-to-medium and a large shift.
    """
    alpha: float = Field(0.05, gt=0, lt=0.5)
    allowed_cles: float = Field(0.6, ge=0.5, lt=1, description="a significant shift with a "
                                "CLES above this is MARGINAL")
    critical_cles: float = Field(0.7, ge=0.5, lt=1, description="... above this, FAIL")
    min_control: int = Field(20, ge=3, le=1_000_000)

    @model_validator(mode="after")
    def _ordered(self) -> "Waits":
        if self.critical_cles < self.allowed_cles:
            raise ValueError("critical_cles must be >= allowed_cles")
        return self


DEFAULT_STAGES = (Stage(name="canary", share=0.10, duration_h=24),
                  Stage(name="gray", share=0.50, duration_h=48),
                  Stage(name="full", share=1.0, duration_h=24, approval=True))


class RolloutSpec(_Model):
    stages: list[Stage] = Field(default_factory=lambda: list(DEFAULT_STAGES), min_length=1,
                                max_length=20)
    gates: Gates = Gates()
    rollback: Rollback = Rollback()
    waits: Waits = Waits()

    @model_validator(mode="after")
    def _growing(self) -> "RolloutSpec":
        shares = [s.share for s in self.stages]
        if any(b < a for a, b in zip(shares, shares[1:])):
            raise ValueError(f"stage shares must not shrink, got {shares}")
        names = [s.name for s in self.stages]
        if len(set(names)) != len(names):
            raise ValueError(f"stage names must differ, got {names}")
        return self


def load_stages(path: str | Path | None) -> RolloutSpec:
    """The rollout spec from a YAML file (every key optional), or the spec's defaults."""
    if path is None:
        return RolloutSpec()
    return load_yaml_model(path, RolloutSpec, "stages file",
                           "(stages:, gates:, rollback:, waits:)")


def canary_count(n_nodes: int, share: float) -> tuple[int, str]:
    """Nodes on the candidate at `share` of `n_nodes`, and how it was rounded.

    Half-up rounding of share x nodes, then at least one canary, and, below a share of 1, at
    least one control node (the judge compares canary with control). A share of 1 is every
    node. With one node only the final stage exists: there is nothing to compare with.
    """
    if share >= 1:
        return n_nodes, f"all {n_nodes} node(s)"
    exact = share * n_nodes
    k = int(exact + 0.5)
    note = f"{share:g} x {n_nodes} nodes = {exact:g}, rounded half up to {k}"
    if k < 1:
        k, note = 1, note + ", raised to 1 (a canary needs a node)"
    if k > n_nodes - 1:
        if n_nodes < 2:
            raise InputError(f"a stage below 100% needs at least 2 nodes (one canary, one "
                             f"control); the cluster has {n_nodes}", field="stages.share")
        k, note = n_nodes - 1, note + f", lowered to {n_nodes - 1} (one control node stays)"
    return k, note


def gate_list(g: Gates) -> list[dict[str, Any]]:
    """The canary gates as (name, metric, op, threshold) rows."""
    return [
        {"name": "success_rate", "metric": "success_rate", "op": ">=",
         "threshold": g.success_rate_min},
        {"name": "acquisition_failure_rate", "metric": "acquisition_failure_rate", "op": "<",
         "threshold": g.acquisition_failure_max},
        {"name": "timeout_rate", "metric": "timeout_rate", "op": "<",
         "threshold": g.timeout_rate_max},
        {"name": "redis_cpu", "metric": "redis_cpu_peak_1m", "op": "<",
         "threshold": g.redis_cpu_max},
    ]


def trigger_list(r: Rollback) -> list[dict[str, Any]]:
    """Rollback triggers: roll back at once when the metric's 95% interval lies above."""
    return [
        {"name": "timeout_rate", "metric": "timeout_rate", "op": ">",
         "threshold": r.timeout_rate_max, "source": "GPU_LOCK_CONFIG_004"},
        {"name": "acquisition_failure_rate", "metric": "acquisition_failure_rate", "op": ">",
         "threshold": r.acquisition_failure_max, "source": "GPU_LOCK_CONFIG_002 gate"},
        {"name": "redis_cpu", "metric": "redis_cpu_peak_1m", "op": ">",
         "threshold": r.redis_cpu_max, "source": "GPU_LOCK_CONFIG_002 gate"},
    ]
