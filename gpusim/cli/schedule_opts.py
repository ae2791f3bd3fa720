"""The config-change options shared by `simulate`, `compare` and `validate`:
`--config-change TIME[@NODE]=FILE` (repeatable) and `--schedule S.yml` (gpusim.schedule)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

if TYPE_CHECKING:
    from gpusim.schedule import ConfigChange

ConfigChangeOpt = Annotated[list[str], typer.Option(
    "--config-change", metavar="TIME[@NODE]=FILE",
    help="From trace second TIME on, tasks that START acquiring (on NODE, or on every node) "
         "read the gpu_lock of FILE; tasks already waiting or holding keep theirs (repeatable)",
    show_default="none")]
ScheduleOpt = Annotated[Optional[Path], typer.Option(
    "--schedule", help="Schedule YAML: changes: [{at_s, config, node}] (README: Dynamic config)",
    show_default="none")]


def load_changes(config_change: list[str], schedule: Optional[Path]) -> list["ConfigChange"]:
    """Both options together, in time order; two at one time on one node are refused."""
    from gpusim.schedule import load_schedule, parse_config_change, sorted_changes
    changes = list(load_schedule(schedule)) if schedule is not None else []
    changes += [parse_config_change(text) for text in config_change]
    return sorted_changes(changes)


def print_changes(res) -> None:  # noqa: ANN001 - SimulationResult
    """One line per config change: when, where, from which file, and how many tasks read it
    (replication 0; index k is the records' config_index)."""
    import numpy as np

    from gpusim.cli.common import out
    from gpusim.records import TaskTable
    listed = res.inputs.get("config_changes") or []
    if not listed:
        return
    used = np.bincount(TaskTable.from_records(res.replications[0].records).config_index,
                       minlength=len(listed) + 1)
    out().print(f"config in force when each task started acquiring: initial for {used[0]} "
                f"task(s)", highlight=False)
    for c in listed:
        where = "every node" if c["node"] is None else f"node {c['node']}"
        out().print(f"  change {c['index']}: from {c['at_s']:g} s on {where}, {c['source']} "
                    f"({c['config_digest']}): {used[c['index']]} task(s)", highlight=False)
