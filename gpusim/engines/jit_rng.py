"""numba twins of gpusim.rng and gpusim.timebins, for the compiled engine only.

The same SplitMix64 arithmetic in numba's unsigned 64-bit types (products wrap modulo 2**64 as
the Python versions' masks do), so a draw is the same double in both; tests/test_rng.py checks it
bit for bit. They live here so that importing gpusim without running the compiled engine never
imports numba (about half a second).
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from gpusim.rng import GAMMA, JITTER_LO, JITTER_SPAN, MIX1, MIX2, TASK_SALT, U53
from gpusim.timebins import MINUTE_S

_M1 = np.uint64(MIX1)
_M2 = np.uint64(MIX2)
_GAMMA = np.uint64(GAMMA)
_SALT = np.uint64(TASK_SALT)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)


@njit(cache=True, inline="always")
def mix(z):
    """SplitMix64's finaliser (uint64 in, uint64 out; wraps modulo 2**64)."""
    z = (z ^ (z >> _S30)) * _M1
    z = (z ^ (z >> _S27)) * _M2
    return z ^ (z >> _S31)


@njit(cache=True)
def task_state(key, task_index):
    """Starting state of task `task_index`'s stream under stream key `key` (well mixed)."""
    return mix(np.uint64(key) ^ mix(np.uint64(task_index) * _SALT + _GAMMA))


@njit(cache=True, inline="always")
def uniform(state, k):
    """Draw k (0-based) of the stream starting at `state`, in [0, 1)."""
    return np.float64(mix(np.uint64(state) + np.uint64(k + 1) * _GAMMA) >> _S11) * U53


@njit(cache=True, inline="always")
def jitter_factor(u):
    """YiVideo's backoff jitter factor for a uniform draw u."""
    return JITTER_LO + JITTER_SPAN * u


# Below this size q * 60.0 is an exact float for every candidate bin q (|q| * 60 < 2**53).
_EXACT_BINS = 2.0 ** 46


@njit(cache=True, inline="always")
def minute_of(t):
    """The minute bin of server time t: int(t // 60.0), as gpusim.timebins.minute_of.

    Python's t // 60.0 is the exact floor of t / 60 (it goes through fmod, exact); numba does
    the same through a call to a C fmod, 10% of the event loop's time. The rounded quotient's
    floor is that floor or one more (rounding is monotonic, and bins are exact floats), and
    q * 60.0 > t tells which, exactly; so the two agree to the bit. Huge, infinite or NaN
    times take Python's own path."""
    if abs(t) < _EXACT_BINS:
        q = math.floor(t / MINUTE_S)
        if q * MINUTE_S > t:
            q -= 1.0
        return int(q)
    return int(t // MINUTE_S)
