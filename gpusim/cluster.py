"""The cluster file: nodes, GPUs, Celery worker slots, how tasks pick a lock key, the Redis model.

Every key is optional; the defaults describe one YiVideo host with one GPU. A node may run its
own lock config (a path, or an inline `gpu_lock` mapping): that is how canaries are modelled.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from gpusim.config import MAX_WAIT_S, LockSettings, load_lock_settings, parse_lock_settings
from gpusim.errors import InputError, InputErrors
from gpusim.yamlio import key_lines, line_of, read_yaml

# Redis commands the model issues, and those INFO commandstats also counts (inside EVAL).
COMMANDS = ("GET", "SET", "EVAL", "DEL", "PUBLISH", "SUBSCRIBE", "UNSUBSCRIBE", "TTL", "EXISTS")

# Default CPU cost per command in microseconds: the order of magnitude INFO commandstats reports
# for these commands on a small key space (redis.io "Redis benchmark" figures, ~1-3 us for GET
# and SET). `gpusim calibrate-redis` replaces them with the user's own server's figures.
DEFAULT_CPU_US = {
    "GET": 1.5, "SET": 2.0, "EVAL": 5.0, "DEL": 1.5, "PUBLISH": 3.0,
    "PUBLISH_PER_SUBSCRIBER": 0.5, "SUBSCRIBE": 2.0, "UNSUBSCRIBE": 2.0, "TTL": 1.5,
    "EXISTS": 1.5,
}


# Bounds on sizes and delays, stated so a value the model cannot hold (a million nodes, an RTT
# of 1e300 s) is refused by name instead of exhausting memory or stalling every command.
MAX_NODES = 1024
MAX_GPUS_PER_NODE = 1024
MAX_WORKERS = 100_000          # Celery worker slots per service
MAX_DELAY_S = 60.0             # rtt_s, client_subscribe_delay_s, pubsub_wakeup_jitter_s
MAX_CPU_US = 1_000_000.0       # CPU cost of one command: 1 s
MAX_BACKGROUND_OPS = 10_000_000.0


def _delay(default: float) -> Any:
    return Field(default, ge=0, le=MAX_DELAY_S, allow_inf_nan=False)


class RedisModel(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    rtt_s: float = _delay(0.0002)
    cpu_us: dict[str, float] = Field(default_factory=lambda: dict(DEFAULT_CPU_US))
    background_ops_per_s: float = Field(0.0, ge=0, le=MAX_BACKGROUND_OPS, allow_inf_nan=False)
    background_cpu_us: float = Field(2.0, ge=0, le=MAX_CPU_US, allow_inf_nan=False)
    # Client-side time between a failed first try and the SUBSCRIBE leaving the client (YiVideo
    # builds a callback and takes its Pub/Sub manager's lock in between). A release published
    # inside that window is never delivered: the lost wake-up.
    client_subscribe_delay_s: float = _delay(0.0005)
    # A release message reaches every subscriber at once, but each waiter's thread wakes after
    # its own delay (listener thread, callback, Event.set, GIL hand-off): uniform in
    # [0, pubsub_wakeup_jitter_s), drawn from the task's own stream. This is what makes the
    # thundering herd a random race rather than first come, first served (validation against
    # a real Redis showed FCFS shortening the p95 wait by 13-30%).
    pubsub_wakeup_jitter_s: float = _delay(0.0005)

    @field_validator("cpu_us")
    @classmethod
    def _known_commands(cls, v: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(v) - set(DEFAULT_CPU_US))
        if unknown:
            raise ValueError(f"unknown command(s) {unknown}; known: {sorted(DEFAULT_CPU_US)}")
        bad = {k: x for k, x in v.items() if not 0 <= x <= MAX_CPU_US}
        if bad:
            raise ValueError(f"CPU cost must be from 0 to {MAX_CPU_US:g} us, got {bad}")
        return {**DEFAULT_CPU_US, **v}


class ModelOptions(BaseModel):
    """Deviations from YiVideo as it runs today. The defaults are YiVideo, bugs included."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    # Owner value `locked_by_{task_type}` lets same-type tasks release each other's key.
    unique_owner_token: bool = False
    # On a failed compare-and-delete YiVideo DELs the key anyway, freeing another task's lock.
    emergency_delete: bool = True
    # The gpu_lock_monitor force-deletes old keys; off because in YiVideo it runs in another
    # process that never sees the acquisitions it judges lock age by.
    monitor: bool = False
    # YiVideo's key names only the GPU index, so hosts sharing one Redis share `gpu_lock:N`.
    shared_keys_across_nodes: bool = False
    # Not in YiVideo yet (the GPU lock spec's risk matrix asks for it): task type -> seconds a
    # task of that type waits for the lock, instead of its node's gpu_lock.max_wait_time. Bounded
    # like max_wait_time; types not named (and the empty default: YiVideo) keep the node's.
    max_wait_time_by_type: dict[str, Annotated[float, Field(
        gt=0, le=MAX_WAIT_S, allow_inf_nan=False)]] = Field(default_factory=dict)


class ServiceSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    task_types: list[str] = Field(min_length=1)
    workers: int | None = Field(None, ge=1, le=MAX_WORKERS)


class NodeSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    gpus: int | None = Field(None, ge=1, le=MAX_GPUS_PER_NODE)
    config: str | dict[str, Any] | None = None


class ClusterSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    nodes: int | list[NodeSpec] = Field(1)
    gpus_per_node: int = Field(1, ge=1, le=MAX_GPUS_PER_NODE)
    gpu_policy: Literal["pinned", "round_robin", "probe_all"] = "pinned"
    workers_per_service: int = Field(8, ge=1, le=MAX_WORKERS)
    services: dict[str, ServiceSpec] | None = None
    redis: RedisModel = RedisModel()
    options: ModelOptions = ModelOptions()

    @field_validator("nodes")
    @classmethod
    def _nodes(cls, v: int | list[NodeSpec]) -> int | list[NodeSpec]:
        if isinstance(v, int) and v < 1:
            raise ValueError("need at least one node")
        count = v if isinstance(v, int) else len(v)
        if count > MAX_NODES:
            raise ValueError(f"at most {MAX_NODES} nodes, got {count}")
        if isinstance(v, list):
            if not v:
                raise ValueError("need at least one node")
            names = [n.name for n in v]
            dup = sorted({n for n in names if names.count(n) > 1})
            if dup:
                raise ValueError(f"duplicate node names {dup}")
        return v


@dataclass(frozen=True)
class Node:
    index: int
    name: str
    gpus: int
    settings: LockSettings | None  # None: the run's --config applies


@dataclass(frozen=True)
class Cluster:
    """A validated cluster; `settings` of nodes without their own config are filled per run."""

    nodes: tuple[Node, ...]
    gpu_policy: str
    workers_per_service: int
    services: Mapping[str, ServiceSpec] | None
    redis: RedisModel
    options: ModelOptions
    source: str = "<defaults>"

    def node_by_name(self) -> dict[str, Node]:
        return {n.name: n for n in self.nodes}

    def service_of(self, task_type: str) -> str:
        if self.services is None:
            return task_type
        for name, svc in self.services.items():
            if task_type in svc.task_types:
                return name
        raise KeyError(task_type)

    def workers_of(self, service: str) -> int:
        if self.services is not None and self.services[service].workers is not None:
            return int(self.services[service].workers)
        return self.workers_per_service

    def with_redis(self, **changes: Any) -> "Cluster":
        from dataclasses import replace
        return replace(self, redis=self.redis.model_copy(update=changes))

    def with_options(self, **changes: Any) -> "Cluster":
        from dataclasses import replace
        return replace(self, options=self.options.model_copy(update=changes))


def default_cluster() -> Cluster:
    return build_cluster(ClusterSpec())


def build_cluster(spec: ClusterSpec, *, source: str = "<memory>",
                  base_dir: Path | None = None) -> Cluster:
    nodes: list[Node] = []
    if isinstance(spec.nodes, int):
        for i in range(spec.nodes):
            nodes.append(Node(i, f"node{i}", spec.gpus_per_node, None))
    else:
        for i, ns in enumerate(spec.nodes):
            settings = None
            if isinstance(ns.config, str):
                path = Path(ns.config)
                if not path.is_absolute() and base_dir is not None:
                    path = base_dir / path
                settings = load_lock_settings(path)
            elif isinstance(ns.config, dict):
                settings = parse_lock_settings(ns.config, source=f"{source} (node {ns.name})")
            nodes.append(Node(i, ns.name, ns.gpus or spec.gpus_per_node, settings))
    return Cluster(tuple(nodes), spec.gpu_policy, spec.workers_per_service, spec.services,
                   spec.redis, spec.options, source)


def load_cluster(path: str | Path) -> Cluster:
    source = str(path)
    data, text = read_yaml(path, "cluster file")  # an empty file is an error there
    if not isinstance(data, Mapping):
        raise InputError("expected a YAML mapping", file=source, line=1)
    lines = key_lines(text)
    try:
        spec = ClusterSpec(**data)
    except ValidationError as err:
        errors = []
        for e in err.errors():
            loc = tuple(str(p) for p in e["loc"])
            line = line_of(lines, loc)
            errors.append(InputError(f"{e['msg']} (got {e.get('input')!r})", file=source,
                                     line=line, field=".".join(loc) or None))
        raise InputErrors(errors) from None
    return build_cluster(spec, source=source, base_dir=Path(path).parent)
