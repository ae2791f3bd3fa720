"""Celery worker slots: a task occupies one from the moment it starts acquiring the lock until
it finishes (or gives up), so a waiting task keeps its slot busy while it polls.

Each service has `workers` slots on every node. A task pinned to a node (trace `node` field)
waits for that node's slots; an unpinned task takes a free slot on the node with the most free
slots of its service (lowest node index on a tie), which is how a shared Celery queue spreads
work over idle workers. Waiting tasks are served first come, first served.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any


@dataclass
class _Waiting:
    task: Any
    nodes: tuple[int, ...]
    token: Any


@dataclass
class ServicePool:
    free: list[int]                               # free slots per node index
    queue: deque[_Waiting] = field(default_factory=deque)

    def _pick(self, nodes: tuple[int, ...]) -> int | None:
        best = None
        for n in nodes:
            if self.free[n] > 0 and (best is None or self.free[n] > self.free[best]):
                best = n
        return best

    def take(self, task: Any, nodes: tuple[int, ...], token: Any) -> int | None:
        """A free node for `task` now, or None after queueing it (FIFO) with `token`."""
        # Invariant: a node with a free slot has no queued task allowed on it, so a newcomer
        # that finds a free slot overtakes nobody.
        n = self._pick(nodes)
        if n is None:
            self.queue.append(_Waiting(task, nodes, token))
            return None
        self.free[n] -= 1
        return n

    def give_back(self, node: int) -> tuple[Any, int] | None:
        """Free a slot on `node`; returns (token, node) of the queued task that takes it."""
        for i, w in enumerate(self.queue):
            if node in w.nodes:
                del self.queue[i]
                return w.token, node
        self.free[node] += 1
        return None


def make_pools(services: dict[str, int], n_nodes: int) -> dict[str, ServicePool]:
    """services: name -> slots per node."""
    return {name: ServicePool([slots] * n_nodes) for name, slots in sorted(services.items())}
