"""Seeded synthetic workloads shaped like YiVideo's GPU tasks.

Two entry points:

- :func:`synthesize` turns a :class:`SynthSpec` (hours, GPUs, nodes, load, arrival process,
  task-type mix with per-type hold-time distributions) into a :class:`~gpusim.traces.format.Trace`;
- :func:`synthesize_poisson` makes the plain single-type M/G/c traces that queueing-theory
  tests compare against formulas.

Randomness: one ``numpy.random.SeedSequence(seed)`` spawned into named streams (STREAMS), one
Generator per activity, so changing e.g. the crash probability does not move the arrivals.
New streams must be appended to STREAMS, never inserted, or old seeds change meaning.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Annotated, Any, Literal

import numpy as np
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from gpusim.errors import InputError, InputErrors
from gpusim.traces.format import MAX_DURATION_S, MAX_SPAN_S, Trace, make_trace
from gpusim.yamlio import read_yaml

STREAMS = ("arrivals", "types", "durations", "placement", "crashes")
DEFAULT_LOAD = 0.5
DAY_S = 86400.0

# Sizes a synthetic trace may have: what a trace file may hold (366 days, holds of at most 366
# days) and what fits in memory a few times over (every task is a Python object and a JSON line).
MAX_HOURS = MAX_SPAN_S / 3600.0      # 8784 h
MAX_TASKS = 10_000_000               # expected arrivals (rate x hours)
MAX_GPUS = 1024 * 1024               # the cluster file's bound: 1024 nodes x 1024 GPUs
MAX_NODES = 1024
_Hold = Field(gt=0, le=MAX_DURATION_S, allow_inf_nan=False)


def _streams(seed: int) -> dict[str, np.random.Generator]:
    children = np.random.SeedSequence(seed).spawn(len(STREAMS))
    return {name: np.random.default_rng(child) for name, child in zip(STREAMS, children)}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# ---------------------------------------------------------------------------------------------
# Hold-time distributions. Each knows its mean (for offered load) and samples n values > 0.


class Exponential(_Model):
    dist: Literal["exponential"] = "exponential"
    mean_s: float = _Hold

    def mean(self) -> float:
        return self.mean_s

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.exponential(self.mean_s, n)


class LogNormal(_Model):
    """Give (median_s, sigma) or (mean_s, cv); sigma is the sd of log(duration)."""
    dist: Literal["lognormal"] = "lognormal"
    median_s: float | None = Field(None, gt=0, le=MAX_DURATION_S, allow_inf_nan=False)
    sigma: float | None = Field(None, ge=0, le=10, allow_inf_nan=False)
    mean_s: float | None = Field(None, gt=0, le=MAX_DURATION_S, allow_inf_nan=False)
    cv: float | None = Field(None, ge=0, le=100, allow_inf_nan=False)

    @model_validator(mode="after")
    def _one_pair(self) -> LogNormal:
        by_median = self.median_s is not None and self.sigma is not None
        by_mean = self.mean_s is not None and self.cv is not None
        given = [k for k in ("median_s", "sigma", "mean_s", "cv") if getattr(self, k) is not None]
        if not (by_median or by_mean) or len(given) != 2:
            raise ValueError("give median_s and sigma, or mean_s and cv (exactly one pair), "
                             f"got {', '.join(given) or 'none'}")
        return self

    def _mu_sigma(self) -> tuple[float, float]:
        if self.median_s is not None:
            return math.log(self.median_s), float(self.sigma)
        s2 = math.log1p(self.cv ** 2)
        return math.log(self.mean_s) - s2 / 2, math.sqrt(s2)

    def mean(self) -> float:
        mu, sigma = self._mu_sigma()
        return math.exp(mu + sigma ** 2 / 2)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu, sigma = self._mu_sigma()
        return rng.lognormal(mu, sigma, n)


class Uniform(_Model):
    dist: Literal["uniform"] = "uniform"
    low_s: float = _Hold
    high_s: float = _Hold

    @model_validator(mode="after")
    def _ordered(self) -> Uniform:
        if self.high_s < self.low_s:
            raise ValueError(f"high_s ({self.high_s}) is below low_s ({self.low_s})")
        return self

    def mean(self) -> float:
        return (self.low_s + self.high_s) / 2

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.uniform(self.low_s, self.high_s, n)


class Deterministic(_Model):
    dist: Literal["deterministic"] = "deterministic"
    value_s: float = _Hold

    def mean(self) -> float:
        return self.value_s

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.value_s)


class Gamma(_Model):
    dist: Literal["gamma"] = "gamma"
    mean_s: float = _Hold
    cv: float = Field(gt=0, le=100, allow_inf_nan=False)

    def mean(self) -> float:
        return self.mean_s

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        shape = 1.0 / self.cv ** 2
        return rng.gamma(shape, self.mean_s / shape, n)


DurationDist = Annotated[Exponential | LogNormal | Uniform | Deterministic | Gamma,
                         Field(discriminator="dist")]


class TaskTypeSpec(_Model):
    weight: float = Field(ge=0, allow_inf_nan=False)  # share of arrivals; weights sum to 1
    duration: DurationDist


# ---------------------------------------------------------------------------------------------
# Arrival processes. Each returns sorted arrival times in [0, horizon) for a mean rate.


class Poisson(_Model):
    kind: Literal["poisson"] = "poisson"

    def times(self, rate: float, horizon: float, rng: np.random.Generator) -> np.ndarray:
        # Given the count, Poisson arrival times are iid uniform: exact and vectorised.
        return np.sort(rng.uniform(0.0, horizon, rng.poisson(rate * horizon)))


class Bursty(_Model):
    """Two-state Markov-modulated Poisson process (on = burst, off = quiet).

    The burst rate is burst_factor times the quiet rate; burst and quiet spells are exponential
    with means mean_burst_s and mean_burst_s * (1 - burst_fraction) / burst_fraction, so a
    fraction burst_fraction of the time is bursty and the long-run mean rate is the one asked.
    """
    kind: Literal["bursty"] = "bursty"
    burst_factor: float = Field(5.0, gt=1, le=1000, allow_inf_nan=False)
    # at least a second: the spells are drawn one by one in Python
    mean_burst_s: float = Field(600.0, ge=1, le=MAX_SPAN_S, allow_inf_nan=False)
    burst_fraction: float = Field(0.2, gt=0, lt=1)

    def rates(self, rate: float) -> tuple[float, float]:
        p, b = self.burst_fraction, self.burst_factor
        quiet = rate / (p * b + 1 - p)
        return b * quiet, quiet

    def times(self, rate: float, horizon: float, rng: np.random.Generator) -> np.ndarray:
        on_rate, off_rate = self.rates(rate)
        mean_quiet = self.mean_burst_s * (1 - self.burst_fraction) / self.burst_fraction
        on = rng.random() < self.burst_fraction  # start in the stationary distribution
        t, parts = 0.0, []
        while t < horizon:
            spell = min(rng.exponential(self.mean_burst_s if on else mean_quiet), horizon - t)
            n = rng.poisson((on_rate if on else off_rate) * spell)
            parts.append(t + rng.uniform(0.0, spell, n))
            t += spell
            on = not on
        return np.sort(np.concatenate(parts)) if parts else np.empty(0)


class Diurnal(_Model):
    """Non-homogeneous Poisson with a sinusoidal day profile, drawn by thinning.

    rate(t) = mean * (1 + a cos(2 pi (clock(t) - peak_hour) / 24)), a = (r - 1) / (r + 1) for a
    peak/trough ratio r; clock(t) = start_hour + t / 3600. The rate averages to the mean over
    whole days.
    """
    kind: Literal["diurnal"] = "diurnal"
    peak_trough_ratio: float = Field(3.0, ge=1, le=1000, allow_inf_nan=False)
    peak_hour: float = Field(14.0, ge=0, lt=24)
    start_hour: float = Field(0.0, ge=0, lt=24)

    def rate_at(self, rate: float, t: np.ndarray) -> np.ndarray:
        a = (self.peak_trough_ratio - 1) / (self.peak_trough_ratio + 1)
        hour = self.start_hour + np.asarray(t) / 3600.0
        return rate * (1 + a * np.cos(2 * np.pi * (hour - self.peak_hour) / 24.0))

    def times(self, rate: float, horizon: float, rng: np.random.Generator) -> np.ndarray:
        a = (self.peak_trough_ratio - 1) / (self.peak_trough_ratio + 1)
        peak = rate * (1 + a)
        cand = np.sort(rng.uniform(0.0, horizon, rng.poisson(peak * horizon)))
        keep = rng.random(cand.size) * peak < self.rate_at(rate, cand)
        return cand[keep]


ArrivalSpec = Annotated[Poisson | Bursty | Diurnal, Field(discriminator="kind")]
ARRIVAL_KINDS = {"poisson": Poisson, "bursty": Bursty, "diurnal": Diurnal}


def yivideo_types() -> dict[str, TaskTypeSpec]:
    """The spec's three task classes: short OCR, medium FFmpeg, long Whisper."""
    return {
        # median 2 s; P(< 5 s) = 0.996
        "paddleocr": TaskTypeSpec(weight=0.6, duration=LogNormal(median_s=2.0, sigma=0.35)),
        # FFmpeg crop: 30-60 s
        "ffmpeg": TaskTypeSpec(weight=0.3, duration=Uniform(low_s=30.0, high_s=60.0)),
        # median 8 min; P(> 5 min) = 0.94
        "faster_whisper": TaskTypeSpec(weight=0.1,
                                       duration=LogNormal(median_s=480.0, sigma=0.3)),
    }


class SynthSpec(_Model):
    """What to generate. Give ``load`` (offered load per GPU) or ``rate_per_hour``, not both;
    with neither the load is DEFAULT_LOAD. Offered load = rate * mean duration / gpus."""
    hours: float = Field(24.0, gt=0, le=MAX_HOURS, allow_inf_nan=False)
    gpus: int = Field(1, ge=1, le=MAX_GPUS)    # total, spread evenly over the nodes
    nodes: int = Field(1, ge=1, le=MAX_NODES)
    placement: Literal["random", "none"] = "random"   # none: leave node/gpu unset
    load: float | None = Field(None, gt=0, allow_inf_nan=False)
    rate_per_hour: float | None = Field(None, gt=0, allow_inf_nan=False)
    arrivals: ArrivalSpec = Field(default_factory=Poisson)
    types: dict[str, TaskTypeSpec] = Field(default_factory=yivideo_types, min_length=1)
    crash_prob: float = Field(0.0, ge=0, le=1)

    @model_validator(mode="after")
    def _consistent(self) -> SynthSpec:
        if self.load is not None and self.rate_per_hour is not None:
            raise ValueError("give load or rate_per_hour, not both")
        if self.gpus % self.nodes:
            raise ValueError(f"gpus ({self.gpus}) must be a multiple of nodes ({self.nodes})")
        total = sum(t.weight for t in self.types.values())
        if abs(total - 1.0) > 1e-6:
            raise ValueError(f"type weights must sum to 1, they sum to {total:.6g}")
        if any(not name for name in self.types):
            raise ValueError("type names must be non-empty")
        expected = self.rate_per_s * self.hours * 3600.0
        if not expected <= MAX_TASKS:
            raise ValueError(f"{expected:.3g} tasks expected ({self.rate_per_s * 3600:.4g}/h "
                             f"for {self.hours:g} h); at most {MAX_TASKS:,}: lower the load, "
                             "the rate, the GPUs or the hours")
        return self

    @property
    def mean_duration_s(self) -> float:
        return sum(t.weight * t.duration.mean() for t in self.types.values())

    @property
    def rate_per_s(self) -> float:
        if self.rate_per_hour is not None:
            return self.rate_per_hour / 3600.0
        load = self.load if self.load is not None else DEFAULT_LOAD
        return load * self.gpus / self.mean_duration_s

    @property
    def offered_load(self) -> float:
        return self.rate_per_s * self.mean_duration_s / self.gpus


def synthesize(spec: SynthSpec, seed: int) -> Trace:
    """Generate a trace; the same spec and seed always give the same trace."""
    rng = _streams(seed)
    horizon = spec.hours * 3600.0
    times = spec.arrivals.times(spec.rate_per_s, horizon, rng["arrivals"])
    n = times.size
    if n == 0:
        raise InputError(f"no arrivals in {spec.hours} h at {spec.rate_per_s * 3600:.4g}/h; "
                         "raise the load, the rate or the hours", field="load")

    names = sorted(spec.types)  # sorted: the spec's key order does not change the trace
    weights = np.array([spec.types[k].weight for k in names])
    kinds = rng["types"].choice(len(names), size=n, p=weights / weights.sum())
    durations = np.empty(n)
    for k, name in enumerate(names):
        mask = kinds == k
        durations[mask] = spec.types[name].duration.sample(rng["durations"], int(mask.sum()))
        drawn = durations[mask]
        if np.any(drawn <= 0) or not np.all(drawn <= MAX_DURATION_S):
            raise InputError(f"the {name} distribution drew a duration that is not > 0 and at "
                             f"most {MAX_DURATION_S:.0f} s (366 days): cv or sigma too large?",
                             field=f"types.{name}.duration")

    slot = rng["placement"].integers(0, spec.gpus, n)
    per_node = spec.gpus // spec.nodes
    use_node = spec.placement == "random" and spec.nodes > 1
    use_gpu = spec.placement == "random" and spec.gpus > 1
    crashed = rng["crashes"].random(n) < spec.crash_prob

    arrivals = (times - times[0]).tolist()  # time starts at the first arrival
    records = []
    for i, (t, k, d, g, c) in enumerate(zip(arrivals, kinds.tolist(), durations.tolist(),
                                            slot.tolist(), crashed.tolist())):
        records.append((f"t{i:06d}", names[k], t, d,
                        f"node{g // per_node}" if use_node else None,
                        g % per_node if use_gpu else None, c, i + 1))
    return make_trace(records, "<synth>")


def duration_dist(dist: str, mean_s: float, cv: float | None = None):
    """A hold-time distribution from its mean and coefficient of variation.

    exponential (cv 1), deterministic (cv 0), lognormal and gamma (any cv > 0), uniform
    (cv < 1/sqrt(3), so the low end stays above 0).
    """
    if dist == "exponential":
        if cv not in (None, 1, 1.0):
            raise InputError(f"exponential has cv 1, got {cv}", field="cv")
        return Exponential(mean_s=mean_s)
    if dist == "deterministic":
        if cv not in (None, 0, 0.0):
            raise InputError(f"deterministic has cv 0, got {cv}", field="cv")
        return Deterministic(value_s=mean_s)
    if cv is None:
        raise InputError(f"{dist} needs a cv", field="cv")
    if dist == "lognormal":
        return LogNormal(mean_s=mean_s, cv=cv)
    if dist == "gamma":
        return Gamma(mean_s=mean_s, cv=cv)
    if dist == "uniform":
        half = mean_s * cv * math.sqrt(3)
        if half >= mean_s:
            raise InputError(f"uniform needs cv < {1 / math.sqrt(3):.4f}, got {cv}", field="cv")
        return Uniform(low_s=mean_s - half, high_s=mean_s + half)
    raise InputError(f"unknown distribution {dist!r} (exponential, lognormal, uniform, "
                     "deterministic, gamma)", field="dist")


def synthesize_poisson(n_tasks: int, load: float, gpus: int = 1, dist: str = "exponential",
                       mean_s: float = 1.0, cv: float | None = None, seed: int = 0,
                       task_type: str = "job") -> Trace:
    """Exactly n_tasks Poisson arrivals at rate load * gpus / mean_s, one task type, no
    placement: the M/G/c input of textbook formulas. The first arrival is at 0."""
    if n_tasks < 1:
        raise InputError(f"n_tasks must be >= 1, got {n_tasks}", field="n_tasks")
    if not (load > 0 and math.isfinite(load)):
        raise InputError(f"load must be finite and > 0, got {load}", field="load")
    if gpus < 1:
        raise InputError(f"gpus must be >= 1, got {gpus}", field="gpus")
    holds = duration_dist(dist, mean_s, cv)
    rng = _streams(seed)
    rate = load * gpus / mean_s
    gaps = rng["arrivals"].exponential(1.0 / rate, n_tasks - 1)
    arrivals = np.concatenate(([0.0], np.cumsum(gaps))).tolist()
    durations = holds.sample(rng["durations"], n_tasks)
    if np.any(durations <= 0):
        raise InputError(f"{dist} with cv {cv} drew a zero duration; lower the cv", field="cv")
    records = [(f"t{i:06d}", task_type, a, d, None, None, False, i + 1)
               for i, (a, d) in enumerate(zip(arrivals, durations.tolist()))]
    return make_trace(records, "<synth>")


# ---------------------------------------------------------------------------------------------
# Spec files (YAML or JSON) with errors that point at the line.

_TAGGED = {"arrivals", "duration"}  # fields whose pydantic error paths carry a union tag
_TAGS = {"poisson", "bursty", "diurnal", "exponential", "lognormal", "uniform", "deterministic",
         "gamma"}


def load_spec(path: str | Path) -> SynthSpec:
    """Read a SynthSpec from YAML; a bad key is an InputError naming file, line and field.
    An empty file and a key given twice are errors (gpusim.yamlio.read_yaml)."""
    source = str(path)
    data, text = read_yaml(source, "synth spec file")
    if not isinstance(data, dict):
        raise InputError("expected a mapping of spec keys", file=source, line=1)
    try:
        return SynthSpec.model_validate(data)
    except ValidationError as exc:
        raise spec_errors(exc, file=source, node=yaml.compose(text)) from None


def spec_errors(exc: ValidationError, *, file: str | None = None,
                node: yaml.Node | None = None) -> InputErrors:
    """pydantic errors as InputErrors: dotted field path, and the YAML line when known."""
    errors = []
    for err in exc.errors(include_url=False):
        loc = _strip_tags(err["loc"])
        field = ".".join(str(p) for p in loc) or None
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        elif "input" in err and err["type"] != "missing" and not isinstance(err["input"], dict):
            msg = f"{msg} (got {err['input']!r})"
        errors.append(InputError(msg, file=file, line=_yaml_line(node, loc), field=field))
    return InputErrors(errors)


def _strip_tags(loc: tuple) -> tuple:
    """Drop the union tag pydantic puts after 'arrivals' / 'duration': it is no YAML key."""
    out: list[Any] = []
    for part in loc:
        if out and out[-1] in _TAGGED and part in _TAGS:
            continue
        out.append(part)
    return tuple(out)


def _yaml_line(node: yaml.Node | None, loc: tuple) -> int | None:
    """1-based line of the deepest YAML node on the path loc."""
    if node is None:
        return None
    line = node.start_mark.line + 1
    for part in loc:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                if key.value == str(part):
                    line, node = key.start_mark.line + 1, value
                    break
            else:
                break
        elif isinstance(node, yaml.SequenceNode) and isinstance(part, int) \
                and part < len(node.value):
            node = node.value[part]
            line = node.start_mark.line + 1
        else:
            break
    return line
