"""Owned, counter-based randomness.

One `numpy.random.SeedSequence` per replication derives a 64-bit key per named stream. A task's
jitter is then a SplitMix64 stream keyed by (stream key, task index): draw k of task i is a pure
function of (seed, replication, i, k). That gives common random numbers for free (two configs
replayed on one trace see the same draws, whatever else differs) and lets the fast engine draw a
block of a task's future jitter in one vectorised call while producing exactly the numbers the
poll-by-poll engine draws one at a time.
"""

from __future__ import annotations

import numpy as np

MASK = (1 << 64) - 1
GAMMA = 0x9E3779B97F4A7C15  # SplitMix64 increment (golden ratio)
TASK_SALT = 0xD1B54A32D192ED03
STREAMS = {"jitter": 0, "delivery": 1}

# YiVideo: random.uniform(0.8, 1.2) == 0.8 + (1.2 - 0.8) * random()
JITTER_LO = 0.8
JITTER_SPAN = 1.2 - 0.8
U53 = 2.0 ** -53


def stream_key(seed: int, replication: int, stream: str) -> int:
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(replication, STREAMS[stream]))
    return int(ss.generate_state(1, dtype=np.uint64)[0])


def _mix(z: int) -> int:
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & MASK
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def task_state(key: int, task_index: int) -> int:
    """Starting state of task `task_index`'s stream (itself well mixed)."""
    return _mix((key ^ _mix((task_index * TASK_SALT + GAMMA) & MASK)) & MASK)


def uniform(state: int, k: int) -> float:
    """Draw k (0-based) of the stream starting at `state`, in [0, 1)."""
    return (_mix((state + (k + 1) * GAMMA) & MASK) >> 11) * U53


_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def uniforms(state: int, k0: int, n: int) -> np.ndarray:
    """Draws k0 .. k0+n-1 of the stream, identical to `uniform` one by one."""
    with np.errstate(over="ignore"):
        ks = np.arange(k0 + 1, k0 + n + 1, dtype=np.uint64)
        z = np.uint64(state) + ks * np.uint64(GAMMA)
        z = (z ^ (z >> np.uint64(30))) * _M1
        z = (z ^ (z >> np.uint64(27))) * _M2
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) * U53


def jitter_factor(u: float) -> float:
    return JITTER_LO + JITTER_SPAN * u
