"""The modelled Redis server: lock keys with TTLs, Pub/Sub channels, and command accounting.

The server applies each command at the simulated time it reaches the server. Commands that
arrive at the same instant are applied in the order the engine delivers them, which is fixed by
event priority (see gpusim.model.reference): simultaneous commands run in task-index order.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from gpusim.cluster import COMMANDS
from gpusim.records import HoldEnd, KeyHold
from gpusim.timebins import MINUTE_S, minute_of

_minute_of = minute_of  # the Python twin of what the compiled engine inlines

CMD_INDEX = {c: i for i, c in enumerate(COMMANDS)}


@dataclass
class KeyState:
    value: str | None = None
    holder: int = -1
    set_s: float = 0.0
    expires_at: float = 0.0


@dataclass
class Subscription:
    task: int
    deliver: Callable[[float], None]   # called with the PUBLISH's server time


@dataclass
class RedisServerModel:
    keys: dict[str, KeyState] = field(default_factory=dict)
    holds: list[KeyHold] = field(default_factory=list)
    commands: list[int] = field(default_factory=lambda: [0] * len(COMMANDS))
    commandstats: list[int] = field(default_factory=lambda: [0] * len(COMMANDS))
    deliveries: int = 0
    minute_commands: dict[tuple[int, int], int] = field(default_factory=lambda: defaultdict(int))
    minute_deliveries: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    channels: dict[str, dict[int, Subscription]] = field(default_factory=dict)
    # (server time, command, key or channel, task index) of every command, when a test asks
    command_log: list[tuple[float, str, str, int]] | None = None

    # -- accounting ---------------------------------------------------------------------------
    def count(self, cmd: str, t: float, n: int = 1, inner: tuple[str, ...] = (),
              key: str = "", by: int = -1) -> None:
        if self.command_log is not None:
            self.command_log.append((t, cmd, key, by))
        i = CMD_INDEX[cmd]
        self.commands[i] += n
        self.commandstats[i] += n
        self.minute_commands[(_minute_of(t), i)] += n
        for c in inner:  # commands a Lua script runs inside the server
            self.commandstats[CMD_INDEX[c]] += 1

    # -- keys -----------------------------------------------------------------------------------
    def _state(self, key: str, t: float) -> KeyState:
        st = self.keys.get(key)
        if st is None:
            st = self.keys[key] = KeyState()
        elif st.value is not None and t >= st.expires_at:
            self._end(key, st, st.expires_at, HoldEnd.EXPIRED, None)
        return st

    def _end(self, key: str, st: KeyState, t: float, reason: HoldEnd, by: int | None) -> None:
        self.holds.append(KeyHold(key, st.holder, st.set_s, t, reason, by))
        st.value = None
        st.holder = -1

    def peek(self, key: str, t: float) -> KeyState:
        """Key state at t, with no command counted (for the monitor's omniscient view)."""
        return self._state(key, t)

    def get(self, key: str, t: float, by: int = -1) -> str | None:
        self.count("GET", t, key=key, by=by)
        return self._state(key, t).value

    def set_nx(self, key: str, value: str, holder: int, t: float, ttl: float) -> bool:
        self.count("SET", t, key=key, by=holder)
        st = self._state(key, t)
        if st.value is not None:
            return False
        st.value, st.holder, st.set_s, st.expires_at = value, holder, t, t + ttl
        return True

    def eval_compare_and_delete(self, key: str, value: str, t: float,
                                by: int) -> tuple[bool, int]:
        """The release script; returns (deleted, index of the holder whose key it was)."""
        st = self._state(key, t)
        if st.value is not None and st.value == value:
            holder = st.holder
            self.count("EVAL", t, inner=("GET", "DEL"), key=key, by=by)
            self._end(key, st, t, HoldEnd.RELEASED, by)
            return True, holder
        self.count("EVAL", t, inner=("GET",), key=key, by=by)
        return False, st.holder

    def delete(self, key: str, t: float, by: int | None, reason: HoldEnd) -> int:
        """Plain DEL; returns the index of the holder whose key was removed, or -1."""
        self.count("DEL", t, key=key, by=-1 if by is None else by)
        st = self._state(key, t)
        if st.value is None:
            return -1
        holder = st.holder
        self._end(key, st, t, reason, by)
        return holder

    def close(self, horizon: float) -> None:
        """End the run: keys still set expire (if due) or stay open."""
        for key, st in sorted(self.keys.items()):
            if st.value is None:
                continue
            if st.expires_at <= horizon:
                self._end(key, st, st.expires_at, HoldEnd.EXPIRED, None)
            else:
                self._end(key, st, horizon, HoldEnd.OPEN, None)

    # -- pub/sub --------------------------------------------------------------------------------
    def subscribe(self, channel: str, sub: Subscription, t: float) -> None:
        self.count("SUBSCRIBE", t, key=channel, by=sub.task)
        self.channels.setdefault(channel, {})[sub.task] = sub

    def unsubscribe(self, channel: str, task: int, t: float) -> None:
        self.count("UNSUBSCRIBE", t, key=channel, by=task)
        self.channels.get(channel, {}).pop(task, None)

    def publish(self, channel: str, t: float, by: int = -1) -> list[Subscription]:
        """Subscribers whose SUBSCRIBE reached the server before this PUBLISH get the message."""
        self.count("PUBLISH", t, key=channel, by=by)
        subs = list(self.channels.get(channel, {}).values())
        self.deliveries += len(subs)
        if subs:
            self.minute_deliveries[_minute_of(t)] += len(subs)
        return subs

    # -- results --------------------------------------------------------------------------------
    def minute_arrays(self, horizon: float) -> tuple[np.ndarray, np.ndarray]:
        n = int(horizon // MINUTE_S) + 1
        for (m, _), _ in self.minute_commands.items():
            n = max(n, m + 1)
        for m in self.minute_deliveries:
            n = max(n, m + 1)
        cmds = np.zeros((n, len(COMMANDS)), dtype=np.int64)
        for (m, i), c in self.minute_commands.items():
            cmds[m, i] += c
        dels = np.zeros(n, dtype=np.int64)
        for m, c in self.minute_deliveries.items():
            dels[m] += c
        return cmds, dels
