"""The plan as Argo Rollouts AnalysisTemplates (`gpusim canary plan --argo template.yaml`).

One AnalysisTemplate (apiVersion argoproj.io/v1alpha1) per stage, as a multi-document YAML.
The fields follow the AnalysisTemplate CRD (argoproj/argo-rollouts,
manifests/crds/analysis-template-crd.yaml: `spec.metrics` required; each metric needs `name`
and `provider`; each arg needs `name`) and the Prometheus provider's documentation
(argoproj.github.io/argo-rollouts/analysis/prometheus: `provider.prometheus.address` and
`query`, conditions on `result[0]`).

How the judge's rules become Argo's: a measurement is Successful when `successCondition`
holds, Failed when `failureCondition` holds, and Inconclusive when neither does; a failed
analysis aborts the rollout, an inconclusive one pauses it for a person. So each rate gate is
two metrics measured once at the end of the stage (`initialDelay` = the stage's length), both
on the 95% Wilson bound computed in PromQL from the stage's counts:
- `<gate>-confident-pass`: the conservative bound meets the gate -> Successful, else
  Inconclusive (MARGINAL: pause);
- `<gate>-confident-fail`: the other bound misses the gate -> Failed (FAIL: abort).
`acquisitions` is Inconclusive below the plan's minimum (INSUFFICIENT_DATA: pause). Rollback
triggers are measured every hour on the last hour's Wilson lower bound (failureLimit 0: the
first breach aborts), and the Redis CPU every 5 minutes on its busiest minute.

Metric names are template args (`spec.args`, defaults from `--metrics M.yml`), so a Rollout
can map them to the names its exporters use. YiVideo exports no GPU-lock metric to Prometheus
today: its lock counters live in `SmartGpuLockManager.lock_stats` (services/common/locks.py:
total_attempts, successful_acquisitions, timeouts), and its Prometheus config
(services/api_gateway/app/monitoring/prometheus_config.py) scrapes a `redis` job and names
counters like `faster_whisper_workflows_total{status=...}`. The defaults below are named after
those: counters a YiVideo exporter would add, and redis_exporter's CPU counters.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field

from advisor.rollout.inputs import load_yaml_model
from advisor.rollout.power import Z_975


class MetricNames(BaseModel):
    """What the user's Prometheus calls things (`--metrics M.yml`; every key optional)."""
    model_config = ConfigDict(extra="forbid", frozen=True)
    prometheus_address: str = Field("http://prometheus:9090", min_length=1,
                                    description="YiVideo's Grafana datasource URL")
    attempts_metric: str = Field("gpu_lock_acquire_attempts_total", min_length=1,
                                 description="counter: acquire calls (tasks that tried)")
    timeouts_metric: str = Field("gpu_lock_timeouts_total", min_length=1,
                                 description="counter: acquire calls that gave up")
    successes_metric: str = Field("gpu_lock_task_successes_total", min_length=1,
                                  description="counter: tasks that ran to completion")
    redis_cpu_user_metric: str = Field("redis_cpu_user_seconds_total", min_length=1)
    redis_cpu_sys_metric: str = Field("redis_cpu_sys_seconds_total", min_length=1)
    redis_selector: str = Field('job="redis"', description="PromQL label matchers of the "
                                "shared Redis (YiVideo's scrape job is named redis)")
    canary_selector: str = Field('gpu_lock_config="candidate"', min_length=1,
                                 description="PromQL label matchers of the canary workers")


def load_metric_names(path: str | Path | None) -> MetricNames:
    if path is None:
        return MetricNames()
    return load_yaml_model(path, MetricNames, "metrics file", "of metric names")


ARGS = ("attempts-metric", "timeouts-metric", "successes-metric", "redis-cpu-user-metric",
        "redis-cpu-sys-metric", "redis-selector", "canary-selector")


def _args(m: MetricNames) -> list[dict[str, str]]:
    values = (m.attempts_metric, m.timeouts_metric, m.successes_metric,
              m.redis_cpu_user_metric, m.redis_cpu_sys_metric, m.redis_selector,
              m.canary_selector)
    return [{"name": n, "value": v} for n, v in zip(ARGS, values)]


def _count(metric_arg: str, window: str) -> str:
    # spaces inside the braces keep Argo's {{...}} tags apart from PromQL's matcher braces
    return (f"sum(increase({{{{args.{metric_arg}}}}}{{ {{{{args.canary-selector}}}} }}"
            f"[{window}]))")


def wilson_promql(events_arg: str, window: str, upper: bool) -> str:
    """The 95% Wilson bound of events / attempts over `window`, in PromQL."""
    k, n = _count(events_arg, window), _count("attempts-metric", window)
    z2 = f"{Z_975 * Z_975:.6f}"
    sign = "+" if upper else "-"
    return (f"(({k} / {n}) + {z2} / (2 * {n}) {sign} {Z_975:.6f} * sqrt(({k} / {n}) * "
            f"(1 - {k} / {n}) / {n} + {z2} / (4 * {n} * {n}))) / (1 + {z2} / {n})")


def _redis_peak(window: str) -> str:
    sel = "{ {{args.redis-selector}} }"
    return (f"max_over_time((sum(rate({{{{args.redis-cpu-user-metric}}}}{sel}[1m])) + "
            f"sum(rate({{{{args.redis-cpu-sys-metric}}}}{sel}[1m])))[{window}:1m])")


def _duration(hours: float) -> str:
    minutes = round(hours * 60)
    return f"{minutes // 60}h" if minutes % 60 == 0 else f"{minutes}m"


NEVER = "result[0] < 0"          # a rate bound is never negative: "no failure condition"
ALWAYS = "result[0] >= 0"


def _prom(address: str, query: str) -> dict[str, Any]:
    return {"prometheus": {"address": address, "query": query}}


def _gate_metrics(g: dict[str, Any], window: str, address: str) -> list[dict[str, Any]]:
    events = "successes-metric" if g["name"] == "success_rate" else "timeouts-metric"
    thr, low_is_bad = g["threshold"], g["op"] == ">="
    name = g["name"].replace("_", "-")
    once = {"initialDelay": window, "count": 1, "failureLimit": 0}
    ok = f"result[0] >= {thr:g}" if low_is_bad else f"result[0] < {thr:g}"
    bad = f"result[0] < {thr:g}" if low_is_bad else f"result[0] >= {thr:g}"
    return [
        {"name": f"{name}-confident-pass", **once, "successCondition": ok,
         "failureCondition": NEVER,
         "provider": _prom(address, wilson_promql(events, window, upper=not low_is_bad))},
        {"name": f"{name}-confident-fail", **once, "successCondition": ALWAYS,
         "failureCondition": bad,
         "provider": _prom(address, wilson_promql(events, window, upper=low_is_bad))},
    ]


def stage_template(plan: dict[str, Any], stage: dict[str, Any], m: MetricNames,
                   prefix: str) -> dict[str, Any]:
    window = _duration(stage["duration_h"])
    hours = max(1, round(stage["duration_h"]))
    metrics: list[dict[str, Any]] = []
    for g in plan["gates"]:
        if g["metric"] == "redis_cpu_peak_1m":
            metrics.append({"name": "redis-cpu", "interval": "5m", "count": hours * 12,
                            "failureLimit": 0,
                            "successCondition": f"result[0] < {g['threshold']:g}",
                            "provider": _prom(m.prometheus_address, _redis_peak("5m"))})
        else:
            metrics += _gate_metrics(g, window, m.prometheus_address)
    if stage["min_acquisitions"] is not None:
        metrics.append({"name": "acquisitions", "initialDelay": window, "count": 1,
                        "failureLimit": 0,
                        "successCondition": f"result[0] >= {stage['min_acquisitions']}",
                        "failureCondition": NEVER,
                        "provider": _prom(m.prometheus_address,
                                          _count("attempts-metric", window))})
    for t in plan["rollback_triggers"]:
        if t["metric"] == "redis_cpu_peak_1m":
            continue   # the redis-cpu metric above fails on the same threshold
        metrics.append({"name": f"rollback-{t['name'].replace('_', '-')}", "interval": "1h",
                        "count": hours, "failureLimit": 0,
                        "failureCondition": f"result[0] > {t['threshold']:g}",
                        "provider": _prom(m.prometheus_address,
                                          wilson_promql("timeouts-metric", "1h", upper=False))})
    return {"apiVersion": "argoproj.io/v1alpha1", "kind": "AnalysisTemplate",
            "metadata": {"name": f"{prefix}-{stage['index']}-{_dns(stage['name'])}",
                         "labels": {"app.kubernetes.io/managed-by": "gpusim"}},
            "spec": {"args": _args(m), "metrics": metrics}}


def _dns(name: str) -> str:
    """A DNS-1123 label part (Kubernetes object names)."""
    out = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    return out[:40] or "stage"


def analysis_templates(plan: dict[str, Any], m: MetricNames,
                       prefix: str = "gpu-lock-canary") -> str:
    """Every stage's AnalysisTemplate, one YAML document each."""
    docs = [stage_template(plan, st, m, prefix) for st in plan["stages"]]
    return yaml.safe_dump_all(docs, sort_keys=False, allow_unicode=True, width=1000)
