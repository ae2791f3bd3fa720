"""Load a function's machine code from numba's cache without refreshing every numba registry.

Before it looks in its cache, numba refreshes its CPU target context (numba.core.caching,
Cache.load_overload): it imports and installs every typing and lowering registry numba has
(dicts, lists, jitclass, datetime, unicode, ...). Compiling needs them; code loaded from the
cache is already lowered and linked, and only needs numba's runtime (NRT: the array allocator
it calls) to be set up; not even numba.np.arraymath (0.025 s: numba's NumPy implementations
beyond those the cached code's own modules import). On a 2-core machine the refresh is about
0.3 s of the 0.4 s the load takes, in every CLI run of the compiled engine. Numba's own
developers tried the same cut (numba/numba pull request #9806: refresh on a cache hit only for
object mode or parallel code; the engine is neither).

`load_cached(dispatcher, sig)` is `dispatcher.compile(sig)` with that first refresh replaced
by the runtime's set-up alone. Only the cache's own refresh call is replaced: on a cache miss
numba's compiler refreshes the context itself (numba.core.compiler, CompilerBase), fully, as
always, after importing numba's NumPy support without its scipy.linalg probe
(gpusim.engines.numba_start), and any later compile in the process refreshes as numba does.
The swap is made under numba's compiler lock, so no other thread's compile can meet it. If
numba's internals are not what this expects, it is a plain `dispatcher.compile(sig)`.
tests/test_numba_cache.py loads cached code, runs it, and then compiles new code in the same
process.

`drop_stale(dispatcher, sources)`: numba keys a cached function on its own source file's
timestamp and size only, but the engine's machine code also holds what it inlined from another
file (gpusim/engines/jit_rng.py): a change to that file alone would load the old code. A digest
of every source the engine compiles from (and numba's version) is kept beside the cache; when it
differs, those files' cache entries are dropped, so the next load compiles afresh.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, Sequence

from gpusim.engines.numba_start import load_numpy_support
from gpusim.errors import InputError
from gpusim.output import atomic_write_text

SOURCES_STAMP = "gpusim-engine-sources.sha256"


def load_cached(dispatcher: Any, sig: tuple[Any, ...]) -> None:
    """`dispatcher.compile(sig)`, skipping numba's full context refresh before its cache look-up
    (see the module doc)."""
    try:
        from numba.core.compiler_lock import global_compiler_lock
        from numba.core.runtime import rtsys
        ctx = dispatcher.targetctx
        if not callable(getattr(type(ctx), "refresh", None)) or "refresh" in vars(ctx) \
                or not callable(getattr(rtsys, "initialize", None)):
            raise AttributeError("refresh")
    except (ImportError, AttributeError, TypeError):
        load_numpy_support()
        dispatcher.compile(sig)
        return

    def runtime_only() -> None:
        ctx.refresh = before_compile  # once; a miss then compiles, and refreshes first
        rtsys.initialize(ctx)

    def before_compile() -> None:
        del ctx.refresh  # once: every later refresh is numba's own
        load_numpy_support()  # what a compile needs, without numba's scipy.linalg probe
        type(ctx).refresh(ctx)

    with global_compiler_lock:  # reentrant; compile takes it too
        ctx.refresh = runtime_only
        try:
            dispatcher.compile(sig)
        finally:
            vars(ctx).pop("refresh", None)


def drop_stale(dispatcher: Any, sources: Sequence[Path]) -> bool:
    """Drop the cache entries of ``sources`` when their digest (with numba's version) differs
    from the one stamped beside the cache; returns whether it dropped them. Without a cache
    directory it can write to, it does nothing: numba then compiles or caches elsewhere."""
    import numba

    try:
        cache_dir = Path(dispatcher._cache._cache_path)
        digest = hashlib.sha256(b"".join(Path(p).read_bytes() for p in sources)
                                + numba.__version__.encode()).hexdigest()
    except (AttributeError, OSError, TypeError):
        return False
    stamp = cache_dir / SOURCES_STAMP
    try:
        if stamp.read_text() == digest:
            return False
    except OSError:
        pass
    prefixes = tuple(f"{Path(p).stem}." for p in sources)
    try:
        for f in cache_dir.iterdir():
            if f.name.startswith(prefixes) and f.suffix in (".nbi", ".nbc"):
                f.unlink(missing_ok=True)
        atomic_write_text(stamp, digest)  # a reader never sees half a digest
    except (OSError, InputError):
        return False
    return True
