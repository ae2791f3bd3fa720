"""A node's lock and monitor settings as the engines use them (floats, divided by the time scale),
and the event priorities every engine shares."""

from __future__ import annotations

from dataclasses import dataclass

from gpusim.cluster import Cluster
from gpusim.config import GpuLockConfig, LockSettings

# Events at one instant run in (priority, insertion) order: task i's events have priority
# PRIO_TASK0 + i (arrival order), a new process starts at 0, the monitor runs after every task.
PRIO_TASK0 = 2


@dataclass(frozen=True)
class LockParams:
    """A node's gpu_lock settings as floats, divided by the replay's time scale."""

    poll_interval: float
    max_wait: float
    ttl: float
    backoff: bool
    max_poll: float
    event_driven: bool
    fallback: float

    @classmethod
    def from_config(cls, cfg: GpuLockConfig, time_scale: float = 1.0) -> "LockParams":
        f = float(time_scale)
        return cls(cfg.poll_interval / f, cfg.max_wait_time / f, cfg.lock_timeout / f,
                   cfg.exponential_backoff, cfg.max_poll_interval / f, cfg.use_event_driven,
                   cfg.fallback_timeout / f)


def max_wait_by_type(cluster: Cluster, time_scale: float = 1.0) -> dict[str, float]:
    """The `max_wait_time_by_type` option as the engines use it: task type -> max wait, divided
    by the time scale like every duration (a type not named keeps its node's max_wait)."""
    f = float(time_scale)
    return {t: float(v) / f for t, v in cluster.options.max_wait_time_by_type.items()}


@dataclass(frozen=True)
class MonitorParams:
    interval: float
    soft: float
    hard: float
    heartbeat_timeout: float

    @classmethod
    def from_settings(cls, s: LockSettings, time_scale: float = 1.0) -> "MonitorParams":
        m, f = s.gpu_lock_monitor, float(time_scale)
        return cls(m.monitor_interval / f, m.timeout_levels.soft_timeout / f,
                   m.timeout_levels.hard_timeout / f, m.heartbeat.timeout / f)


def check_one_per_node(cluster: Cluster, settings: list[LockSettings]) -> None:
    if len(settings) != len(cluster.nodes):
        raise ValueError(f"one LockSettings per node: got {len(settings)} for "
                         f"{len(cluster.nodes)} nodes")
