"""Config changes in a real replay (gpusim.schedule): which gpu_lock each worker reads.

The same rule as the model's (gpusim.model.params.ConfigTimeline): a task reads the config in
force on its node when it starts acquiring, and a change at that instant applies. In a real
replay "when" is the worker's own clock (seconds since the replay's t0, the trace's time divided
by the time scale), read just before it starts acquiring, as YiVideo's per-call read of
config.yml does; so a change closer to a task's scheduled start than the start lateness
(`RealRun.lateness`, about a millisecond) may go either way, while the model decides it exactly.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any, Sequence

from gpusim.config import GpuLockConfig
from gpusim.real.lock_client import LockParams


@dataclass(frozen=True)
class NodeTimeline:
    """One node's configs: (scaled start time, params, config index), the first at -inf."""

    times: tuple[float, ...]
    params: tuple[LockParams, ...]
    index: tuple[int, ...]

    def at(self, t: float) -> tuple[LockParams, int]:
        q = bisect_right(self.times, t) - 1
        return self.params[q], self.index[q]

    @property
    def any_event_driven(self) -> bool:
        return any(p.use_event_driven for p in self.params)


def node_timelines(cluster: Any, settings: GpuLockConfig, changes: Sequence[Any],
                   time_scale: float) -> dict[str, NodeTimeline]:
    """Per node name; `changes` in time order (gpusim.simulation.check_changes), their config
    index k (1-based) as in the model's records and the result's inputs."""
    out = {}
    for node in cluster.nodes:
        cfg = node.settings.gpu_lock if node.settings is not None else settings
        times, params, index = [float("-inf")], [LockParams.from_config(cfg, time_scale)], [0]
        for k, ch in enumerate(changes, start=1):
            if ch.node is None or ch.node == node.name:
                times.append(ch.at_s / time_scale)
                params.append(LockParams.from_config(ch.settings.gpu_lock, time_scale))
                index.append(k)
        out[node.name] = NodeTimeline(tuple(times), tuple(params), tuple(index))
    return out
