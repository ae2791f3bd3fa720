"""Where a `gpusim tune` study lives, so several processes and machines can share it.

`open_storage(url, default_journal)` turns one user-facing string into an Optuna storage:

| url                                            | kind    | Optuna storage                        |
|------------------------------------------------|---------|---------------------------------------|
| None                                           | journal | JournalFileBackend at default_journal |
| a path, `journal:///abs/path`, `file:rel`      | journal | JournalFileBackend at that path       |
| `sqlite:///path`                               | sqlite  | RDBStorage (writes serialised, below) |
| any other SQLAlchemy URL (`postgresql://`...)  | rdb     | RDBStorage                            |
| `redis://host:port/db`, `rediss://`, `unix://` | redis   | JournalRedisBackend                   |

Every failure (bad URL, unknown scheme, missing driver, unreachable server, unwritable journal)
is one `gpusim.InputError(..., field="storage")` whose message never holds a password.
Heartbeats and retries live in advisor/worker.py and work the same on every kind: RDBStorage's
own heartbeat is left off (it takes whole seconds, runs only under study.optimize and warns on
every study.ask). On Redis the journal keeps Optuna's key names (`:log_number`, `:log:N`, so
optuna-dashboard and plain Optuna read it): give it a database of its own, e.g. redis://host/2.
"""

from __future__ import annotations

import os
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit, urlunsplit

import optuna

from gpusim import InputError

__all__ = ["StudyStorage", "open_storage", "redact"]

_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.\-]*)://")
_REDIS_SCHEMES = {"redis", "rediss", "unix"}
_DRIVER_HINT = {"postgresql": "pip install psycopg2-binary",
                "mysql": "pip install PyMySQL"}
_DRIVER_FALLBACK = {
    "postgresql": (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")),
    "mysql": (("MySQLdb", "mysql+mysqldb"), ("pymysql", "mysql+pymysql")),
}
_INIT_RACE = ("already exists", "unique constraint", "duplicate key")
_CONNECT_TIMEOUT_S = 10  # an unreachable host must fail the command, not hang it
_SECRET_QUERY_KEYS = {"password", "passwd", "pwd"}
_SECRET_QUERY_ITEM = re.compile(r"(?i)([?&;])(password|passwd|pwd)=[^&;#]*")


@dataclass(frozen=True)
class StudyStorage:
    """An opened storage plus what a report may say about it."""

    storage: optuna.storages.BaseStorage
    url: str  # as given, password removed: safe to print or write into a report
    kind: str  # "journal" | "sqlite" | "rdb" | "redis"
    heartbeat_s: float = 10.0  # a running trial records a heartbeat this often
    grace_s: float = 30.0  # a RUNNING trial silent this long is presumed dead


def redact(url: str) -> str:
    """`url` with any password (in user:password@ or a password= query item) replaced by ***."""
    m = _URL.match(url)
    if not m:
        return url
    rest = url[m.end():]  # edited in place: urlunsplit would turn sqlite://// into sqlite://
    cut = min([i for i in (rest.find(c) for c in "/?#") if i >= 0], default=len(rest))
    netloc, tail = rest[:cut], rest[cut:]
    userinfo, at, host = netloc.rpartition("@")
    if at and ":" in userinfo:
        netloc = f"{userinfo.partition(':')[0]}:***@{host}"
    tail = _SECRET_QUERY_ITEM.sub(r"\1\2=***", tail)
    return url[:m.end()] + netloc + tail


def _secrets(url: str) -> list[str]:
    """The password spellings that could leak into a driver's error message."""
    if not _URL.match(url):
        return []
    parts = urlsplit(url)
    found = [v for k, v in parse_qsl(parts.query) if k.lower() in _SECRET_QUERY_KEYS]
    if parts.password:
        found.append(parts.password)
    return [s for raw in found for s in {raw, unquote(raw)} if s]


def _fail(url: str, what: str, err: BaseException | str | None = None) -> InputError:
    """One line: the storage (password removed), what is wrong, the first line of the cause."""
    detail = ""
    if err is not None:
        text = str(err).strip().splitlines()
        detail = f": {text[0]}" if text else f": {type(err).__name__}"
        for secret in _secrets(url):
            detail = detail.replace(secret, "***")
    return InputError(f"'{redact(url)}': {what}{detail}", field="storage")


def open_storage(url: str | None, default_journal: Path, *, heartbeat_s: float = 10,
                 grace_s: float = 30) -> StudyStorage:
    """Open (creating when new) the storage `url` names; None means the default journal file."""
    if not heartbeat_s > 0 or not grace_s > heartbeat_s:
        raise InputError(f"need 0 < heartbeat_s < grace_s, got heartbeat_s={heartbeat_s} "
                         f"and grace_s={grace_s}", field="storage")
    if url is not None and not url.strip():
        raise InputError("the storage URL is empty", field="storage")
    timing = {"heartbeat_s": float(heartbeat_s), "grace_s": float(grace_s)}
    if url is None:
        return StudyStorage(_journal(str(default_journal), str(default_journal)),
                            str(default_journal), "journal", **timing)
    url = url.strip()
    path = _journal_path(url)
    if path is not None:
        return StudyStorage(_journal(path, url), redact(url), "journal", **timing)
    scheme = _URL.match(url).group(1).lower()  # type: ignore[union-attr]
    if scheme in _REDIS_SCHEMES:
        return StudyStorage(_redis(url), redact(url), "redis", **timing)
    kind = "sqlite" if scheme.split("+")[0] == "sqlite" else "rdb"
    return StudyStorage(_rdb(url, kind), redact(url), kind, **timing)


def _journal_path(url: str) -> str | None:
    """The file a journal URL names, or None when `url` is not a journal URL."""
    for prefix in ("journal:", "file:"):
        if url.lower().startswith(prefix):
            rest = url[len(prefix):]
            path = rest[2:] if rest.startswith("//") else rest  # journal:///abs -> /abs
            if not path:
                raise _fail(url, "no journal file path in it")
            return unquote(path)
    return None if _URL.match(url) else url


def _journal(path: str, url: str) -> optuna.storages.BaseStorage:
    file = Path(path).expanduser()
    parent = file.parent
    if not parent.is_dir():
        raise _fail(url, f"the folder '{parent}' does not exist")
    if file.exists() and not file.is_file():
        raise _fail(url, "the journal path is not a file")
    if not os.access(parent, os.W_OK) or (file.exists() and not os.access(file, os.W_OK)):
        raise _fail(url, "cannot write the journal file")
    try:
        backend = optuna.storages.journal.JournalFileBackend(str(file))
        return optuna.storages.JournalStorage(backend)
    except OSError as err:
        raise _fail(url, "cannot write the journal file", err.strerror or err) from None
    except Exception as err:  # a file that is not an Optuna journal fails on replay
        raise _fail(url, "not an Optuna journal file", err) from None


def _redis(url: str) -> optuna.storages.BaseStorage:
    import redis  # optuna imports it lazily too; a missing package is a bad install

    parts = urlsplit(url)
    if parts.scheme.lower() != "unix" and not re.fullmatch(r"/?|/\d+", parts.path):
        raise _fail(url, "the Redis database must be a number, as in redis://host:6379/0")
    probe_url = _with_query_default(url, "socket_connect_timeout", str(_CONNECT_TIMEOUT_S))
    try:
        redis.Redis.from_url(probe_url)  # parses only: a bad URL fails here, clearly
    except ValueError as err:
        raise _fail(url, "not a valid Redis URL", err) from None
    try:
        with warnings.catch_warnings():  # JournalRedisBackend is "experimental" since 3.1
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            backend = optuna.storages.journal.JournalRedisBackend(probe_url)
        return optuna.storages.JournalStorage(backend)
    except redis.exceptions.RedisError as err:
        raise _fail(url, "cannot reach the Redis server", err) from None
    except Exception as err:
        raise _fail(url, "cannot read the Optuna journal in Redis", err) from None


def _with_query_default(url: str, key: str, value: str) -> str:
    parts = urlsplit(url)
    items = parse_qsl(parts.query, keep_blank_values=True)
    if any(k == key for k, _ in items):
        return url
    return urlunsplit(parts._replace(query=urlencode([*items, (key, value)])))


def _rdb(url: str, kind: str) -> optuna.storages.BaseStorage:
    parsed = _parse_rdb_url(url)
    if kind == "sqlite":
        _check_sqlite_path(url, parsed.database)
    parsed = _installed_driver(parsed)
    try:
        storage = _new_rdb_storage(parsed)
    except ImportError as err:
        hint = _DRIVER_HINT.get(parsed.get_backend_name(),
                                f"install the driver '{parsed.drivername}' names")
        raise _fail(url, f"no database driver installed ({hint})",
                    err.__cause__ or err) from None
    except Exception as err:  # connection refused, auth, unknown database, locked file...
        cause = getattr(err, "orig", None) or err.__cause__ or err
        raise _fail(url, "cannot open the database", cause) from None
    if kind == "sqlite":
        _serialise_sqlite_writes(storage.engine)
    return storage


def _parse_rdb_url(url: str):
    import sqlalchemy
    from sqlalchemy.engine import make_url

    try:
        parsed = make_url(url)
        if parsed.drivername.split("+")[0] == "postgres":  # Heroku's spelling, refused by 2.x
            parsed = parsed.set(drivername="postgresql" + parsed.drivername[len("postgres"):])
        parsed.get_dialect()  # names the dialect without importing its driver
        return parsed
    except sqlalchemy.exc.NoSuchModuleError:
        scheme = url.partition(":")[0]
        raise _fail(url, f"unknown storage scheme '{scheme}' (expected a journal file path, "
                    "sqlite:///path, redis://host:port/db or a SQLAlchemy URL such as "
                    "postgresql://user@host/db)") from None
    except (sqlalchemy.exc.ArgumentError, ValueError) as err:
        raise _fail(url, "not a valid storage URL", err) from None


def _new_rdb_storage(parsed) -> optuna.storages.RDBStorage:
    """RDBStorage, tried again when another process was creating the same tables meanwhile.

    Optuna creates its tables and stamps its schema version without a lock, so two workers
    starting together on a new database can collide ("table ... already exists").
    """
    for attempt in range(3):
        try:
            return optuna.storages.RDBStorage(parsed.render_as_string(hide_password=False),
                                              engine_kwargs=_engine_kwargs(parsed))
        except Exception as err:
            if attempt == 2 or not any(s in str(err).lower() for s in _INIT_RACE):
                raise
            time.sleep(0.2 * (attempt + 1))
    raise AssertionError("unreachable")


def _installed_driver(parsed):
    """postgresql:// or mysql:// with the driver that is installed, when the default is not.

    SQLAlchemy 2.1 maps postgresql:// to psycopg (3) and mysql:// to mysqlclient; a host that
    has only psycopg2-binary or PyMySQL should still work without spelling the driver.
    """
    from importlib.util import find_spec

    candidates = _DRIVER_FALLBACK.get(parsed.drivername, ())
    for module, driver in candidates:
        if find_spec(module) is not None:
            return parsed.set(drivername=driver)
    return parsed


def _check_sqlite_path(url: str, database: str | None) -> None:
    if not database or database == ":memory:" or database.startswith("file:"):
        return
    parent = Path(database).expanduser().parent
    if not parent.is_dir():
        raise _fail(url, f"the folder '{parent}' does not exist")
    if not os.access(parent, os.W_OK):
        raise _fail(url, "cannot write the SQLite file")


def _engine_kwargs(parsed) -> dict:
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        # The driver's own transaction handling is turned off so that every transaction can
        # start with BEGIN IMMEDIATE (see _serialise_sqlite_writes); wait for the lock, not fail.
        return {"connect_args": {"isolation_level": None, "timeout": 60}}
    if backend in ("postgresql", "mysql") and "connect_timeout" not in parsed.query:
        return {"connect_args": {"connect_timeout": _CONNECT_TIMEOUT_S}}
    return {}


def _serialise_sqlite_writes(engine) -> None:
    """Make Optuna's read-check-write transactions atomic on SQLite.

    Optuna guards "finish a RUNNING trial" and "pop a WAITING trial" with SELECT ... FOR UPDATE,
    which SQLite ignores; with Python's sqlite3 the SELECT even runs outside the transaction, so
    two processes could both see RUNNING and both "win". BEGIN IMMEDIATE takes the write lock
    before the SELECT, so the second process waits and then sees the first one's write.
    """
    from sqlalchemy import event

    def begin_immediate(conn) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")

    event.listen(engine, "begin", begin_immediate)
