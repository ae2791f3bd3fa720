"""The `gpu_lock` and `gpu_lock_monitor` sections of YiVideo's config.yml, as typed models.

Read straight from a YiVideo config.yml (or a bare YAML holding just the gpu_lock keys), with
YiVideo's defaults for absent keys (services/common/config_loader.py) and `GPU_LOCK_*`
environment overrides (the spec's GPU_LOCK_CONFIG_003). Unlike YiVideo, which logs a warning and
substitutes a default for an invalid value, bad values are rejected field by field: a simulator
that silently replaced a value would answer a different question than the one asked.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

from pydantic import (BaseModel, ConfigDict, Field, ValidationError, ValidationInfo,
                      field_validator)

from gpusim.errors import InputError, InputErrors
from gpusim.yamlio import key_lines, line_of, read_yaml


# Bounds on every duration setting, so a value the model cannot hold is refused here, by name,
# rather than ending in a MemoryError or a loop that never finishes. The model steps a waiter
# poll by poll and the monitor sweep by sweep: waits, polls and the event fallback are at most a
# day, a poll at least a millisecond, a sweep or heartbeat at least a second (smaller is no real
# setting and only multiplies the steps). TTLs and lock ages only set when something happens:
# at most 366 days, the longest trace.
MAX_WAIT_S = 86_400.0            # 1 day
MAX_AGE_S = 366 * 86_400.0       # 366 days
MIN_POLL_S = 0.001               # 1 ms
MIN_SWEEP_S = 1.0                # 1 s


def _seconds(default: float, *, least: float | None = None, most: float = MAX_WAIT_S) -> Any:
    if least is None:
        return Field(default, gt=0, le=most, allow_inf_nan=False)
    return Field(default, ge=least, le=most, allow_inf_nan=False)


class GpuLockConfig(BaseModel):
    """`gpu_lock`: defaults are YiVideo's `_get_default_gpu_lock_config()`."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    poll_interval: float = _seconds(0.5, least=MIN_POLL_S)
    max_wait_time: float = _seconds(300)
    # Redis `SET ... EX` takes whole seconds, so YiVideo's lock_timeout must be an integer.
    lock_timeout: int = Field(600, gt=0, le=int(MAX_AGE_S))
    exponential_backoff: bool = True
    max_poll_interval: float = _seconds(5, least=MIN_POLL_S)
    use_event_driven: bool = True
    fallback_timeout: float = _seconds(30)

    @field_validator("max_poll_interval")
    @classmethod
    def _cap_not_below_start(cls, v: float, info: ValidationInfo) -> float:
        start = info.data.get("poll_interval")
        if start is not None and v < start:
            raise ValueError(f"max_poll_interval ({v}) must be >= poll_interval ({start})")
        return v


class TimeoutLevels(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    warning: float = _seconds(1800, most=MAX_AGE_S)
    soft_timeout: float = _seconds(3600, most=MAX_AGE_S)
    hard_timeout: float = _seconds(7200, most=MAX_AGE_S)


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    interval: float = _seconds(60, least=MIN_SWEEP_S)
    timeout: float = _seconds(300, most=MAX_AGE_S)


class GpuLockMonitorConfig(BaseModel):
    """`gpu_lock_monitor`: defaults are YiVideo's `_get_default_gpu_lock_monitor_config()`.

    Keys the model does not use (cleanup, health_thresholds, ...) are accepted and kept, since a
    real config.yml carries them.
    """

    model_config = ConfigDict(extra="allow", frozen=True)
    monitor_interval: float = _seconds(30, least=MIN_SWEEP_S)
    timeout_levels: TimeoutLevels = TimeoutLevels()
    heartbeat: Heartbeat = Heartbeat()
    enabled: bool = True
    auto_recovery: bool = True


class LockSettings(BaseModel):
    """What one node runs: its gpu_lock and gpu_lock_monitor sections."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    gpu_lock: GpuLockConfig = GpuLockConfig()
    gpu_lock_monitor: GpuLockMonitorConfig = GpuLockMonitorConfig()
    source: str = "<defaults>"


GPU_LOCK_KEYS = tuple(GpuLockConfig.model_fields)


def config_digest(cfg: GpuLockConfig | LockSettings) -> str:
    """A short, stable name for a gpu_lock config: "sha256:" and 16 hex digits.

    Over the canonical JSON of the seven gpu_lock values (sorted keys, numbers as floats so
    `2` and `2.0` agree), so the same settings from any file, in any key order, digest alike.
    Observed traces carry it per task (`config_digest`) to say which config each task ran under.
    """
    import hashlib
    import json
    lock = cfg.gpu_lock if isinstance(cfg, LockSettings) else cfg
    values = {k: (v if isinstance(v, bool) else float(v))
              for k, v in lock.model_dump().items()}
    text = json.dumps(values, sort_keys=True, separators=(",", ":"))
    return "sha256:" + hashlib.sha256(text.encode()).hexdigest()[:16]
ENV_PREFIX = "GPU_LOCK_"


def _env_overrides(environ: Mapping[str, str]) -> dict[str, Any]:
    """`GPU_LOCK_POLL_INTERVAL=1.0` and friends; unknown GPU_LOCK_* names are errors."""
    out: dict[str, Any] = {}
    for name, raw in sorted(environ.items()):
        if not name.startswith(ENV_PREFIX):
            continue
        key = name[len(ENV_PREFIX):].lower()
        if key not in GPU_LOCK_KEYS:
            raise InputError(f"unknown override; known: "
                             f"{', '.join(ENV_PREFIX + k.upper() for k in GPU_LOCK_KEYS)}",
                             file="environment", field=name)
        out[key] = raw  # pydantic coerces "1.0" / "true"; its errors name the field
    return out


def _raise_validation(err: ValidationError, *, file: str, prefix: tuple[str, ...],
                      lines: Mapping[tuple[str, ...], int], env_keys: set[str]) -> None:
    errors = []
    for e in err.errors():
        loc = tuple(str(p) for p in e["loc"])
        if loc and loc[0] in env_keys and prefix == ("gpu_lock",):
            errors.append(InputError(f"{e['msg']} (got {e.get('input')!r})", file="environment",
                                     field=ENV_PREFIX + loc[0].upper()))
            continue
        path = prefix + loc
        line = line_of(lines, path)
        field = ".".join(path) if loc else ".".join(prefix)
        errors.append(InputError(f"{e['msg']} (got {e.get('input')!r})", file=file, line=line,
                                 field=field))
    raise InputErrors(errors)


def parse_lock_settings(data: Any, *, source: str = "<memory>", text: str | None = None,
                        environ: Mapping[str, str] | None = None) -> LockSettings:
    """Build LockSettings from a parsed YAML document (full config.yml or bare gpu_lock keys)."""
    lines = key_lines(text) if text is not None else {}
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise InputError("expected a YAML mapping", file=source, line=1)
    if "gpu_lock" in data or "gpu_lock_monitor" in data:
        lock_raw = data.get("gpu_lock") or {}
        monitor_raw = data.get("gpu_lock_monitor") or {}
    else:
        # A bare gpu_lock YAML: every top-level key must be a gpu_lock key.
        unknown = [k for k in data if k not in GPU_LOCK_KEYS]
        if unknown:
            k = str(unknown[0])
            raise InputError(f"not a gpu_lock key (expected a config.yml with a 'gpu_lock' "
                             f"section, or bare keys among {', '.join(GPU_LOCK_KEYS)})",
                             file=source, line=lines.get((k,)), field=k)
        lock_raw, monitor_raw = data, {}
        lines = {("gpu_lock",) + k: v for k, v in lines.items()}
    for name, raw in (("gpu_lock", lock_raw), ("gpu_lock_monitor", monitor_raw)):
        if not isinstance(raw, Mapping):
            raise InputError("expected a mapping", file=source, line=lines.get((name,)),
                             field=name)
    env = _env_overrides(os.environ if environ is None else environ)
    merged = {**lock_raw, **env}
    try:
        lock = GpuLockConfig(**merged)
    except ValidationError as err:
        _raise_validation(err, file=source, prefix=("gpu_lock",), lines=lines,
                          env_keys=set(env))
    try:
        monitor = GpuLockMonitorConfig(**monitor_raw)
    except ValidationError as err:
        _raise_validation(err, file=source, prefix=("gpu_lock_monitor",), lines=lines,
                          env_keys=set())
    return LockSettings(gpu_lock=lock, gpu_lock_monitor=monitor, source=source)


def load_lock_settings(path: str | Path, *,
                       environ: Mapping[str, str] | None = None) -> LockSettings:
    """Read a YiVideo config.yml (or bare gpu_lock YAML) the way YiVideo would, strictly."""
    data, text = read_yaml(path, "config")
    return parse_lock_settings(data, source=str(path), text=text, environ=environ)
