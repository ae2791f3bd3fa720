"""YiVideo's lock protocol as names and numbers (services/common/locks.py; design/yivideo-lock.md).

The reference model, the compiled engine, the real lock client and the validation replay all take
these from here, so a key the model names is the key the real client locks.
"""

from __future__ import annotations

BACKOFF_FACTOR = 1.5  # YiVideo: current = min(current * 1.5, max_poll_interval), before each sleep

# Compare-and-delete: the GET and DEL run inside Redis (INFO commandstats counts both).
RELEASE_SCRIPT = (
    "if redis.call('get', KEYS[1]) == ARGV[1] then "
    "redis.call('del', KEYS[1]) return 1 else return 0 end"
)


def lock_key(node: str, gpu: int, *, shared: bool, prefix: str = "") -> str:
    """The Redis key of GPU `gpu` on host `node`.

    YiVideo names only the GPU index (`gpu_lock:0`), so hosts that share one Redis share keys
    (`shared=True`); by default the model gives each host its own keys. `prefix` isolates a
    validation run's keys on a Redis it does not own."""
    return f"{prefix}gpu_lock:{gpu}" if shared else f"{prefix}{node}/gpu_lock:{gpu}"


def channel_for(key: str) -> str:
    """Pub/Sub channel YiVideo publishes releases on: ``gpu_lock:{lock_key}``."""
    return f"gpu_lock:{key}"


def owner_value(task_type: str, token: object = None) -> str:
    """The key's value: `locked_by_{task name}`, the same for every instance of a task type
    (YiVideo's ownership is by type); with a `token` (the task's index in the model) it is unique
    to one task (the `unique_owner_token` option)."""
    base = f"locked_by_{task_type}"
    return base if token is None else f"{base}#{token}"
