"""Config changes during a trace (the spec's GPU_LOCK_CONFIG_003, dynamic configuration).

YiVideo's `get_gpu_lock_config()` re-reads config.yml (and the `GPU_LOCK_*` variables) on every
task, so an edit takes effect for the tasks that start acquiring after it, while tasks already
waiting or holding keep the values they read (design/yivideo-lock.md). A `ConfigChange` says:
from trace time `at_s` on, tasks starting to acquire on `node` (None: every node) read
`settings.gpu_lock`. A change at exactly a task's acquire start applies to it (the read happens
at that instant; "at or after" is the rule in both engines and in the real replay).

Only `gpu_lock` changes: the `gpu_lock_monitor` process reads its own section once when it
starts, so a change's monitor section is not used (gpusim.simulation refuses one that differs
while the monitor option is on, rather than ignore it).

Inputs: `--config-change TIME=FILE` / `TIME@NODE=FILE` on the command line
(`parse_config_change`), or a schedule YAML (`load_schedule`)::

    changes:
      - at_s: 3600                # trace seconds (the frame of the trace's arrival_s)
        config: candidate.yml     # a config.yml path (relative to this file) ...
      - at_s: 7200
        node: node1               # optional: that node only
        config: {poll_interval: 1, max_wait_time: 600}   # ... or inline gpu_lock keys
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

from gpusim.config import (MAX_AGE_S, GpuLockConfig, LockSettings, config_digest,
                           load_lock_settings, parse_lock_settings)
from gpusim.errors import InputError, InputErrors
from gpusim.yamlio import key_lines, line_of, read_yaml

CHANGE_KEYS = ("at_s", "config", "node")


@dataclass(frozen=True)
class ConfigChange:
    """From trace time `at_s` (seconds, the trace's arrival frame) on, tasks that start acquiring
    on `node` (None: every node) use `settings.gpu_lock`."""

    at_s: float
    settings: LockSettings
    node: str | None = None
    source: str = "<memory>"

    def __post_init__(self) -> None:
        if isinstance(self.settings, GpuLockConfig):  # a bare gpu_lock is accepted too
            object.__setattr__(self, "settings", LockSettings(gpu_lock=self.settings,
                                                              source=self.source))
        if not isinstance(self.settings, LockSettings):
            raise InputError("must be LockSettings or GpuLockConfig", file=self.source,
                             field="settings")
        check_time(self.at_s, file=self.source, field="at_s")
        object.__setattr__(self, "at_s", float(self.at_s))
        if self.node is not None and (not isinstance(self.node, str) or not self.node):
            raise InputError(f"must be a node name, got {self.node!r}", file=self.source,
                             field="node")

    def to_json(self, index: int) -> dict[str, Any]:
        return {"index": index, "at_s": self.at_s, "node": self.node, "source": self.source,
                "gpu_lock": self.settings.gpu_lock.model_dump(),
                "config_digest": config_digest(self.settings)}


def check_time(at_s: Any, *, file: str | None = None, line: int | None = None,
               field: str = "at_s") -> None:
    """A change time is a finite number of seconds in [0, 366 days] (the longest trace)."""
    ok = (isinstance(at_s, numbers.Real) and not isinstance(at_s, bool)
          and math.isfinite(at_s) and 0 <= at_s <= MAX_AGE_S)
    if not ok:
        raise InputError(f"must be a number of trace seconds from 0 to {MAX_AGE_S:g} "
                         f"(366 days), got {at_s!r}", file=file, line=line, field=field)


def first_conflict(changes: Sequence[ConfigChange]) -> tuple[int, int] | None:
    """(i, j), i < j, of the first two changes at one time on one node (a None node is every
    node), in the given order; None when there is none."""
    seen: dict[float, list[int]] = {}
    for j, b in enumerate(changes):
        for i in seen.get(b.at_s, []):
            a = changes[i]
            if a.node is None or b.node is None or a.node == b.node:
                return i, j
        seen.setdefault(b.at_s, []).append(j)
    return None


def conflict_message(a: ConfigChange, b: ConfigChange) -> str:
    where = "every node" if a.node is None or b.node is None else f"node {b.node}"
    return (f"two changes at {b.at_s:g} s on {where} ({a.source} and {b.source}): which one "
            f"applies would be arbitrary")


def sorted_changes(changes: Iterable[ConfigChange]) -> list[ConfigChange]:
    """The changes in time order (stable), refusing two changes at one time on one node."""
    given = list(changes)
    for c in given:
        if not isinstance(c, ConfigChange):
            raise InputError(f"expected ConfigChange, got {type(c).__name__}", field="changes")
    pair = first_conflict(given)
    if pair is not None:
        a, b = given[pair[0]], given[pair[1]]
        raise InputError(conflict_message(a, b), file=b.source, field="at_s")
    return sorted(given, key=lambda c: c.at_s)


# -- the command line: TIME=FILE or TIME@NODE=FILE --------------------------------------------
def parse_config_change(text: str, *, option: str = "--config-change",
                        environ: Mapping[str, str] | None = None) -> ConfigChange:
    """`3600=candidate.yml` or `3600@node1=candidate.yml`; errors name the option."""
    when, sep, path = text.partition("=")
    if not sep or not path or not when:
        raise InputError(f"expected TIME=FILE or TIME@NODE=FILE, got {text!r}", field=option)
    when, _, node = when.partition("@")
    try:
        at_s = float(when)
    except ValueError:
        raise InputError(f"TIME must be trace seconds, got {when!r}", field=option) from None
    check_time(at_s, field=option)
    if "@" in text.split("=", 1)[0] and not node:
        raise InputError(f"empty node name in {text!r}", field=option)
    settings = load_lock_settings(path, environ=environ)
    return ConfigChange(at_s, settings, node or None, source=path)


# -- the schedule YAML ------------------------------------------------------------------------
def load_schedule(path: str | Path, *,
                  environ: Mapping[str, str] | None = None) -> list[ConfigChange]:
    """The changes of a schedule YAML, in time order; errors name the file, line and field."""
    source = str(path)
    data, text = read_yaml(path, "schedule")
    lines = key_lines(text)
    if not isinstance(data, Mapping) or "changes" not in data:
        raise InputError("expected a mapping with a 'changes' list", file=source, line=1)
    extra = [k for k in data if k != "changes"]
    if extra:
        raise InputError("unknown key (a schedule holds 'changes' only)", file=source,
                         line=lines.get((str(extra[0]),)), field=str(extra[0]))
    items = data["changes"]
    if not isinstance(items, list):
        raise InputError("expected a list of changes", file=source,
                         line=lines.get(("changes",)), field="changes")
    base = Path(path).parent
    changes = [_change(item, k, source, lines, base, environ) for k, item in enumerate(items)]
    pair = first_conflict(changes)
    if pair is not None:
        j = pair[1]
        raise InputError(conflict_message(changes[pair[0]], changes[j]), file=source,
                         line=line_of(lines, ("changes", str(j), "at_s")),
                         field=f"changes.{j}.at_s")
    return sorted(changes, key=lambda c: c.at_s)


def _change(item: Any, k: int, source: str, lines: dict[tuple[str, ...], int], base: Path,
            environ: Mapping[str, str] | None) -> ConfigChange:
    where = ("changes", str(k))
    field = f"changes.{k}"
    if not isinstance(item, Mapping):
        raise InputError("expected a mapping with at_s, config and optional node", file=source,
                         line=line_of(lines, where), field=field)
    for key in item:
        if key not in CHANGE_KEYS:
            raise InputError(f"unknown key (known: {', '.join(CHANGE_KEYS)})", file=source,
                             line=line_of(lines, where + (str(key),)), field=f"{field}.{key}")
    for key in ("at_s", "config"):
        if key not in item:
            raise InputError(f"missing '{key}'", file=source, line=line_of(lines, where),
                             field=f"{field}.{key}")
    check_time(item["at_s"], file=source, line=line_of(lines, where + ("at_s",)),
               field=f"{field}.at_s")
    node = item.get("node")
    if node is not None and (not isinstance(node, str) or not node):
        raise InputError(f"must be a node name, got {node!r}", file=source,
                         line=line_of(lines, where + ("node",)), field=f"{field}.node")
    settings, origin = _config(item["config"], where, source, lines, base, environ)
    return ConfigChange(float(item["at_s"]), settings, node, source=origin)


def _config(raw: Any, where: tuple[str, ...], source: str, lines: dict[tuple[str, ...], int],
            base: Path, environ: Mapping[str, str] | None) -> tuple[LockSettings, str]:
    """A change's config: a path (relative to the schedule) or an inline mapping."""
    cfg_where = where + ("config",)
    if isinstance(raw, str) and raw:
        p = Path(raw)
        p = p if p.is_absolute() else base / p
        return load_lock_settings(p, environ=environ), str(p)
    if not isinstance(raw, Mapping):
        raise InputError("expected a config.yml path or an inline gpu_lock mapping",
                         file=source, line=line_of(lines, cfg_where), field=".".join(cfg_where))
    origin = f"{source} ({'.'.join(cfg_where)})"
    try:
        return parse_lock_settings(dict(raw), source=origin, environ=environ), origin
    except InputError as err:
        bare = "gpu_lock" not in raw and "gpu_lock_monitor" not in raw
        raise InputErrors([_relocate(e, cfg_where, bare, source, lines)
                           for e in getattr(err, "errors", [err])]) from None


def _relocate(err: InputError, cfg_where: tuple[str, ...], bare: bool, source: str,
              lines: dict[tuple[str, ...], int]) -> InputError:
    """An inline config's error, named by its place in the schedule file."""
    if err.file == "environment":
        return err
    rel = tuple((err.field or "").split(".")) if err.field else ()
    if bare and rel[:1] == ("gpu_lock",):
        rel = rel[1:]
    path = cfg_where + rel
    return InputError(err.message, file=source, line=line_of(lines, path),
                      field=".".join(path))


def describe(changes: Sequence[ConfigChange]) -> list[dict[str, Any]]:
    """Each change as the result JSON lists it (index k: records' config_index k)."""
    return [c.to_json(k) for k, c in enumerate(changes, start=1)]
