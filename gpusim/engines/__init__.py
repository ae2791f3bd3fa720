"""Engines: interchangeable implementations of one model, held to the reference by tests.

An engine is a class built as ``Engine(trace, cluster, settings_per_node, seed=,
replication=, time_scale=, changes=)`` whose ``run()`` returns a `gpusim.records.RunLog`
(``changes``: config changes during the trace, gpusim.schedule; each task reads the config in
force on its node when it starts acquiring, `gpusim.model.params.ConfigTimeline`). Two exist:
``reference`` (the SimPy model, the executable specification) and ``fast`` (the same model
compiled with numba, the default); tests/test_differential.py holds them to identical output.
A third name, ``auto`` (the command line's default), picks one of the two per run.
"""

from __future__ import annotations

import gc
import importlib
import sys
from typing import TYPE_CHECKING, Protocol, Sequence

from gpusim.errors import InputError

if TYPE_CHECKING:
    from gpusim.cluster import Cluster
    from gpusim.config import GpuLockConfig, LockSettings
    from gpusim.records import RunLog
    from gpusim.schedule import ConfigChange
    from gpusim.traces.format import Trace

ENGINES = ("fast", "reference", "auto")


class Engine(Protocol):
    engine_name: str

    def __init__(self, trace: "Trace", cluster: "Cluster", settings: "list[LockSettings]", *,
                 seed: int, replication: int = 0, time_scale: float = 1.0,
                 changes: "Sequence[ConfigChange]" = ()) -> None: ...

    def run(self) -> "RunLog": ...


#: Poll steps up to which "auto" runs the reference engine (see `engine_for_run`).
SMALL_RUN_POLLS = 20_000


def engine_for_run(engine: str, n_tasks: int, configs: "Sequence[GpuLockConfig]",
                   longest_wait_s: float = 0.0) -> str:
    """The engine that runs: "auto" is "fast", except that it hands a small run to the
    reference engine (the command line's default: a small run answers without loading numba).

    Both write the same records to the bit (tests/test_differential.py), so this changes no
    output, only the time to it: the compiled engine first loads numba and its machine code
    (about 1.5 s on a 2-core machine), while the reference steps a few thousand polls in a
    fraction of that. The bound counts the most polls a task can make (its whole max wait at
    the shortest poll interval, plus one event-driven wake-up per fallback period) in the worst
    case, so a run only goes to the reference when it is small whatever happens in it.
    """
    if engine != "auto":
        return engine
    if not configs:
        return "fast"
    polls = max(max(c.max_wait_time, longest_wait_s) * (1.0 / c.poll_interval
                                                         + 1.0 / c.fallback_timeout) + 2.0
                for c in configs)
    return "reference" if n_tasks * polls <= SMALL_RUN_POLLS else "fast"


def check_engine(engine: str) -> None:
    """An unknown engine name is bad input (checked without importing the engine)."""
    if engine not in ENGINES:
        raise InputError(f"unknown engine '{engine}' (choose {', '.join(ENGINES)})",
                         field="engine")


def engine_class(engine: str) -> type[Engine]:
    """The engine named `engine` (imported on first use: the compiled one loads numba code)."""
    if engine == "reference":
        from gpusim.model.reference import Model
        return Model
    if engine in ("fast", "auto"):  # auto's choice is made per run (engine_for_run)
        if "gpusim.engines.compiled" not in sys.modules:
            _import_uncollected("gpusim.engines.compiled")
        from gpusim.engines.compiled import CompiledModel
        return CompiledModel
    raise InputError(f"unknown engine '{engine}' (choose {', '.join(ENGINES)})",
                     field="engine")


# Set by the command line (gpusim.cli.main), whose process ends after one command: freeze what
# is alive after numba's import. A library user's process (a notebook, a service) keeps the
# collector's usual reach over its own objects.
FREEZE_AFTER_IMPORT = False


def _import_uncollected(module: str) -> None:
    """Import `module` (numba and the compiled engine) with the cyclic garbage collector paused,
    and in a command-line process freeze everything alive (gc.freeze) so that later
    collections skip it.

    Importing numba builds a few hundred thousand objects (types, registries, functions) that
    live as long as the process and are no garbage; walking them was 0.08 s of the collector's
    0.12 s in a `gpusim simulate` on the week of 16 GPUs (2-core VM). Frozen objects are still
    freed by reference counting; only a reference cycle among them would wait for the process
    to end, which is why only the command line freezes."""
    if not gc.isenabled():
        importlib.import_module(module)
        return
    gc.disable()
    try:
        importlib.import_module(module)
    finally:
        if FREEZE_AFTER_IMPORT:
            gc.freeze()
        gc.enable()
