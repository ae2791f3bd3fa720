"""Watch a live Redis with MONITOR (`gpusim trace record`); the tasks are rebuilt from the
lines by gpusim.traces.recorder.Reconstructor.

MONITOR costs the watched server: every command it runs is also formatted and written to each
MONITOR client. `measure_monitor_overhead` measures it as the throughput of a GET loop with and
without a MONITOR client attached (README, "Recording a trace").
"""

from __future__ import annotations

import threading
import time
from typing import Callable

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

__all__ = ["MonitorLost", "MonitorUnavailable", "watch", "measure_monitor_overhead",
           "server_time"]


class MonitorUnavailable(RuntimeError):
    """The Redis cannot be reached, or refuses MONITOR (ACL, a managed service)."""


class MonitorLost(RuntimeError):
    """The MONITOR connection broke after the recording began (what was fed stays fed)."""


def _connection(url: str) -> redis.connection.Connection:
    try:
        client = redis.Redis.from_url(url, protocol=2, retry=Retry(NoBackoff(), 0),
                                      socket_connect_timeout=5)
        conn = client.connection_pool.make_connection()
        conn.connect()
        return conn
    except (redis.RedisError, OSError, ValueError) as exc:
        raise MonitorUnavailable(f"cannot reach Redis at {url}: {exc}") from None


def _text(raw: object) -> str:
    return raw.decode("utf-8", "backslashreplace") if isinstance(raw, bytes) else str(raw)


def watch(url: str, on_line: Callable[[str], None], *, seconds: float | None = None,
          stop: threading.Event | None = None, on_ready: Callable[[], None] | None = None,
          clock: Callable[[], float] = time.monotonic) -> float:
    """Feed each MONITOR line to ``on_line`` until ``seconds`` pass, ``stop`` is set or Ctrl-C
    (KeyboardInterrupt propagates; what was fed stays fed). Returns this host's time when it
    stopped (seconds since the epoch); `server_time` gives the server's, which MONITOR's
    timestamps use (they differ by the clocks' offset when Redis runs elsewhere)."""
    conn = _connection(url)
    started = False
    try:
        conn.send_command("MONITOR")
        reply = conn.read_response()
        if _text(reply) != "OK":
            raise MonitorUnavailable(f"MONITOR refused: {_text(reply)}")
        started = True
        if on_ready is not None:
            on_ready()
        deadline = None if seconds is None else clock() + seconds
        try:
            while not (stop is not None and stop.is_set()):
                left = 0.1 if deadline is None else min(0.1, deadline - clock())
                if left <= 0:
                    break
                if conn.can_read(timeout=left):
                    on_line(_text(conn.read_response()))
        finally:  # on Ctrl-C too: what the server already sent is part of the record
            while conn.can_read(timeout=0):
                on_line(_text(conn.read_response()))
        return time.time()
    except redis.ResponseError as exc:
        raise MonitorUnavailable(f"MONITOR refused: {exc}") from None
    except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
        if started:
            raise MonitorLost(f"lost the MONITOR connection: {exc}") from None
        raise MonitorUnavailable(f"cannot MONITOR {url}: {exc}") from None
    finally:
        conn.disconnect()


def _server_cpu(c: redis.Redis) -> float:
    cpu = c.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


def _cpu_per_get(url: str, n: int) -> float:
    """The watched server's CPU per GET (µs) over ``n`` pipelined GETs (server-bound load)."""
    c = redis.Redis.from_url(url, single_connection_client=True, protocol=2)
    try:
        cpu0 = _server_cpu(c)
        for _ in range(n // 100):
            pipe = c.pipeline(transaction=False)
            for _ in range(100):
                pipe.get("gpusim:monitor-overhead")
            pipe.execute()
        return (_server_cpu(c) - cpu0) * 1e6 / n
    finally:
        c.close()


def measure_monitor_overhead(url: str, gets: int = 50_000) -> dict[str, float]:
    """The watched Redis's CPU per GET without, with one MONITOR client reading the stream,
    and without again (drift); MONITOR's cost = with / mean(without) - 1."""
    before = _cpu_per_get(url, gets)
    stop, ready = threading.Event(), threading.Event()
    lines = [0]

    def count(_line: str) -> None:
        lines[0] += 1

    th = threading.Thread(target=watch, args=(url, count),
                          kwargs=dict(stop=stop, on_ready=ready.set), daemon=True)
    th.start()
    ready.wait(5)
    during = _cpu_per_get(url, gets)
    time.sleep(0.2)
    stop.set()
    th.join(30)
    after = _cpu_per_get(url, gets)
    base = (before + after) / 2
    return {"cpu_us_per_get_without": base, "cpu_us_per_get_with_monitor": during,
            "extra": during / base - 1.0 if base > 0 else float("nan"),
            "monitor_lines": float(lines[0])}


def server_time(url: str, fallback: float | None) -> float | None:
    """The Redis server's clock (TIME), or ``fallback`` when it cannot be asked."""
    try:
        c = redis.Redis.from_url(url, protocol=2, socket_timeout=2, socket_connect_timeout=2,
                                 retry=Retry(NoBackoff(), 0))
        try:
            sec, usec = c.time()
            return sec + usec / 1e6
        finally:
            c.close()
    except (redis.RedisError, OSError, ValueError):
        return fallback
