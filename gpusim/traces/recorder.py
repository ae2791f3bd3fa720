"""Lock tasks rebuilt from a Redis MONITOR stream (`gpusim trace record`; the live part is
gpusim.real.monitor). Pure: it reads MONITOR lines, so it is tested without a server.

MONITOR prints every command as it executes, in execution order, with the server's time (µs),
the db and the client's address, e.g. ``1795863210.813217 [2 10.0.0.5:58324] "SET"
"gpu_lock:0" "locked_by_ocr" "NX" "EX" "600"``; commands a script runs follow their EVAL as
``[2 lua] "del" "gpu_lock:0"``. Replies are not shown, so who won is inferred:

* Key model. Each watched key's value and expiry are replayed from the stream: a ``SET NX`` wins
  iff the key is absent (never set, deleted, or past its TTL) at that moment; a compare-and-
  delete ``EVAL`` succeeded iff a ``del`` from the script follows it; a plain ``DEL`` empties it.
  Until the stream first shows the key's state (the record started while someone held it), a
  SET NX is judged by its client's behaviour instead: its next command on the key is the
  release EVAL (won) or another GET (lost).
* Tasks, per (client, key): the first ``GET`` starts one (arrival); each GET of the acquire
  loop is an attempt; the winning SET is the acquisition (wait = SET time - arrival); the same
  client's release ``EVAL`` ends the hold (duration = EVAL time - SET time) and the task; after
  a failed compare the client's GET and DEL (YiVideo's emergency release) belong to it.
* Timeouts: a waiting task that never won is over once ``max_wait`` (the config's
  max_wait_time, in the stream's seconds) has passed since its arrival and its client then
  starts a new task (a GET more than max_wait + min(50 ms, max_wait / 10) after the arrival)
  or the record ends; its wait is written as max(max_wait, last try - arrival): no try
  starts after max_wait, and the true give-up is at most one poll sleep later.
* Task type: from the owner value (``locked_by_{type}``, a ``#token`` suffix dropped) of its
  SET or its release; a task that timed out without ever sending SET never shows it: type
  ``unknown``. Node: the key's node part in gpusim's spelling (``.../node/gpu_lock:N``), else the
  client's IP address (each YiVideo host connects from its own); gpu: N of ``gpu_lock:N``.

Failure modes, counted and reported by reason: a task cut by the start or the end of the record;
a lone GET with nothing after it (a status read, not a lock task: not written); a SET whose
outcome neither the key model nor the client's later behaviour decides; a release EVAL by a
client with no hold in the record; a client that releases after a SET the key model judged
lost (the release wins: its SET is taken as the acquisition). A task that gives up after
exactly one GET and no SET is indistinguishable from a status read. Clients are told apart
by address:port, so a client that reconnects mid-task (new port) splits the task in two.
Pub/Sub connections (SUBSCRIBE, PUBLISH) are not needed and are ignored.
"""

from __future__ import annotations

import fnmatch
import re
from collections import Counter
from dataclasses import dataclass
from typing import Any

from gpusim.traces.yivideo_logs import key_place

__all__ = ["MonitorLine", "Reconstructor", "parse_monitor_line", "owner_type", "UNKNOWN_TYPE"]

UNKNOWN_TYPE = "unknown"
_HEAD = re.compile(r"^(\d+\.\d+) \[(\d+) ([^\]]*)\] (.*)$")
_ESC = {"n": "\n", "r": "\r", "t": "\t", "a": "\a", "b": "\b", '"': '"', "\\": "\\"}


@dataclass(frozen=True)
class MonitorLine:
    t: float            # server time, seconds since the epoch
    db: int
    client: str         # "ip:port", "lua" for a script's commands, "unix:..." for a socket
    args: list[str]     # command name upper-cased, then its arguments


def _unquote(body: str) -> list[str] | None:
    """MONITOR's quoted arguments (sdscatrepr escapes) -> strings; None when malformed."""
    args: list[str] = []
    i, n = 0, len(body)
    while i < n:
        if body[i] == " ":
            i += 1
            continue
        if body[i] != '"':
            return None
        i += 1
        buf: list[str] = []
        while True:
            if i >= n:
                return None  # torn: no closing quote
            c = body[i]
            if c == '"':
                i += 1
                break
            if c == "\\" and i + 1 < n:
                nxt = body[i + 1]
                if nxt == "x" and i + 3 < n:
                    try:
                        buf.append(chr(int(body[i + 2:i + 4], 16)))
                    except ValueError:
                        return None
                    i += 4
                    continue
                buf.append(_ESC.get(nxt, nxt))
                i += 2
                continue
            buf.append(c)
            i += 1
        args.append("".join(buf))
    return args


def parse_monitor_line(text: str) -> MonitorLine | None:
    """One MONITOR line, or None when it is not one (``OK``, torn)."""
    m = _HEAD.match(text)
    if m is None:
        return None
    args = _unquote(m.group(4))
    if not args:
        return None
    args[0] = args[0].upper()
    return MonitorLine(float(m.group(1)), int(m.group(2)), m.group(3), args)


def owner_type(value: str) -> str | None:
    """``locked_by_{type}`` (optionally ``#token``) -> type; None for any other value."""
    if not value.startswith("locked_by_"):
        return None
    name = value[len("locked_by_"):].split("#", 1)[0]
    return name or None


def _set_ttl(args: list[str]) -> tuple[bool, float | None]:
    """(has NX, TTL seconds or None) of a SET's options."""
    opts = [a.upper() for a in args[3:]]
    ttl = None
    for i, o in enumerate(opts[:-1]):
        try:
            if o == "EX":
                ttl = float(args[3 + i + 1])
            elif o == "PX":
                ttl = float(args[3 + i + 1]) / 1000.0
        except ValueError:
            ttl = None
    return "NX" in opts, ttl


@dataclass
class _KeyState:
    known: bool = False
    value: str | None = None
    expires: float | None = None

    def free(self, t: float) -> bool:
        return self.value is None or (self.expires is not None and t >= self.expires)


@dataclass
class _Task:
    client: str
    db: int
    key: str
    arrival: float
    attempts: int = 0
    sets: int = 0
    last_try: float = 0.0
    task_type: str | None = None
    pending_set: tuple[float, str, float | None] | None = None  # undecided SET (key unknown)
    last_set: tuple[float, str, float | None] | None = None     # its latest SET NX
    acquired: float | None = None
    released: float | None = None
    release_failed: bool = False
    outcome: str | None = None
    wait_end: float | None = None


class Reconstructor:
    """Feed MONITOR lines (``feed``), then ``finish(end_time)``; ``rows(time_scale)``."""

    def __init__(self, keys: str = "gpu_lock:*", *, max_wait_s: float = 300.0,
                 config_digest: str | None = None):
        self.pattern = keys
        self.literal = re.split(r"[*?\[]", keys, maxsplit=1)[0]  # cheap pre-filter
        self.max_wait_s = max_wait_s
        # A last try starts before max_wait on the client's clock; its GET may reach Redis a
        # little later (a thread descheduled between the loop test and the send).
        self.late_try_s = min(0.05, 0.1 * max_wait_s)
        self.config_digest = config_digest
        self.keys: dict[tuple[int, str], _KeyState] = {}
        self.active: dict[tuple[str, int, str], _Task] = {}
        self.done: list[_Task] = []
        self.counts: Counter = Counter()
        self.lines = 0
        self.first_t: float | None = None
        self.last_t: float | None = None
        self._last_eval: tuple[_Task | None, int, str, bool] | None = None

    def _watched(self, key: str) -> bool:
        return fnmatch.fnmatchcase(key, self.pattern)

    def feed_text(self, text: str) -> None:
        self.lines += 1
        if self.literal and self.literal not in text:
            return  # not about a watched key (the Celery broker's traffic, ...)
        line = parse_monitor_line(text)
        if line is None:
            if text.strip() and text.strip() != "OK":
                self.counts["unreadable MONITOR lines"] += 1
            return
        self.feed(line)

    def feed(self, ln: MonitorLine) -> None:
        self.first_t = ln.t if self.first_t is None else self.first_t
        self.last_t = ln.t
        cmd = ln.args[0]
        if ln.client == "lua":
            self._lua(ln)
            return
        self._close_eval()
        if len(ln.args) < 2:
            return
        if cmd == "EVAL" or cmd == "EVALSHA":
            self._eval(ln)
            return
        key = ln.args[1]
        if not self._watched(key):
            return
        if cmd == "GET":
            self._get(ln, key)
        elif cmd == "SET":
            self._set(ln, key)
        elif cmd in ("DEL", "UNLINK"):
            self._del(ln)

    # -- commands ---------------------------------------------------------------------------
    def _state(self, db: int, key: str) -> _KeyState:
        return self.keys.setdefault((db, key), _KeyState())

    def _get(self, ln: MonitorLine, key: str) -> None:
        tk = (ln.client, ln.db, key)
        task = self.active.get(tk)
        if task is not None and task.release_failed:
            return  # YiVideo reads the value to log it after a failed compare
        if task is not None and task.acquired is None:
            if ln.t - task.arrival >= self.max_wait_s + self.late_try_s:
                self._timeout(task)          # no try starts after max_wait: a new task
                task = None
            elif task.pending_set is not None:
                task.pending_set = None      # it polls again: that SET lost
        if task is not None and task.acquired is not None:
            self.counts["GET while holding (a task cut by the record, split)"] += 1
            self._end(task, None)
            task = None
        if task is None:
            task = _Task(ln.client, ln.db, key, ln.t)
            self.active[tk] = task
        task.attempts += 1
        task.last_try = ln.t

    def _set(self, ln: MonitorLine, key: str) -> None:
        nx, ttl = _set_ttl(ln.args)
        st = self._state(ln.db, key)
        value = ln.args[2] if len(ln.args) > 2 else ""
        task = self.active.get((ln.client, ln.db, key))
        if not nx:  # a plain SET (not the lock's): it sets the key whatever it held
            st.known, st.value = True, value
            st.expires = ln.t + ttl if ttl is not None else None
            return
        if task is None or task.acquired is not None:
            self.counts["SET NX without a GET before it (not the lock's acquire)"] += 1
            return
        task.sets += 1
        task.last_set = (ln.t, value, ttl)
        task.task_type = owner_type(value) or task.task_type
        if st.known:
            if st.free(ln.t):
                self._won(task, ln.t, st, value, ttl)
        else:
            task.pending_set = (ln.t, value, ttl)

    def _won(self, task: _Task, t: float, st: _KeyState, value: str, ttl: float | None) -> None:
        task.acquired = t
        task.pending_set = None
        st.known, st.value = True, value
        st.expires = t + ttl if ttl is not None else None

    def _del(self, ln: MonitorLine) -> None:
        for key in ln.args[1:]:
            if not self._watched(key):
                continue
            st = self._state(ln.db, key)
            st.known, st.value, st.expires = True, None, None
            task = self.active.get((ln.client, ln.db, key))
            if task is not None and task.release_failed:
                self.counts["emergency DELs after a failed compare"] += 1
                self._end(task, task.released)

    def _eval(self, ln: MonitorLine) -> None:
        """A compare-and-delete: EVAL script 1 KEY VALUE. Its result shows in the lua lines."""
        args = ln.args
        if len(args) < 5 or args[2] != "1" or not self._watched(args[3]):
            return
        key, value = args[3], args[4]
        task = self.active.get((ln.client, ln.db, key))
        if task is not None and task.acquired is None and task.last_set is not None:
            # it releases, so its last SET won: undecided until now, or (counted apart) the
            # key model judged it lost, which the stream cannot explain
            if task.pending_set is not None:
                self.counts["SETs judged by the client's behaviour (key state not yet seen)"] += 1
            else:
                self.counts["SETs the key model judged lost but the client released"] += 1
            t, v, ttl = task.last_set
            self._won(task, t, self._state(ln.db, key), v, ttl)
        if task is None or task.acquired is None:
            self.counts["release EVAL with no hold in the record (began before it)"] += 1
            task = None
        else:
            task.released = ln.t
            task.task_type = task.task_type or owner_type(value)
        self._last_eval = (task, ln.db, key, False)

    def _lua(self, ln: MonitorLine) -> None:
        if self._last_eval is None or len(ln.args) < 2:
            return
        task, db, key, _ = self._last_eval
        if ln.args[0] == "DEL" and ln.args[1] == key:  # the compare matched
            st = self._state(db, key)
            st.known, st.value, st.expires = True, None, None
            self._last_eval = (task, db, key, True)

    def _close_eval(self) -> None:
        """The script's lines are over: a release without a del failed its compare."""
        if self._last_eval is None:
            return
        task, _db, _key, deleted = self._last_eval
        self._last_eval = None
        if task is None:
            return
        if deleted:
            self._end(task, task.released)
        else:
            task.release_failed = True
            self.counts["releases whose compare failed (key expired or another's)"] += 1

    # -- ends -------------------------------------------------------------------------------
    def _timeout(self, task: _Task) -> None:
        if task.attempts == 1 and task.sets == 0:
            self.counts["lone GETs with nothing after (status reads; not written)"] += 1
            self.active.pop((task.client, task.db, task.key), None)
            return
        task.outcome = "timeout"
        task.wait_end = task.arrival + max(self.max_wait_s, task.last_try - task.arrival)
        self.active.pop((task.client, task.db, task.key), None)
        self.done.append(task)

    def _end(self, task: _Task, released: float | None) -> None:
        self.active.pop((task.client, task.db, task.key), None)
        if released is None:
            self.counts["holds cut by the record (no release seen; not written)"] += 1
            return
        task.outcome = "acquired"
        self.done.append(task)

    def finish(self, end_t: float | None = None) -> None:
        """The record is over at ``end_t`` (server time; default: the last line's)."""
        self._close_eval()
        end_t = end_t if end_t is not None else (self.last_t or 0.0)
        for task in list(self.active.values()):
            if task.release_failed:
                self._end(task, task.released)
            elif task.acquired is not None:
                self._end(task, None)
            elif task.pending_set is not None:  # held on, or lost and gave up: unknown
                self.counts["undecided SETs at the end (task not written)"] += 1
                self.active.pop((task.client, task.db, task.key), None)
            elif end_t - task.arrival >= self.max_wait_s + self.late_try_s:
                self._timeout(task)
            else:
                self.counts["still waiting when the record ended (not written)"] += 1
                self.active.pop((task.client, task.db, task.key), None)

    def rows(self, time_scale: float = 1.0) -> list[dict[str, Any]]:
        """The tasks as trace rows, times multiplied by ``time_scale``, by arrival."""
        tasks = sorted(self.done, key=lambda t: (t.arrival, t.client, t.key))
        if not tasks:
            return []
        t0, f = tasks[0].arrival, time_scale
        rows = []
        for i, task in enumerate(tasks):
            node, gpu = key_place(task.key, task.client.rsplit(":", 1)[0])
            row: dict[str, Any] = {"task_id": f"r{i + 1}",
                                   "task_type": task.task_type or UNKNOWN_TYPE,
                                   "arrival_s": round((task.arrival - t0) * f, 6)}
            end = task.acquired if task.outcome == "acquired" else task.wait_end
            if task.outcome == "acquired":
                row["duration_s"] = round(max(task.released - task.acquired, 1e-6) * f, 6)
            row["node"] = node
            if gpu is not None:
                row["gpu"] = gpu
            row["wait_s"] = round(max(0.0, end - task.arrival) * f, 6)
            row["outcome"] = task.outcome
            row["attempts"] = task.attempts
            if self.config_digest:
                row["config_digest"] = self.config_digest
            rows.append(row)
        return rows

    def summary(self) -> str:
        n_to = sum(t.outcome == "timeout" for t in self.done)
        span = (self.last_t - self.first_t) if self.first_t is not None else 0.0
        unknown = sum(t.task_type is None for t in self.done)
        text = [f"{len(self.done)} tasks ({n_to} timed out, {unknown} of unknown type) from "
                f"{self.lines} MONITOR lines over {span:.1f} s"]
        for reason, n in sorted(self.counts.items()):
            if n:
                text.append(f"  {n:>7}  {reason}")
        return "\n".join(text)
