"""A real client of YiVideo's Redis GPU lock protocol (design/yivideo-lock.md), with redis-py.

This is an independent implementation of the protocol YiVideo's `services/common/locks.py`
speaks, written so the simulator can be checked against a real redis-server command for command:

* acquire, polling path: ``GET key``; if empty ``SET key value NX EX lock_timeout`` (may lose the
  GET-then-SET race); on failure the interval is multiplied by 1.5 (capped at max_poll_interval)
  BEFORE the first sleep and the sleep is ``interval * uniform(0.8, 1.2)``; without backoff the
  sleep is ``poll_interval``. The loop test ``now - start < max_wait_time`` runs before each
  attempt, so the reported wait can exceed max_wait_time by up to one sleep.
* acquire, event-driven path: one immediate try; only THEN ``SUBSCRIBE gpu_lock:{key}`` (a
  release between the try and the subscription is missed: the lost wake-up); wait for a release
  message for at most ``min(max_wait_time - elapsed, fallback_timeout)``; on a message try, and on
  failure drop what was received meanwhile and wait again; when a wait times out, fall back to
  the polling path with the same ``start``. ``UNSUBSCRIBE`` is sent at the very end.
* owner value ``locked_by_{task_type}`` (ownership by task type, as in YiVideo), or with
  ``unique_owner_token=True`` ``locked_by_{task_type}#{token}`` (the model's spelling).
* release: ``EVAL`` of a compare-and-delete script (GET + DEL inside Redis); on success
  ``PUBLISH`` of a JSON release event on ``gpu_lock:{key}``; on failure one ``GET`` (YiVideo logs
  the current value) and, with ``emergency_delete=True`` (YiVideo's decorator), a plain ``DEL``.

Deviation, on purpose: YiVideo turns a Redis error during a try into "not acquired" and keeps
polling a dead server. A harness must notice a dead Redis, so errors propagate unless
``swallow_errors=True``.

Paced polling (``pace_rtt_s``, for time-compressed replays): YiVideo sleeps after each try's
reply, so its poll period is the sleep plus the try's round trips plus a little client time. At
1x that extra time (~0.1 ms a poll, measured) is invisible against 2-10 s sleeps; in a replay
compressed 100x it is 100x larger relative to the sleeps and adds up over hundreds of polls, so
the real run's poll phases drift away from the model's (which charges one round trip a command)
and every later race is decided differently. A paced client keeps its tries on the model's
schedule instead: try k+1 is due at (try k's due time) + ``pace_rtt_s`` per command round trip
+ the drawn sleep, and it sleeps until then; the loop's ``max_wait_time`` test and the
event-driven wait's deadline use the due times; the result's ``due_end`` is when the winning
try was due to end, from which a replay times the hold. Off (None): YiVideo's loop as it is.

Times: the TTL may be fractional for time-compressed replays; a whole number of seconds is sent
as ``EX``, anything else as ``PX`` milliseconds. redis-py's automatic retries are off: a
retried command would be counted twice and would hide a dead server for seconds. Each
`LockClient` owns its connections (one command connection, one Pub/Sub connection, both opened
before use so the first SUBSCRIBE does not pay a connection handshake that YiVideo's long-lived
Pub/Sub connection would not). Both speak RESP2, like YiVideo's client.
"""

from __future__ import annotations

import json
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from gpusim.config import GpuLockConfig
from gpusim.protocol import BACKOFF_FACTOR, RELEASE_SCRIPT, channel_for, owner_value

__all__ = ["LockParams", "AcquireResult", "LockClient", "ttl_args"]

def ttl_args(ttl_s: float) -> dict[str, int]:
    """``{'ex': n}`` for a whole number of seconds, else ``{'px': ms}`` (at least 1 ms)."""
    if ttl_s <= 0 or not math.isfinite(ttl_s):
        raise ValueError(f"lock TTL must be finite and > 0, got {ttl_s}")
    if float(ttl_s).is_integer():
        return {"ex": int(ttl_s)}
    return {"px": max(1, int(round(ttl_s * 1000.0)))}


@dataclass(frozen=True)
class LockParams:
    """The `gpu_lock` settings as floats (time-scaled replays make every duration fractional)."""

    poll_interval: float = 0.5
    max_wait_time: float = 300.0
    lock_timeout: float = 600.0
    exponential_backoff: bool = True
    max_poll_interval: float = 5.0
    use_event_driven: bool = True
    fallback_timeout: float = 30.0

    @classmethod
    def from_config(cls, cfg: GpuLockConfig, time_scale: float = 1.0) -> "LockParams":
        """Every duration divided by ``time_scale`` (1 = real time)."""
        if not (time_scale > 0 and math.isfinite(time_scale)):
            raise ValueError(f"time_scale must be finite and > 0, got {time_scale}")
        f = float(time_scale)
        return cls(poll_interval=cfg.poll_interval / f, max_wait_time=cfg.max_wait_time / f,
                   lock_timeout=cfg.lock_timeout / f,
                   exponential_backoff=cfg.exponential_backoff,
                   max_poll_interval=cfg.max_poll_interval / f,
                   use_event_driven=cfg.use_event_driven,
                   fallback_timeout=cfg.fallback_timeout / f)


@dataclass
class AcquireResult:
    """One acquisition. Times are the client's clock (``LockClient.clock``)."""

    acquired: bool
    start: float
    end: float                      # when acquired, or when the task gave up
    attempts: int                   # GETs issued by the acquire loop(s)
    sets: int                       # SET NX issued
    mechanism: str | None           # 'immediate' | 'event' | 'polling' | None (timeout)
    messages: int = 0               # release messages received while waiting
    fell_back: bool = False         # the event-driven wait timed out and it polled
    due_end: float | None = None    # paced: when the winning try was due to end (else None)
    sleeps: list[tuple[float, float]] = field(default_factory=list)  # (requested, actual)

    @property
    def wait(self) -> float:
        return self.end - self.start


def _uniform_source(uniforms: Callable[[], float] | Iterable[float] | None
                    ) -> Callable[[], float]:
    if uniforms is None:
        import random
        rng = random.Random()
        return rng.random
    if callable(uniforms):
        return uniforms  # type: ignore[return-value]
    it: Iterator[float] = iter(uniforms)
    return lambda: float(next(it))


class LockClient:
    """One worker's lock client: its own command connection and Pub/Sub connection.

    ``uniforms`` supplies the jitter: a callable returning, or an iterable of, uniforms in
    [0, 1); the sleep factor is ``0.8 + 0.4 * u`` (what ``uniform(0.8, 1.2)`` computes), so a
    validation can feed the exact random numbers a simulation used. ``uniform_at(k)``, when
    given instead, is asked for draw k of the current polling phase (k restarts at 0 when the
    event-driven path falls back to polling, as the model's per-task streams do).
    """

    def __init__(self, url_or_client: str | redis.Redis, params: LockParams, *,
                 unique_owner_token: bool = False, emergency_delete: bool = True,
                 uniforms: Callable[[], float] | Iterable[float] | None = None,
                 uniform_at: Callable[[int], float] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], None] = time.sleep,
                 swallow_errors: bool = False, socket_timeout: float | None = 30.0,
                 pubsub: bool | None = None, pace_rtt_s: float | None = None):
        if isinstance(url_or_client, redis.Redis):
            pool_kwargs = dict(url_or_client.connection_pool.connection_kwargs)
            self._redis = redis.Redis(single_connection_client=True, protocol=2,
                                      retry=Retry(NoBackoff(), 0), **{
                k: v for k, v in pool_kwargs.items()
                if k in ("host", "port", "db", "password", "username", "unix_socket_path",
                         "path")})
        else:
            # RESP2, like YiVideo's client: with RESP3 redis-py routes Pub/Sub pushes to a
            # handler instead of returning them from read_response().
            self._redis = redis.Redis.from_url(url_or_client, single_connection_client=True,
                                               protocol=2, retry=Retry(NoBackoff(), 0),
                                               socket_timeout=socket_timeout,
                                               socket_connect_timeout=socket_timeout)
        self.params = params
        self.unique_owner_token = unique_owner_token
        self.emergency_delete = emergency_delete
        self._uniform = _uniform_source(uniforms)
        self._uniform_at = uniform_at
        self.clock = clock
        self.sleep = sleep
        self.swallow_errors = swallow_errors
        if pace_rtt_s is not None and not (pace_rtt_s >= 0 and math.isfinite(pace_rtt_s)):
            raise ValueError(f"pace_rtt_s must be finite and >= 0, got {pace_rtt_s}")
        self.pace_rtt_s = pace_rtt_s
        self.commands: Counter[str] = Counter()
        self.get_rtts: list[float] = []  # client round trip of each acquire-loop GET (s)
        # YiVideo's lock log lines (gpusim.real.yivideo_log.YiVideoLockLog), off when None
        self.log = None
        self._poll_tries = 0  # tries of the current polling phase (YiVideo's 重试次数)
        self._log_task = ""
        self._sub: redis.connection.Connection | None = None
        # pubsub=True opens the Pub/Sub connection whatever `params` say: a worker whose config
        # may change to event-driven later (gpusim.schedule) sets `params` per task
        if params.use_event_driven if pubsub is None else pubsub:
            self._sub = self._redis.connection_pool.make_connection()
            self._sub.connect()

    # -- plumbing --------------------------------------------------------------------------
    def close(self) -> None:
        if self._sub is not None:
            try:
                self._sub.disconnect()
            except Exception:
                pass
            self._sub = None
        self._redis.close()

    def __enter__(self) -> "LockClient":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def redis(self) -> redis.Redis:
        return self._redis

    def owner_value(self, task_type: str, token: str | None = None) -> str:
        if self.unique_owner_token:
            if token is None:
                raise ValueError("unique_owner_token needs a per-task token")
            return owner_value(task_type, token)
        return owner_value(task_type)

    # -- one try: GET, then SET NX EX if the key looked free ------------------------------
    def try_acquire(self, key: str, value: str) -> tuple[bool, int]:
        """Returns (acquired, SETs issued). Always one GET."""
        try:
            self.commands["GET"] += 1
            t = time.perf_counter()
            current = self._redis.get(key)
            self.get_rtts.append(time.perf_counter() - t)
            if current:
                return False, 0
            self.commands["SET"] += 1
            ok = self._redis.set(key, value, nx=True, **ttl_args(self.params.lock_timeout))
            return bool(ok), 1
        except redis.RedisError:
            if self.swallow_errors:
                return False, 0
            raise

    # -- acquire ---------------------------------------------------------------------------
    def acquire(self, key: str, task_type: str, token: str | None = None, *,
                start: float | None = None, due: float | None = None) -> AcquireResult:
        """``start``: when the task began acquiring (default now; the wait is measured from it).
        ``due``: with pacing, when its first try was due (default ``start``): the paced
        schedule and the ``max_wait_time`` test count from it."""
        value = self.owner_value(task_type, token)
        start = self.clock() if start is None else start
        res = AcquireResult(False, start, start, 0, 0, None)
        self._poll_tries, self._log_task = 0, task_type
        origin = due if due is not None and self.pace_rtt_s is not None else start
        if self.log is not None:
            self.log.acquiring(task_type, key, self.params.use_event_driven,
                               self.params.max_wait_time)
        if self.params.use_event_driven and self._sub is not None:
            self._acquire_event(key, value, res, origin)
        else:
            self._acquire_polling(key, value, res, origin, origin)
        if not res.acquired:
            res.end = self.clock()
        if self.log is not None:
            self._log_outcome(task_type, key, res)
        return res

    def _log_outcome(self, task: str, key: str, res: AcquireResult) -> None:
        """YiVideo's acquisition or timeout lines (gpusim.real.yivideo_log)."""
        log = self.log
        if res.mechanism == "immediate":
            log.got_immediately(task, key)
        elif res.mechanism == "event":
            log.got_by_event(task, key, res.wait)
        elif res.mechanism == "polling":
            log.got_by_polling(task, key, res.wait, self._poll_tries)
        else:
            log.polling_timeout(task, key, res.wait, self._poll_tries)
            if self.params.use_event_driven and self._sub is not None:
                log.event_timeout(task, key, res.wait)

    def _try(self, key: str, value: str, res: AcquireResult) -> bool:
        res.attempts += 1
        ok, sets = self.try_acquire(key, value)
        res.sets += sets
        if ok:
            res.acquired = True
            res.end = self.clock()
        return ok

    def _after_try(self, due: float, res: AcquireResult, sets_before: int) -> float:
        """When the try that was due at ``due`` ends on the paced schedule: one round trip for
        its GET and one for a SET NX."""
        assert self.pace_rtt_s is not None
        return due + self.pace_rtt_s * (1 + res.sets - sets_before)

    def _acquire_polling(self, key: str, value: str, res: AcquireResult, origin: float,
                         due: float) -> bool:
        """The polling loop; ``origin`` is where max_wait_time counts from, ``due`` when the
        first try is due (both used only when paced)."""
        p = self.params
        paced = self.pace_rtt_s is not None
        cur = p.poll_interval
        k = 0
        while (due if paced else self.clock()) - origin < p.max_wait_time:
            self._poll_tries += 1
            sets_before = res.sets
            if self._try(key, value, res):
                res.mechanism = "polling"
                if paced:
                    res.due_end = self._after_try(due, res, sets_before)
                return True
            if self.log is not None and self._poll_tries % 10 == 0:
                self.log.still_waiting(self._log_task, self.clock() - res.start,
                                       self._poll_tries)
            if p.exponential_backoff:
                cur = min(cur * BACKOFF_FACTOR, p.max_poll_interval)
                u = self._uniform_at(k) if self._uniform_at is not None else self._uniform()
                want = cur * (0.8 + 0.4 * u)
                k += 1
            else:
                want = p.poll_interval
            t0 = self.clock()
            if paced:
                due = self._after_try(due, res, sets_before) + want
                want = max(0.0, due - t0)
            self.sleep(want)
            res.sleeps.append((want, self.clock() - t0))
        return False

    def _acquire_event(self, key: str, value: str, res: AcquireResult, origin: float) -> bool:
        p = self.params
        paced = self.pace_rtt_s is not None
        sets_before = res.sets
        won = self._try(key, value, res)
        c = self._after_try(origin, res, sets_before) if paced else 0.0
        if won:
            res.mechanism, res.due_end = "immediate", (c if paced else None)
            return True
        channel = channel_for(key)
        sub = self._sub
        assert sub is not None
        self.commands["SUBSCRIBE"] += 1
        sub.send_command("SUBSCRIBE", channel)
        try:
            while (c if paced else self.clock()) - origin < p.max_wait_time:
                now = c if paced else self.clock()
                deadline = now + min(p.max_wait_time - (now - origin), p.fallback_timeout)
                if self._wait_message(deadline, res):
                    woke, sets_before = self.clock(), res.sets
                    won = self._try(key, value, res)
                    c = self._after_try(woke, res, sets_before) if paced else c
                    if won:
                        res.mechanism, res.due_end = "event", (c if paced else None)
                        return True
                    self._drain()  # YiVideo's wait_event.clear(): forget what came meanwhile
                else:
                    c = deadline
                    break
            res.fell_back = True
            if self._acquire_polling(key, value, res, origin, c):
                return True
            return False
        finally:
            # YiVideo sends UNSUBSCRIBE and does not wait for the confirmation.
            self.commands["UNSUBSCRIBE"] += 1
            try:
                sub.send_command("UNSUBSCRIBE", channel)
            except redis.RedisError:
                if not self.swallow_errors:
                    raise
            self._drain()

    def _wait_message(self, deadline: float, res: AcquireResult) -> bool:
        """Wait until ``deadline`` (client clock) for a release message (confirmations are
        skipped)."""
        sub = self._sub
        assert sub is not None
        while True:
            remaining = deadline - self.clock()
            if remaining <= 0:
                return False
            if not sub.can_read(timeout=remaining):
                return False
            msg = sub.read_response()
            if self._is_release(msg):
                res.messages += 1
                return True

    @staticmethod
    def _is_release(msg: object) -> bool:
        if not isinstance(msg, (list, tuple)) or len(msg) < 3:
            return False
        kind = msg[0].decode() if isinstance(msg[0], bytes) else msg[0]
        if kind != "message":
            return False
        data = msg[2].decode() if isinstance(msg[2], bytes) else msg[2]
        try:
            return json.loads(data).get("event_type") == "lock_released"
        except (ValueError, AttributeError):
            return False

    def _drain(self) -> None:
        sub = self._sub
        if sub is None:
            return
        try:
            while sub.can_read(timeout=0):
                sub.read_response()
        except redis.RedisError:
            if not self.swallow_errors:
                raise

    # -- release ---------------------------------------------------------------------------
    def release(self, key: str, task_type: str, token: str | None = None,
                reason: str = "normal") -> str:
        """'released' | 'emergency_deleted' (not owner, DEL anyway) | 'not_owner'."""
        value = self.owner_value(task_type, token)
        self.commands["EVAL"] += 1
        if self._redis.eval(RELEASE_SCRIPT, 1, key, value) == 1:
            if self.log is not None:
                self.log.released(task_type, key, reason)
            event = {"event_type": "lock_released", "lock_key": key, "task_name": task_type,
                     "release_reason": reason, "timestamp": time.time()}
            self.commands["PUBLISH"] += 1
            self._redis.publish(channel_for(key), json.dumps(event))
            return "released"
        self.commands["GET"] += 1
        current = self._redis.get(key)  # YiVideo logs the current value
        if self.log is not None:
            self.log.not_owner(task_type, key, current.decode() if current else None)
        if self.emergency_delete:
            if self.log is not None:
                self.log.emergency(key)
            self.commands["DEL"] += 1
            self._redis.delete(key)
            return "emergency_deleted"
        return "not_owner"
