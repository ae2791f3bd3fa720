"""gpusim.engines.numba_cache: loading machine code from numba's cache without numba's full
registry refresh must give the same working code, on a miss compile as usual, and leave numba
able to compile anything afterwards. Each case runs in a fresh interpreter (as a CLI run does) on
a tiny cached function of its own, so it costs a second or two, not the engine's compile."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

KERNEL = textwrap.dedent("""
    import numpy as np
    from numba import njit

    @njit(cache=True, nogil=True)
    def cumulative(x, n):
        out = np.empty(n)  # allocates: needs numba's runtime (NRT) set up
        s = 0.0
        for i in range(n):
            s += x[i % x.shape[0]]
            out[i] = s
        return out, s
""")

CHILD = textwrap.dedent("""
    import json, sys
    import numba, numpy as np
    sys.path.insert(0, sys.argv[1])
    import tinykernel
    from gpusim.engines.numba_cache import load_cached
    x = np.arange(5.0)
    sig = (numba.typeof(x), numba.typeof(7))
    load_cached(tinykernel.cumulative, sig)
    ctx = tinykernel.cumulative.targetctx
    skipped_registries = "numba.typed.typeddict" not in sys.modules
    skipped_numpy_support = "numba.np.arraymath" not in sys.modules
    out, s = tinykernel.cumulative(x, 7)

    @numba.njit
    def uses_a_dict(keys):  # compiled after the load: needs the registries the load skipped
        d = {keys[0]: 0}  # typed by its first entry
        for k in keys:
            d[k] = d.get(k, 0) + 1
        return len(d)

    print(json.dumps({
        "hits": sum(tinykernel.cumulative.stats.cache_hits.values()),
        "misses": sum(tinykernel.cumulative.stats.cache_misses.values()),
        "out": out.tolist(), "s": s, "patched_left": "refresh" in vars(ctx),
        "skipped_registries": skipped_registries,
        "skipped_numpy_support": skipped_numpy_support,
        "scipy_linalg": "scipy.linalg" in sys.modules,
        "dict_count": uses_a_dict(np.array([3, 1, 3, 2])),
    }))
""")


def _run(folder: Path) -> dict:
    done = subprocess.run([sys.executable, "-c", CHILD, str(folder)], capture_output=True,
                          text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_cache_miss_compiles_then_a_hit_loads_without_the_refresh(tmp_path):
    (tmp_path / "tinykernel.py").write_text(KERNEL)
    expected = [0.0, 1.0, 3.0, 6.0, 10.0, 10.0, 11.0]
    first = _run(tmp_path)  # no cache yet: numba compiles (its compiler refreshes fully)
    assert first["misses"] == 1 and first["hits"] == 0
    second = _run(tmp_path)  # from the cache written by the first run
    assert second["hits"] == 1 and second["misses"] == 0
    assert second["skipped_registries"]  # the point: numba's full refresh did not run
    assert second["skipped_numpy_support"]  # nor the import of numba's NumPy support
    assert not first["skipped_numpy_support"]  # which a compile needs: imported first,
    assert not first["scipy_linalg"]  # without numba's scipy.linalg probe (numba_start)
    for run in (first, second):
        assert run["out"] == expected and run["s"] == 11.0
        assert not run["patched_left"]  # numba's own refresh is back for later compiles
        assert run["dict_count"] == 3  # and numba compiles new code after the load


HELPER = textwrap.dedent("""
    from numba import njit

    @njit(cache=True, inline="always")
    def scale(x):
        return x * FACTOR
""")

CALLER = textwrap.dedent("""
    from numba import njit
    from tinyhelper import scale

    @njit(cache=True)
    def total(n):
        s = 0.0
        for i in range(n):
            s += scale(float(i))
        return s
""")

STALE_CHILD = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import numba
    sys.path.insert(0, sys.argv[1])
    import tinycaller, tinyhelper
    from gpusim.engines.numba_cache import drop_stale
    dropped = None
    if sys.argv[2] == "check":
        dropped = drop_stale(tinycaller.total, [Path(tinycaller.__file__),
                                                Path(tinyhelper.__file__)])
    print(json.dumps({"total": tinycaller.total(4), "dropped": dropped,
                      "hits": sum(tinycaller.total.stats.cache_hits.values())}))
""")


def _stale_run(folder: Path, mode: str) -> dict:
    done = subprocess.run([sys.executable, "-c", STALE_CHILD, str(folder), mode],
                          capture_output=True, text=True, timeout=120, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_change_to_an_inlined_helper_alone_drops_the_callers_cache(tmp_path):
    """numba keys `total`'s cache on tinycaller.py alone, so after a change to the helper it
    inlines (tinyhelper.py) it loads the old machine code (shown first, without the check: the
    hazard is real); `drop_stale` sees the sources' digest change and drops it."""
    (tmp_path / "tinycaller.py").write_text(CALLER)
    helper = tmp_path / "tinyhelper.py"
    helper.write_text(HELPER.replace("FACTOR", "2.0"))
    first = _stale_run(tmp_path, "check")  # 2 x (0 + 1 + 2 + 3)
    assert first["total"] == 12.0 and first["dropped"] is True  # no stamp yet
    assert _stale_run(tmp_path, "check") == {"total": 12.0, "dropped": False, "hits": 1}
    helper.write_text(HELPER.replace("FACTOR", "3.0"))  # same size: the stamp alone tells
    assert _stale_run(tmp_path, "plain")["total"] == 12.0  # stale: numba's own check misses it
    fresh = _stale_run(tmp_path, "check")
    assert fresh["total"] == 18.0 and fresh["dropped"] is True and fresh["hits"] == 0
    assert _stale_run(tmp_path, "check") == {"total": 18.0, "dropped": False, "hits": 1}
