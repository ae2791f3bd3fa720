"""Engines: interchangeable implementations of one model, held to the reference by tests.

An engine is a class built as ``Engine(trace, cluster, settings_per_node, seed=,
replication=, time_scale=)`` whose ``run()`` returns a `gpusim.records.RunLog`. Two exist:
``reference`` (the SimPy model, the executable specification) and ``fast`` (the same model
compiled with numba, the default); tests/test_differential.py holds them to identical output.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from gpusim.errors import InputError

if TYPE_CHECKING:
    from gpusim.cluster import Cluster
    from gpusim.config import LockSettings
    from gpusim.records import RunLog
    from gpusim.traces.format import Trace

ENGINES = ("fast", "reference")


class Engine(Protocol):
    engine_name: str

    def __init__(self, trace: "Trace", cluster: "Cluster", settings: "list[LockSettings]", *,
                 seed: int, replication: int = 0, time_scale: float = 1.0) -> None: ...

    def run(self) -> "RunLog": ...


def engine_class(engine: str) -> type[Engine]:
    """The engine named `engine` (imported on first use: the compiled one loads numba code)."""
    if engine == "reference":
        from gpusim.model.reference import Model
        return Model
    if engine == "fast":
        from gpusim.engines.compiled import CompiledModel
        return CompiledModel
    raise InputError(f"unknown engine '{engine}' (choose {', '.join(ENGINES)})",
                     field="engine")
