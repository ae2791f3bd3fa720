"""The per-minute bins of a run (peak-minute Redis load): one definition for every engine."""

from __future__ import annotations

from numba import njit

MINUTE_S = 60.0


@njit(cache=True, inline="always")
def minute_of(t):
    """The minute bin of server time t (seconds from the first arrival): int(t // 60.0)."""
    return int(t // MINUTE_S)
