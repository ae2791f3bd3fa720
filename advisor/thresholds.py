"""The spec's acceptance thresholds (GPU_LOCK_CONFIG_001), overridable from YAML."""

from __future__ import annotations

from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from gpusim.errors import InputError, InputErrors
from gpusim.yamlio import key_lines, line_of, read_yaml


class Thresholds(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    success_rate_min: float = Field(0.95, ge=0, le=1)          # success rate >= 95%
    wait_reduction_min: float = Field(0.30, le=1)              # average lock wait -30%
    redis_cpu_increase_max: float = Field(0.50, ge=-1)         # Redis CPU increase < 50%
    timeout_rate_max: float = Field(0.05, ge=0, le=1)          # timeout rate < 5%


def load_thresholds(path: str | Path | None) -> Thresholds:
    if path is None:
        return Thresholds()
    data, text = read_yaml(path, "thresholds file")
    data = data or {}
    if isinstance(data, dict) and "thresholds" in data:
        data = data["thresholds"] or {}
    if not isinstance(data, dict):
        raise InputError("expected a YAML mapping", file=str(path), line=1)
    lines = key_lines(text)
    try:
        return Thresholds(**data)
    except ValidationError as err:
        raise InputErrors([
            InputError(f"{e['msg']} (got {e.get('input')!r})", file=str(path),
                       line=line_of(lines, tuple(str(p) for p in e["loc"]))
                       or line_of(lines, ("thresholds",) + tuple(str(p) for p in e["loc"])),
                       field=".".join(str(p) for p in e["loc"]))
            for e in err.errors()]) from None
