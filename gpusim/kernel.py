"""A minimal discrete-event kernel with SimPy's semantics for the subset gpusim.model uses.

Events are ordered by (time, priority, insertion sequence) exactly as in SimPy, processes are
generators resumed by the events they yield, and a new process takes its first step at
priority 0 (SimPy's URGENT Initialize). It exists because SimPy's general machinery costs
several microseconds per event, which the fast engine cannot afford; the model code on top of
it is the same.
"""

from __future__ import annotations

from heapq import heappop, heappush
from itertools import count
from typing import Any, Callable, Generator


class FastEvent:
    __slots__ = ("callbacks", "_value", "triggered")

    def __init__(self) -> None:
        self.callbacks: list[Callable[["FastEvent"], None]] | None = []
        self._value: Any = None
        self.triggered = False


class _Process:
    __slots__ = ("gen",)

    def __init__(self, gen: Generator) -> None:
        self.gen = gen

    def resume(self, ev: FastEvent) -> None:
        try:
            nxt = self.gen.send(ev._value)
        except StopIteration:
            return
        nxt.callbacks.append(self.resume)


class FastEnv:
    def __init__(self) -> None:
        self.now = 0.0
        self._queue: list[tuple[float, int, int, FastEvent]] = []
        self._eid = count()

    def event(self) -> FastEvent:
        return FastEvent()

    def at(self, t: float, prio: int) -> FastEvent:
        ev = FastEvent()
        ev.triggered = True
        heappush(self._queue, (t, prio, next(self._eid), ev))
        return ev

    def fire(self, ev: FastEvent, value: Any, t: float, prio: int) -> None:
        ev._value = value
        ev.triggered = True
        heappush(self._queue, (t, prio, next(self._eid), ev))

    def call_at(self, t: float, prio: int, fn: Callable[[FastEvent], None]) -> None:
        ev = FastEvent()
        ev.triggered = True
        ev.callbacks.append(fn)
        heappush(self._queue, (t, prio, next(self._eid), ev))

    def process(self, gen: Generator) -> None:
        ev = self.at(self.now, 0)
        ev.callbacks.append(_Process(gen).resume)

    def run(self) -> None:
        queue = self._queue
        while queue:
            t, _, _, ev = heappop(queue)
            self.now = t
            callbacks, ev.callbacks = ev.callbacks, None
            for cb in callbacks:
                cb(ev)
