"""Randomness and start-up: the Python draws (gpusim.rng, gpusim.timebins) and their numba twins
(gpusim.engines.jit_rng) give the same bits: the reference model uses one, the compiled engine
the other, and the differential tests rely on them agreeing."""

from __future__ import annotations

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from gpusim import rng, timebins
from gpusim.engines import jit_rng

U64 = st.integers(0, 2**64 - 1)
# SplitMix64 reference values for seed 0 (Vigna's splitmix64.c, first three outputs): the
# finaliser applied to GAMMA, 2*GAMMA, 3*GAMMA. uniform(0, k) is draw k of state 0.
SPLITMIX_SEED0 = (0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F)


def test_the_python_draws_are_splitmix64():
    for k, expected in enumerate(SPLITMIX_SEED0):
        assert rng.mix((k + 1) * rng.GAMMA % 2**64) == expected
        assert rng.uniform(0, k) == (expected >> 11) * 2.0**-53


@settings(max_examples=300, deadline=None)
@given(key=U64, index=st.integers(0, 2**40), k=st.integers(0, 2**31))
def test_python_and_numba_draws_agree_to_the_bit(key, index, k):
    py_state = rng.task_state(key, index)
    jit_state = jit_rng.task_state(np.uint64(key), index)
    assert py_state == int(jit_state)
    u = rng.uniform(py_state, k)
    assert 0.0 <= u < 1.0
    assert u == jit_rng.uniform(np.uint64(py_state), k)
    assert rng.jitter_factor(u) == jit_rng.jitter_factor(u)


@settings(max_examples=300, deadline=None)
@given(t=st.floats(0, 366 * 86400.0))
def test_minute_bins_agree(t):
    assert timebins.minute_of(t) == jit_rng.minute_of(t) == int(t // 60.0)


def test_importing_the_model_does_not_load_numba():
    import subprocess
    import sys
    code = ("import sys, gpusim, gpusim.simulation, gpusim.model.reference, gpusim.real.replay; "
            "from gpusim.cli import app; print('numba' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_numba_starts_without_scipy_linalg_and_blas_still_works():
    """gpusim.engines.numba_start defers numba's scipy.linalg probe; BLAS code compiled later
    in the same process must still work (numba imports scipy.linalg when it needs it)."""
    import subprocess
    import sys
    code = (
        "import sys, numpy as np\n"
        "from gpusim.engines.numba_start import load_numpy_support\n"
        "load_numpy_support()  # as gpusim.engines.numba_cache does before a compile\n"
        "import numba.np.arraymath\n"
        "print('scipy.linalg' in sys.modules, numba.np.arraymath._HAVE_BLAS)\n"
        "from numba import njit\n"
        "f = njit(lambda a, b: np.dot(a, b))\n"
        "a = np.arange(6.0).reshape(2, 3)\n"
        "print(np.array_equal(f(a, a.T), a @ a.T), np.dot(a[0], a[1]) == f(a[0], a[1]))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True", "True", "True"], out.stderr


def test_auto_runs_small_runs_on_the_reference_and_writes_the_same_bytes():
    from gpusim import simulate
    from gpusim.config import GpuLockConfig
    from gpusim.engines import SMALL_RUN_POLLS, engine_for_run
    from gpusim.traces.format import trace_from_rows
    prod = GpuLockConfig(poll_interval=2, max_wait_time=1800, lock_timeout=3600,
                         max_poll_interval=10)
    # bound per task: 1800 s x (1/2 s + 1/30 s) + 2 = 962 polls
    assert engine_for_run("auto", 20, [prod]) == "reference"
    assert engine_for_run("auto", 21, [prod]) == "fast"
    assert 20 * 962 <= SMALL_RUN_POLLS < 21 * 962
    # the smallest poll interval of any config (a change, another node) sets the bound
    fine = prod.model_copy(update={"poll_interval": 0.05})
    assert engine_for_run("auto", 1, [prod, fine]) == "fast"
    assert engine_for_run("auto", 1, [prod], longest_wait_s=86400.0) == "fast"
    assert engine_for_run("fast", 1, [prod]) == "fast"
    assert engine_for_run("reference", 10**6, [prod]) == "reference"
    rows = [{"task_type": "ocr", "arrival_s": 0.5 * i, "duration_s": 30.0} for i in range(8)]
    trace = trace_from_rows(rows)
    auto, fast = (simulate(trace, prod, seed=7, engine=e) for e in ("auto", "fast"))
    assert [r.records for r in auto.replications] == [r.records for r in fast.replications]
    # the result names the engine asked for; everything else is the same to the byte
    assert auto.dumps() == fast.dumps().replace('"engine": "fast"', '"engine": "auto"')
    assert auto.dumps() != fast.dumps()


def test_a_small_simulate_on_the_command_line_never_loads_numba(tmp_path):
    import subprocess
    import sys
    from pathlib import Path
    trace = tmp_path / "one.jsonl"
    trace.write_text('{"task_type": "paddleocr", "arrival_s": 0, "duration_s": 1}\n')
    config = Path(__file__).resolve().parents[1] / "examples" / "config.yml"
    code = ("import runpy, sys\n"
            f"sys.argv = ['gpusim', 'simulate', {str(trace)!r}, '-c', {str(config)!r}]\n"
            "try:\n    runpy.run_module('gpusim', run_name='__main__')\n"
            "except SystemExit as e:\n    code = e.code\n"
            "print('numba' in sys.modules, code, file=sys.stderr)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stderr.strip().splitlines()[-1] == "False 0", out.stderr
    assert "success_rate" in out.stdout


def test_minute_bins_agree_at_the_minute_boundaries():
    """jit_rng.minute_of takes the rounded quotient's floor and corrects it by one where it
    rounded up: every multiple of 60 s and the floats two steps either side of it, from far
    negative to the end of its exact range (and past it, where it falls back to t // 60.0;
    bins must fit numba's int64 either way)."""
    ks = np.concatenate((np.arange(-2000, 20000), np.arange(2**38 - 500, 2**38 + 500),
                         np.arange(2**40 - 500, 2**40 + 500)))
    t0 = ks * 60.0
    down = np.nextafter(t0, -np.inf)
    up = np.nextafter(t0, np.inf)
    times = np.concatenate((t0, down, np.nextafter(down, -np.inf), up, np.nextafter(up, np.inf),
                            [2.0**46, -2.0**46, 2.0**50 + 60.0, 5e-324, -5e-324, -0.0]))
    for t in times.tolist():
        assert jit_rng.minute_of(t) == int(t // 60.0), t
