"""A node's lock and monitor settings as the engines use them (floats, divided by the time scale),
and the event priorities every engine shares."""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Sequence

from gpusim.cluster import Cluster
from gpusim.config import GpuLockConfig, LockSettings
from gpusim.errors import InputError
from gpusim.schedule import ConfigChange, sorted_changes

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


@dataclass(frozen=True)
class ConfigTimeline:
    """Which gpu_lock settings each node runs from when, config changes applied.

    Rows: row r < nodes is node r's initial settings (config_index 0); change k (1-based, in
    time order) is row nodes + k - 1 (config_index k). Per node, `times[n][q]` (seconds divided
    by the time scale; the first is -inf) is when `rows[n][q]` comes into force: a task starting
    to acquire at t reads the last row whose time is <= t (a change at t applies)."""

    settings: tuple[LockSettings, ...]
    index: tuple[int, ...]
    times: tuple[tuple[float, ...], ...]
    rows: tuple[tuple[int, ...], ...]

    def row_at(self, node: int, t: float) -> int:
        return self.rows[node][bisect_right(self.times[node], t) - 1]


def config_timeline(cluster: Cluster, settings: list[LockSettings],
                    changes: Sequence[ConfigChange] = (),
                    time_scale: float = 1.0) -> ConfigTimeline:
    """The timeline of `changes` over the per-node `settings` (one per node)."""
    check_one_per_node(cluster, settings)
    changes = sorted_changes(changes)
    names = {n.name: n.index for n in cluster.nodes}
    n_nodes = len(cluster.nodes)
    times = [[float("-inf")] for _ in range(n_nodes)]
    rows = [[r] for r in range(n_nodes)]
    f = float(time_scale)
    for k, ch in enumerate(changes):
        if ch.node is not None and ch.node not in names:
            raise InputError(f"node '{ch.node}' is not in the cluster (nodes: "
                             f"{', '.join(names)})", file=ch.source, field="node")
        for nd in ([names[ch.node]] if ch.node is not None else range(n_nodes)):
            times[nd].append(ch.at_s / f)
            rows[nd].append(n_nodes + k)
    return ConfigTimeline(tuple(settings) + tuple(c.settings for c in changes),
                          (0,) * n_nodes + tuple(range(1, len(changes) + 1)),
                          tuple(map(tuple, times)), tuple(map(tuple, rows)))
