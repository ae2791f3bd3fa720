"""YiVideo's lock log lines -> an observed trace (`gpusim trace import-yivideo-logs`).

The lines are those `services/common/locks.py` writes (wionch/YiVideo, commit 49653d3f, read
2026-11-28; listed in gpusim/real/yivideo_log.py, which writes them during a replay): logger
``locks``, format ``%(asctime)s - %(name)s - %(levelname)s - %(message)s``, asctime in the
host's local time with millisecond resolution (``2026-11-28 10:52:03,092``). The lines name the
Celery task (``{task}``, the same for every instance of a type) and the key, never a task id.

Celery's worker format, ``[%(asctime)s: %(levelname)s/%(processName)s] %(message)s`` (YiVideo's
celery_app.py sets it; a worker that takes over the root logger writes the ``locks`` lines so),
is read too: lines are told apart by their wording, and the pool process (one task at a time)
joins the pairing key, which makes concurrent same-type tasks unambiguous.

Pairing, per (host, task name, key[, pool process]):
* a start is the decorator's "开始获取锁 ... 超时: N秒" line; the lock manager's "... 最大等待:
  N秒" line that follows (paired oldest first) gives the arrival, since YiVideo takes
  start_time, from which it measures the logged waits, just before writing it (the thread can
  be descheduled for ms between the two lines); a lone line of either kind is the start;
* an acquisition or timeout line that logs its wait (``等待时间: X秒``, rounded to 0.01 s) goes
  to the waiting start whose arrival is closest to (line time - X); several starts within the
  tolerance (10 ms: 5 ms rounding + 1 ms per truncated asctime + slack) is an ambiguous pairing
  (counted; the earliest is taken, so a wait is off by at most the starts' spacing). An
  immediate acquisition (no wait logged) goes to the newest waiting start. An outcome line with
  a wait but no start within the tolerance rebuilds the start from the logged wait (counted);
* a release ("释放锁", or "尝试释放不持有的锁" when the key was gone) ends the newest unreleased
  acquisition of that (host, task, key) logged at least 50 ms before it (YiVideo logs the
  release after its EVAL, so the next waiter may acquire and log first); only one task holds
  a key at a time, so a release after a later acquisition of its key (50 ms or more) is
  counted: a release line is missing, or a hold outlived its lock_timeout (then, with two
  holders of one type, the pairing can swap their holds);
* the event path's second timeout line (same logged wait) and the decorator's "无法获取锁" line
  of the same task (within 1 s) are folded into its first timeout line; a give-up line with no
  timeout line is the timeout.
wait_s = outcome line time - arrival and duration_s = release line time - acquisition line time
(from the asctimes: 1 ms resolution); ``attempts`` only where the log gives the total (the
polling mechanism's retry count; 1 for an immediate acquisition): the event path's retry count
covers its polling phase only. Everything else is counted by reason and reported; nothing is
dropped silently. Several files are merged by time (the hosts' clocks and time zones are taken
to agree); a file's host is ``HOST=PATH``, else ``--host``, else its name up to the first dot.
Node = the key's node part in gpusim's spelling (``.../node/gpu_lock:N``), else the host; gpu =
N of a key ending in ``gpu_lock:N``.
"""

from __future__ import annotations

import gc
import gzip
import re
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Iterator

from gpusim.errors import InputError

__all__ = ["LogSource", "LogImport", "import_yivideo_logs", "parse_sources", "key_place"]

_LEVEL = r"(DEBUG|INFO|WARNING|ERROR|CRITICAL)"
_STAMP = r"(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})"
_PREFIX = re.compile(r"^" + _STAMP + r" - (\S+) - " + _LEVEL + r" - (.*)$")
# Celery's worker format (worker_log_format in YiVideo's celery_app.py), used when the worker
# took over the root logger: no logger name, but the pool process, which runs one task at a time.
_PREFIX_CELERY = re.compile(r"^\[" + _STAMP + r": " + _LEVEL + r"/([^\]]+)\] (.*)$")
_T = r"^任务 (?P<task>\S+) "  # Celery task names have no spaces
_K = r"'(?P<key>[^']*)'"
_W = r"等待时间: (?P<wait>\d+(?:\.\d+)?)秒"
_PATTERNS = [
    ("start", re.compile(_T + "开始获取锁 " + _K + r" \(机制: (?P<mech>\w+), 超时: (?P<mw>[^秒]+)秒\)$")),
    ("inner", re.compile(_T + "开始获取锁 " + _K + r" \(机制: (?P<mech>\w+), 最大等待: (?P<mw>[^秒]+)秒\)$")),
    ("immediate", re.compile(_T + "通过事件驱动立即获取锁 " + _K + "$")),
    ("event", re.compile(_T + "通过事件驱动获取锁 " + _K + r" \(" + _W + r"\)$")),
    ("polling", re.compile(_T + "通过轮询获取锁 " + _K + r" \(" + _W + r", 重试次数: (?P<n>\d+)\)$")),
    ("poll_timeout", re.compile(_T + "轮询获取锁 " + _K + r" 超时 \(" + _W + r", 重试次数: (?P<n>\d+)\)$")),
    ("event_timeout", re.compile(_T + "事件驱动获取锁 " + _K + r" 超时 \(" + _W + r"\)$")),
    ("give_up", re.compile(_T + "无法获取锁 " + _K + "，任务放弃执行$")),
    ("release", re.compile(_T + "释放锁 " + _K + r" \(原因: (?P<reason>\w+)\)$")),
    ("not_owner", re.compile(_T + "尝试释放不持有的锁 " + _K + r" \(当前值: (?P<value>.*)\)$")),
    ("emergency", re.compile(r"^使用应急方式释放锁 (?P<key>\S+)$")),
]
# locks-logger lines that carry no lock timing (statistics, progress, clean-up, errors).
_KNOWN_OTHER = re.compile(
    r"^(任务 \S+ (开始执行|执行完成|已等待 [\d.]+秒，重试 \d+ 次|GPU显存清理.*|获取锁失败，GPU显存已清理"
    r"|执行失败: .*|立即获取锁时发生异常: .*|释放锁时发生异常: .*|Redis客户端未初始化.*"
    r"|使用轮询机制获取锁 .*|收到锁释放通知: .*|事件触发但锁被抢占.*|事件等待超时.*)"
    r"|锁统计: .*|当前锁统计: .*|机制统计: .*|成功连接到Redis.*|无法连接到Redis.*|Redis.*Pub/Sub.*"
    r"|Pub/Sub.*|已发布锁释放事件.*|已订阅锁释放频道.*|已取消订阅锁释放频道.*|发布锁释放事件失败.*"
    r"|锁释放回调执行失败.*|处理Pub/Sub消息失败.*|获取GPU锁配置失败.*|Lua 脚本执行失败.*"
    r"|正常释放锁失败.*|应急释放锁也失败.*)$")
_LOCK_WORDS = ("获取锁", "释放锁", "释放不持有", "放弃执行")
#: Two asctimes truncated to the ms (up to 1 ms each), a wait rounded to 0.01 s (5 ms), slack.
PAIR_TOLERANCE_MS = 10
_FOLD_MS = 1000  # a task's later timeout lines follow its first within this (same thread)
_RACE_MS = 50    # a release line may follow the next holder's acquisition line by this much
_KEY_PLACE = re.compile(r"(?:(?:^|[:])(?P<node>[^:/]+)/)?gpu_lock:(?P<gpu>\d+)$")


@dataclass(frozen=True)
class LogSource:
    path: Path
    host: str


def parse_sources(items: list[str], host: str | None = None) -> list[LogSource]:
    """``PATH`` or ``HOST=PATH`` per item (see the module docstring for the default host)."""
    out = []
    for item in items:
        name, sep, rest = item.partition("=")
        if sep and name and "/" not in name and not Path(item).exists():
            out.append(LogSource(Path(rest), name))
        else:
            p = Path(item)
            out.append(LogSource(p, host or p.name.split(".")[0] or p.name))
    return out


def key_place(key: str, host: str | None) -> tuple[str | None, int | None]:
    """(node, gpu) of a lock key: the key's node part when gpusim spells one, else ``host``."""
    m = _KEY_PLACE.search(key)
    if m is None:
        return host, None
    return (m.group("node") or host), int(m.group("gpu"))


@dataclass
class _Line:
    t: int                 # milliseconds since the epoch of the naive asctime (taken as UTC)
    kind: str
    g: dict[str, str]
    where: str             # file:line
    order: tuple[int, int]
    proc: str | None = None  # the Celery pool process (Celery's format only)


@dataclass
class _Task:
    host: str
    name: str
    key: str
    arrival: int           # ms, as _Line.t
    where: str
    max_wait: float | None = None
    mech: str | None = None
    has_start: bool = False
    end: int | None = None            # acquisition or give-up line time (ms)
    outcome: str | None = None
    attempts: int | None = None
    released: int | None = None
    folded: set[str] = field(default_factory=set)


@dataclass
class LogImport:
    rows: list[dict[str, Any]]
    counts: Counter            # unpaired / repaired / ignored lines, by reason
    lines: int                 # lines read
    lock_lines: int            # lines of the locks logger that were used
    first_time: str | None     # the first arrival's asctime

    def summary(self) -> str:
        n_to = sum(r.get("outcome") == "timeout" for r in self.rows)
        text = [f"{len(self.rows)} tasks ({n_to} timed out) from {self.lines} lines "
                f"({self.lock_lines} lock lines used)"
                + (f", first arrival {self.first_time}" if self.first_time else "")]
        for reason, n in sorted(self.counts.items()):
            if n:
                text.append(f"  {n:>7}  {reason}")
        return "\n".join(text)


def _read(src: LogSource, index: int, counts: Counter) -> Iterator[_Line]:
    opener = gzip.open if src.path.name.endswith(".gz") else open
    name = src.path.name
    try:
        with opener(src.path, "rt", encoding="utf-8", errors="replace") as fh:
            for lineno, text in enumerate(fh, 1):
                line = _classify(text.rstrip("\r\n"), f"{name}:{lineno}",
                                 (index, lineno), counts)
                if line is not None:
                    yield line
    except FileNotFoundError:
        raise InputError("no such file", file=str(src.path)) from None
    except (OSError, EOFError) as exc:
        raise InputError(f"cannot read: {exc}", file=str(src.path)) from None


def _classify(text: str, where: str, order: tuple[int, int], counts: Counter) -> _Line | None:
    if not text.strip():
        return None
    m = _PREFIX.match(text)
    proc = None
    if m is not None:
        stamp, logger, _level, msg = m.groups()
        if logger != "locks":
            counts["lines of other loggers (ignored)"] += 1
            return None
    else:
        m = _PREFIX_CELERY.match(text)
        if m is None:
            counts["not a log line (torn, or a traceback/continuation line)"] += 1
            return None
        stamp, _level, proc, msg = m.groups()  # the logger is known by its wording only
        if not (_KNOWN_OTHER.match(msg) or any(w in msg for w in _LOCK_WORDS)):
            counts["lines of other loggers (ignored)"] += 1
            return None
    for kind, pat in _PATTERNS:
        g = pat.match(msg)
        if g is not None:
            return _Line(_stamp_ms(stamp), kind, g.groupdict(), where, order, proc)
    if _KNOWN_OTHER.match(msg):
        counts["locks lines without lock timing (statistics, progress; ignored)"] += 1
    elif any(w in msg for w in _LOCK_WORDS):
        counts["unreadable lock line (torn or unknown wording)"] += 1
    else:
        counts["other locks lines (ignored)"] += 1
    return None


_SECONDS: dict[str, int] = {}  # "YYYY-MM-DD HH:MM:SS" -> epoch s (strptime is slow)


def _stamp_ms(stamp: str) -> int:
    """Milliseconds since the epoch of an asctime (naive, taken as UTC)."""
    sec = _SECONDS.get(stamp[:19])
    if sec is None:
        if len(_SECONDS) > 100_000:
            _SECONDS.clear()
        t = datetime.strptime(stamp[:19], "%Y-%m-%d %H:%M:%S")
        sec = _SECONDS[stamp[:19]] = (t - datetime(1970, 1, 1)) // timedelta(seconds=1)
    return sec * 1000 + int(stamp[20:23])


class _Pairer:
    """The pairing state machine (see the module docstring)."""

    def __init__(self, counts: Counter):
        self.counts = counts
        self.waiting: dict[tuple, list[_Task]] = defaultdict(list)
        self.holding: dict[tuple, list[_Task]] = defaultdict(list)
        self.timed_out: dict[tuple, list[_Task]] = defaultdict(list)
        self.last_holder: dict[str, _Task] = {}  # per key: the latest acquisition logged
        self.done: list[_Task] = []

    def feed(self, host: str, ln: _Line) -> None:
        g = ln.g
        if ln.kind == "emergency":
            self.counts["emergency-release lines (follow a not-owner release)"] += 1
            return
        k = (host, g["task"], g["key"], ln.proc)
        if ln.kind in ("start", "inner"):
            self._start(k, ln)
        elif ln.kind in ("immediate", "event", "polling"):
            self._acquired(k, ln)
        elif ln.kind in ("poll_timeout", "event_timeout", "give_up"):
            self._timeout(k, ln)
        else:
            self._release(k, ln)

    def _start(self, k: tuple, ln: _Line) -> None:
        mw = _float(ln.g["mw"])
        if ln.kind == "inner":
            for task in self.waiting[k]:  # the oldest decorator line still without its pair
                if task.has_start and "inner" not in task.folded:
                    task.folded.add("inner")
                    task.arrival = ln.t  # start_time is taken just before this line
                    return
            self.counts["decorator start line missing (lock manager's start line used)"] += 1
        task = _Task(k[0], k[1], k[2], ln.t, ln.where, max_wait=mw, mech=ln.g["mech"],
                     has_start=True)
        if ln.kind == "inner":
            task.folded.add("inner")
        self.waiting[k].append(task)

    def _match(self, k: tuple, ln: _Line) -> _Task | None:
        """The waiting start this outcome line belongs to (removed from the waiting list)."""
        waiting = [t for t in self.waiting[k] if t.arrival <= ln.t]
        wait = ln.g.get("wait")
        if wait is None:
            if not waiting:
                if ln.kind != "immediate":
                    return None
                self.counts["start line missing (immediate acquisition: arrival = its line "
                            "time)"] += 1
                return _Task(k[0], k[1], k[2], ln.t, ln.where)
            task = waiting[-1]
        else:
            want = ln.t - round(float(wait) * 1000)
            fits = [t for t in waiting if abs(t.arrival - want) <= PAIR_TOLERANCE_MS]
            if len(fits) > 1:
                self.counts["ambiguous pairings (several starts fit; earliest taken)"] += 1
            if fits:
                task = fits[0]
            else:
                self.counts["start line missing (arrival = line time - logged wait)"] += 1
                return _Task(k[0], k[1], k[2], want, ln.where)
        self.waiting[k].remove(task)
        return task

    def _acquired(self, k: tuple, ln: _Line) -> None:
        task = self._match(k, ln)
        if task is None:
            self.counts["acquisition without a start line (dropped)"] += 1
            return
        task.end, task.outcome = ln.t, "acquired"
        if ln.kind == "immediate":
            task.attempts = 1
        elif ln.kind == "polling" and task.mech == "polling":
            task.attempts = int(ln.g["n"])
        self.holding[k].append(task)
        self.last_holder[k[2]] = task

    def _timeout(self, k: tuple, ln: _Line) -> None:
        for task in self.timed_out[k]:  # the same task's later timeout lines
            if ln.kind in task.folded or ln.t - (task.end or 0) > _FOLD_MS:
                continue
            wait = ln.g.get("wait")
            if wait is None or abs(ln.t - round(float(wait) * 1000) - task.arrival) \
                    <= PAIR_TOLERANCE_MS:
                task.folded.add(ln.kind)
                return
        task = self._match(k, ln) if ln.kind != "give_up" else self._oldest_due(k, ln)
        if task is None:
            self.counts["timeout without a start line (dropped)"] += 1
            return
        if ln.kind == "give_up":
            self.counts["timeout line missing (give-up line used)"] += 1
        task.end, task.outcome = ln.t, "timeout"
        task.folded.add(ln.kind)
        if ln.kind == "poll_timeout" and task.mech == "polling":
            task.attempts = int(ln.g["n"])
        self.timed_out[k] = [t for t in self.timed_out[k] if ln.t - (t.end or 0) <= _FOLD_MS]
        self.timed_out[k].append(task)
        self.done.append(task)

    def _oldest_due(self, k: tuple, ln: _Line) -> _Task | None:
        for task in self.waiting[k]:
            if (task.max_wait is None
                    or task.arrival + task.max_wait * 1000 <= ln.t + PAIR_TOLERANCE_MS):
                self.waiting[k].remove(task)
                return task
        return None

    def _release(self, k: tuple, ln: _Line) -> None:
        holders = self.holding[k]
        if not holders:
            self.counts["release without an acquisition (dropped)"] += 1
            return
        # The newest holder that acquired more than _RACE_MS before this line: YiVideo logs a
        # release after its EVAL, so the next waiter may acquire and log first.
        settled = [t for t in holders if (t.end or 0) <= ln.t - _RACE_MS]
        task = settled[-1] if settled else holders[-1]
        latest = self.last_holder.get(k[2])
        if latest is not None and latest is not task and (latest.end or 0) <= ln.t - _RACE_MS:
            # the key was acquired again since: a release line is missing, or this hold
            # outlived its lock_timeout and the key was taken under it
            self.counts["releases paired across a later acquisition of the key"] += 1
        holders.remove(task)
        task.released = ln.t
        if ln.kind == "not_owner":
            self.counts["not-owner releases (key expired or taken; hold ends there)"] += 1
        self.done.append(task)

    def finish(self) -> None:
        for tasks in self.waiting.values():
            self.counts["start with no outcome line (log ends while waiting; dropped)"] += \
                len(tasks)
        for tasks in self.holding.values():
            self.counts["acquired, no release line (log ends while holding; dropped)"] += \
                len(tasks)


def _stamp_config(rows: list[dict[str, Any]], tasks: list[_Task], config: Any, f: float,
                  counts: Counter) -> None:
    from gpusim.config import LockSettings, config_digest
    lock = config.gpu_lock if isinstance(config, LockSettings) else config
    digest, want = config_digest(lock), lock.max_wait_time / f
    by_id = {f"{t.host}/{t.where}": t for t in tasks}
    for row in rows:
        mw = by_id[row["task_id"]].max_wait
        if mw is None or abs(mw - want) > 1e-6 * max(1.0, want):
            counts["tasks whose logged max wait is not --config's (no config_digest)"] += 1
        else:
            row["config_digest"] = digest


def _seconds(ms: float, f: float) -> float:
    """Milliseconds of the log -> trace seconds at scale ``f`` (rounded to the microsecond)."""
    return round(ms * f / 1000.0, 6)


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def import_yivideo_logs(sources: list[LogSource], *, time_scale: float = 1.0,
                        config: Any = None) -> LogImport:
    """Read, merge by time and pair the lock lines of ``sources`` (module docstring).

    ``time_scale`` multiplies every time (a replay at F-fold speed logs F-fold short waits);
    the tolerances above are in the log's own (wall) seconds. ``config`` (a GpuLockConfig or
    LockSettings the tasks ran under) puts its digest on each row whose start line logged the
    same max wait (max_wait_time / time_scale); a differing one is counted and gets none.
    """
    if not (time_scale > 0 and time_scale < float("inf")):
        raise InputError("must be a positive number", field="time_scale")
    if not sources:
        raise InputError("no log file given", field="LOG")
    was_enabled = gc.isenabled()
    gc.disable()  # millions of small acyclic objects: collections would rescan them for nothing
    try:
        return _import(sources, time_scale, config)
    finally:
        if was_enabled:
            gc.enable()


def _import(sources: list[LogSource], time_scale: float, config: Any) -> LogImport:
    counts: Counter = Counter()
    lines: list[tuple[str, _Line]] = []
    n_read = 0
    for i, src in enumerate(sources):
        before = sum(counts.values())
        got = [(src.host, ln) for ln in _read(src, i, counts)]
        n_read += len(got) + sum(counts.values()) - before
        lines.extend(got)
    lines.sort(key=lambda hl: (hl[1].t, hl[1].order))
    pairer = _Pairer(counts)
    for host, ln in lines:
        pairer.feed(host, ln)
    pairer.finish()
    if not lines:
        raise InputError("no lock lines found (logger 'locks', YiVideo's log format)",
                         file=str(sources[0].path))
    rows = _rows(pairer.done, time_scale, counts)
    if config is not None:
        _stamp_config(rows, pairer.done, config, time_scale, counts)
    first = min((t.arrival for t in pairer.done), default=None)
    stamp = (datetime.fromtimestamp(first / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S,%f")[:-3]
             if first is not None else None)
    return LogImport(rows, counts, n_read, len(lines), stamp)


def _rows(tasks: list[_Task], f: float, counts: Counter) -> list[dict[str, Any]]:
    tasks = sorted(tasks, key=lambda t: (t.arrival, t.where))
    t0 = tasks[0].arrival if tasks else 0
    rows = []
    for task in tasks:
        node, gpu = key_place(task.key, task.host)
        row: dict[str, Any] = {"task_id": f"{task.host}/{task.where}", "task_type": task.name,
                               "arrival_s": _seconds(task.arrival - t0, f)}
        if task.outcome == "acquired":
            hold_ms = (task.released or 0) - (task.end or 0)
            if hold_ms <= 0:  # same asctime: the hold is under the log's 1 ms resolution
                counts["holds under the 1 ms resolution (written as 0.5 ms)"] += 1
                hold_ms = 0.5
            row["duration_s"] = _seconds(hold_ms, f)
        if node is not None:
            row["node"] = node
        if gpu is not None:
            row["gpu"] = gpu
        row["wait_s"] = _seconds(max(0, (task.end or task.arrival) - task.arrival), f)
        row["outcome"] = task.outcome
        if task.attempts is not None:
            row["attempts"] = task.attempts
        rows.append(row)
    return rows
