"""Start numba without paying for a probe the engine does not need.

Before numba compiles anything it imports its NumPy implementations, and one of them
(numba.np.arraymath) imports scipy.linalg at import time only to learn whether BLAS is there for
np.dot and friends. On a 2-core machine that import is 0.3 to 0.5 s, and the compiled engine uses
no linear algebra. (Loading the engine's machine code from numba's cache needs neither:
gpusim.engines.numba_cache calls this only when it has to compile.)

`load_numpy_support` imports that module with the probe answered "no BLAS", then sets numba's
answer back to "yes", which is true (scipy is a dependency of gpusim): anything compiled later
that does use BLAS imports scipy.linalg then, through numba's own ensure_blas, exactly as it would
have. Nothing else changes; tests/test_rng_and_start.py compiles an np.dot afterwards to show
it.
"""

from __future__ import annotations

import sys

_PROBED = "scipy.linalg.cython_blas"


def load_numpy_support() -> None:
    """Import numba's NumPy support once, deferring its scipy.linalg import (see module doc)."""
    if "numba.np.arraymath" in sys.modules or "scipy.linalg" in sys.modules:
        return  # already loaded, or the import is paid for anyway
    sys.modules[_PROBED] = None  # type: ignore[assignment]  # makes the probe's import fail
    try:
        import numba.np.arraymath as arraymath
    finally:
        del sys.modules[_PROBED]
    arraymath._HAVE_BLAS = True  # the truth: numba.np.linalg.ensure_blas imports it on demand
