"""gpusim: a discrete-event model of YiVideo's Redis GPU lock.

The front door: everything a notebook, the advisor or a pipeline needs is importable from
here, whatever module it lives in (`from gpusim import simulate, load_trace`). Names load on
first use, so `import gpusim` (and the CLI's start) stays cheap.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from gpusim.version import __version__

_WHERE = {
    # run the model
    "simulate": "gpusim.simulation",
    "SimulationResult": "gpusim.simulation",
    "ReplicationResult": "gpusim.engines.replication",
    "compare": "gpusim.compare",
    "Comparison": "gpusim.compare",
    # load inputs
    "load_trace": "gpusim.traces.format",
    "trace_from_rows": "gpusim.traces.format",
    "write_trace": "gpusim.traces.format",
    "Trace": "gpusim.traces.format",
    "Task": "gpusim.traces.format",
    "SynthSpec": "gpusim.traces.synth",
    "synthesize": "gpusim.traces.synth",
    "load_lock_settings": "gpusim.config",
    "parse_lock_settings": "gpusim.config",
    "GpuLockConfig": "gpusim.config",
    "LockSettings": "gpusim.config",
    "config_digest": "gpusim.config",
    "load_cluster": "gpusim.cluster",
    "build_cluster": "gpusim.cluster",
    "default_cluster": "gpusim.cluster",
    "Cluster": "gpusim.cluster",
    "ClusterSpec": "gpusim.cluster",
    "ConfigChange": "gpusim.schedule",
    "load_schedule": "gpusim.schedule",
    "parse_config_change": "gpusim.schedule",
    # read YAML as every gpusim reader does (errors name file and line; duplicate keys refused)
    "read_yaml": "gpusim.yamlio",
    "key_lines": "gpusim.yamlio",
    "line_of": "gpusim.yamlio",
    # judge
    "Thresholds": "gpusim.acceptance",
    "load_thresholds": "gpusim.acceptance",
    "Criterion": "gpusim.acceptance",
    "judge": "gpusim.acceptance",
    # results
    "TaskRecord": "gpusim.records",
    "KeyHold": "gpusim.records",
    "RunLog": "gpusim.records",
    "Outcome": "gpusim.records",
    "Mechanism": "gpusim.records",
    "Release": "gpusim.records",
    "Metric": "gpusim.metrics",
    "mean_ci": "gpusim.stats",
    "ratio_ci": "gpusim.stats",
    "task_batches": "gpusim.batches",
    "waits_by_type": "gpusim.batches",
    # errors and exit codes
    "InputError": "gpusim.errors",
    "ExitCode": "gpusim.exitcodes",
}

__all__ = ["__version__", *_WHERE]


def __getattr__(name: str) -> Any:
    module = _WHERE.get(name)
    if module is None:
        raise AttributeError(f"module 'gpusim' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later look-ups skip this hook
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


if TYPE_CHECKING:  # static analysers and IDEs see the real names
    from gpusim.acceptance import Criterion, Thresholds, judge, load_thresholds
    from gpusim.cluster import Cluster, ClusterSpec, build_cluster, default_cluster, load_cluster
    from gpusim.compare import Comparison, compare
    from gpusim.config import GpuLockConfig, LockSettings, load_lock_settings, parse_lock_settings
    from gpusim.config import config_digest
    from gpusim.engines.replication import ReplicationResult
    from gpusim.errors import InputError
    from gpusim.exitcodes import ExitCode
    from gpusim.metrics import Metric
    from gpusim.records import KeyHold, Mechanism, Outcome, Release, RunLog, TaskRecord
    from gpusim.schedule import ConfigChange, load_schedule, parse_config_change
    from gpusim.simulation import SimulationResult, simulate
    from gpusim.stats import mean_ci
    from gpusim.yamlio import key_lines, line_of, read_yaml
    from gpusim.batches import task_batches, waits_by_type
    from gpusim.stats import ratio_ci
    from gpusim.traces.format import Task, Trace, load_trace, trace_from_rows, write_trace
    from gpusim.traces.synth import SynthSpec, synthesize
