"""Owned, counter-based randomness: one SplitMix64, compiled once, called from Python and numba.

One `numpy.random.SeedSequence` per replication derives a 64-bit key per named stream. A task's
jitter is then a SplitMix64 stream keyed by (stream key, task index): draw k of task i is a pure
function of (seed, replication, i, k). That gives common random numbers for free (two configs
replayed on one trace see the same draws, whatever else differs), and the reference model
(Python) and the compiled engine (numba) call the very same functions, so they cannot drift.
"""

from __future__ import annotations

import numpy as np
from numba import njit

GAMMA = 0x9E3779B97F4A7C15  # SplitMix64 increment (golden ratio)
TASK_SALT = 0xD1B54A32D192ED03
STREAMS = {"jitter": 0, "delivery": 1}

# YiVideo: random.uniform(0.8, 1.2) == 0.8 + (1.2 - 0.8) * random()
JITTER_LO = 0.8
JITTER_SPAN = 1.2 - 0.8

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GAMMA = np.uint64(GAMMA)
_SALT = np.uint64(TASK_SALT)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_U53 = 2.0 ** -53


def stream_key(seed: int, replication: int, stream: str) -> np.uint64:
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(replication, STREAMS[stream]))
    return ss.generate_state(1, dtype=np.uint64)[0]


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


def stream_state(key, task_index: int) -> np.uint64:
    """`task_state` for Python callers: as a numpy uint64, which numba accepts back (a Python
    int above 2**63 would not fit the int64 that numba types Python ints as)."""
    return np.uint64(task_state(key, task_index))


@njit(cache=True, inline="always")
def uniform(state, k):
    """Draw k (0-based) of the stream starting at `state`, in [0, 1)."""
    return np.float64(mix(np.uint64(state) + np.uint64(k + 1) * _GAMMA) >> _S11) * _U53


@njit(cache=True, inline="always")
def jitter_factor(u):
    """YiVideo's backoff jitter factor for a uniform draw u."""
    return JITTER_LO + JITTER_SPAN * u
