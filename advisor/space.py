"""The search space of `gpusim tune`: the seven `gpu_lock` settings, with defaults and bounds.

Overridable from a YAML file (`--space S.yml`), key by key:

    poll_interval:     {low: 0.05, high: 5, log: true}
    max_poll_interval: {low: 0.5, high: 30, log: true}    # sampled >= poll_interval
    max_wait_time:     {low: 60, high: 3600, log: true}
    lock_timeout:      {low: 300, high: 14400, log: true}  # whole seconds (Redis EX)
    exponential_backoff: [true, false]
    use_event_driven:  [true, false]
    fallback_timeout:  {low: 5, high: 120, log: true}

A setting given as a single value (`use_event_driven: true`) is fixed. Bounds are checked against
the model's own bounds (gpusim's GpuLockConfig), so a space cannot propose a config the model
would refuse.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpusim import GpuLockConfig, InputError, key_lines, line_of, read_yaml

# The model's limits (gpusim.config): polls from 1 ms, waits up to a day, TTLs up to 366 days.
MIN_POLL_S, MAX_WAIT_S, MAX_TTL_S = 0.001, 86_400.0, 366 * 86_400


class FloatRange(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    low: float = Field(gt=0, allow_inf_nan=False)
    high: float = Field(gt=0, allow_inf_nan=False)
    log: bool = True

    @model_validator(mode="after")
    def _ordered(self) -> "FloatRange":
        if self.high < self.low:
            raise ValueError(f"high ({self.high}) must be >= low ({self.low})")
        return self


class Choice(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    choices: tuple[bool, ...] = Field(min_length=1)


FLOATS = ("poll_interval", "max_poll_interval", "max_wait_time", "lock_timeout",
          "fallback_timeout")
BOOLS = ("exponential_backoff", "use_event_driven")
LIMITS = {"poll_interval": (MIN_POLL_S, MAX_WAIT_S), "max_poll_interval": (MIN_POLL_S, MAX_WAIT_S),
          "max_wait_time": (0, MAX_WAIT_S), "lock_timeout": (1, MAX_TTL_S),
          "fallback_timeout": (0, MAX_WAIT_S)}


class SearchSpace(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    poll_interval: FloatRange = FloatRange(low=0.05, high=5.0)
    max_poll_interval: FloatRange = FloatRange(low=0.5, high=30.0)
    max_wait_time: FloatRange = FloatRange(low=60.0, high=3600.0)
    lock_timeout: FloatRange = FloatRange(low=300.0, high=14_400.0)
    exponential_backoff: Choice = Choice(choices=(True, False))
    use_event_driven: Choice = Choice(choices=(True, False))
    fallback_timeout: FloatRange = FloatRange(low=5.0, high=120.0)

    @model_validator(mode="after")
    def _within_model(self) -> "SearchSpace":
        for name in FLOATS:
            rng: FloatRange = getattr(self, name)
            lo, hi = LIMITS[name]
            if rng.low < lo or rng.high > hi:
                raise ValueError(f"{name}: the model takes {lo} to {hi}, got "
                                 f"[{rng.low}, {rng.high}]")
        if self.lock_timeout.low != int(self.lock_timeout.low) or \
                self.lock_timeout.high != int(self.lock_timeout.high):
            raise ValueError("lock_timeout: bounds must be whole seconds (Redis SET ... EX)")
        if self.max_poll_interval.high < self.poll_interval.high:
            raise ValueError(f"max_poll_interval: its high ({self.max_poll_interval.high}) must be "
                             f">= poll_interval.high ({self.poll_interval.high})")
        return self

    def suggest(self, trial: Any) -> GpuLockConfig:
        """Draw one config on an Optuna trial (define-by-run)."""
        v: dict[str, Any] = {}
        for name in ("poll_interval", "max_wait_time", "fallback_timeout"):
            r: FloatRange = getattr(self, name)
            v[name] = trial.suggest_float(name, r.low, r.high, log=r.log)
        mp = self.max_poll_interval
        # max_poll_interval >= poll_interval: its range starts at the drawn poll interval
        v["max_poll_interval"] = trial.suggest_float(
            "max_poll_interval", max(mp.low, v["poll_interval"]), mp.high, log=mp.log)
        lt = self.lock_timeout
        v["lock_timeout"] = trial.suggest_int("lock_timeout", int(lt.low), int(lt.high),
                                              log=lt.log)
        for name in BOOLS:
            v[name] = trial.suggest_categorical(name, list(getattr(self, name).choices))
        return GpuLockConfig(**v)

    def contains(self, cfg: GpuLockConfig) -> list[str]:
        """Settings of `cfg` outside this space (empty when it lies inside)."""
        out = []
        for name in FLOATS:
            r: FloatRange = getattr(self, name)
            x = getattr(cfg, name)
            if not r.low <= x <= r.high:
                out.append(f"{name}={x} outside [{r.low}, {r.high}]")
        for name in BOOLS:
            if getattr(cfg, name) not in getattr(self, name).choices:
                allowed = list(getattr(self, name).choices)
                out.append(f"{name}={getattr(cfg, name)} not in {allowed}")
        return out


def _normalise(name: str, value: Any) -> Any:
    """`[true, false]` or a single value for a flag; a number fixes a range."""
    if name in BOOLS:
        if isinstance(value, list):
            return {"choices": value}
        if isinstance(value, bool):
            return {"choices": [value]}
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return {"low": value, "high": value}
    return value


def load_space(path: str | Path | None) -> SearchSpace:
    """The default space, with the settings a YAML file names replaced (errors name the line)."""
    if path is None:
        return SearchSpace()
    source = str(path)
    data, text = read_yaml(path, "space file")  # an empty file or a key given twice: errors
    if not isinstance(data, dict):
        raise InputError("expected a YAML mapping of settings to ranges", file=source, line=1)
    data = {k: _normalise(k, v) for k, v in data.items()}
    try:
        return SearchSpace(**data)
    except ValidationError as err:
        lines = key_lines(text)
        e = err.errors()[0]
        loc = tuple(str(p) for p in e["loc"])
        msg = e["msg"].removeprefix("Value error, ")
        if not loc:  # a check across settings: its message starts with the setting's name
            loc = tuple(k for k in FLOATS + BOOLS if msg.startswith(k))[:1]
        raise InputError(msg, file=source, line=line_of(lines, loc[:1]) if loc else None,
                         field=".".join(loc) or None) from None
