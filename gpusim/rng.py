"""Owned, counter-based randomness: SplitMix64 draws as pure functions of (seed, task, k).

One `numpy.random.SeedSequence` per replication derives a 64-bit key per named stream. A task's
jitter is then a SplitMix64 stream keyed by (stream key, task index): draw k of task i is a pure
function of (seed, replication, i, k). That gives common random numbers for free (two configs
replayed on one trace see the same draws, whatever else differs).

These are plain Python (exact integer arithmetic modulo 2**64), so the reference model, the real
lock client and small runs never load numba. The compiled engine has numba twins of the same
functions in `gpusim.engines.jit_rng`; tests/test_rng.py holds the two to the same bits, and the
differential tests hold the engines that use them to identical records.
"""

from __future__ import annotations

import numpy as np

GAMMA = 0x9E3779B97F4A7C15  # SplitMix64 increment (golden ratio)
TASK_SALT = 0xD1B54A32D192ED03
MIX1 = 0xBF58476D1CE4E5B9
MIX2 = 0x94D049BB133111EB
STREAMS = {"jitter": 0, "delivery": 1}

# YiVideo: random.uniform(0.8, 1.2) == 0.8 + (1.2 - 0.8) * random()
JITTER_LO = 0.8
JITTER_SPAN = 1.2 - 0.8

_MASK = (1 << 64) - 1
U53 = 2.0 ** -53  # a 53-bit integer times this is exactly a double in [0, 1)


def stream_key(seed: int, replication: int, stream: str) -> np.uint64:
    ss = np.random.SeedSequence(entropy=seed, spawn_key=(replication, STREAMS[stream]))
    return ss.generate_state(1, dtype=np.uint64)[0]


def mix(z: int) -> int:
    """SplitMix64's finaliser on a 64-bit unsigned integer."""
    z = ((z ^ (z >> 30)) * MIX1) & _MASK
    z = ((z ^ (z >> 27)) * MIX2) & _MASK
    return z ^ (z >> 31)


def task_state(key: int | np.uint64, task_index: int) -> int:
    """Starting state of task `task_index`'s stream under stream key `key` (well mixed)."""
    return mix(int(key) ^ mix((int(task_index) * TASK_SALT + GAMMA) & _MASK))


#: The name the Python callers use (the engines' twin of it is gpusim.engines.jit_rng).
stream_state = task_state


def uniform(state: int | np.uint64, k: int) -> float:
    """Draw k (0-based) of the stream starting at `state`, in [0, 1)."""
    return (mix((int(state) + (k + 1) * GAMMA) & _MASK) >> 11) * U53


def jitter_factor(u: float) -> float:
    """YiVideo's backoff jitter factor for a uniform draw u."""
    return JITTER_LO + JITTER_SPAN * u
