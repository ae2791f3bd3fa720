"""The per-minute bins of a run (peak-minute Redis load): one definition for every engine.

Plain Python, so the reference model and the metrics never load numba; the compiled engine's
twin is `gpusim.engines.jit_rng.minute_of` (the same expression, compiled).
"""

from __future__ import annotations

MINUTE_S = 60.0


def minute_of(t: float) -> int:
    """The minute bin of server time t (seconds from the first arrival): int(t // 60.0)."""
    return int(t // MINUTE_S)
