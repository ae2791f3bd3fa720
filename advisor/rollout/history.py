"""The config history: an append-only JSONL file, one applied gpu_lock config a line
(GPU_LOCK_CONFIG_004: keep the history, roll back to a stable config, audit every change).

Each line is one entry: when (`at`, UTC), who, why, the gpu_lock values as loaded (with any
GPU_LOCK_* environment overrides and the source file's sha256), their digest, the rec.json it
came from, whether it is known to be stable, and a hash chain: `prev_sha256` is the SHA-256 of
the previous line's bytes (newline included; 64 zeros on the first line) and `sha256` the
SHA-256 of the entry's canonical JSON without `sha256`. So an edited line (its own hash fails,
or the next line's `prev_sha256` does), a removed or inserted line (the chain and `seq` break)
and a cut last line (no newline, or not JSON) are all detected and named by line. What the
file alone cannot show is the removal of whole lines at its end: `history list` prints the head
hash so it can be kept elsewhere (a commit message, a ticket) and compared.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Mapping

from gpusim import GpuLockConfig, InputError, LockSettings, config_digest, load_lock_settings

SCHEMA = "gpusim.config-history/1"
GENESIS = "0" * 64
ENTRY_KEYS = ("schema", "seq", "at", "who", "why", "config", "config_digest", "rec", "stable",
              "prev_sha256", "sha256")
ENV_PREFIX = "GPU_LOCK_"


def canonical(doc: Mapping[str, Any]) -> str:
    """The one serialisation every hash is taken over: sorted keys, no spaces, UTF-8."""
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      allow_nan=False)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@dataclass(frozen=True)
class HistoryEntry:
    """One line of the history, verified."""
    line: int
    doc: dict[str, Any]          # the entry as stored
    line_sha256: str             # SHA-256 of the line's bytes: the next entry's prev_sha256

    @property
    def seq(self) -> int:
        return self.doc["seq"]

    @property
    def stable(self) -> bool:
        return self.doc["stable"]

    @property
    def digest(self) -> str:
        return self.doc["config_digest"]

    @property
    def gpu_lock(self) -> GpuLockConfig:
        return GpuLockConfig(**self.doc["config"]["gpu_lock"])


def parse_at(text: str | None, *, field: str = "--at") -> str:
    """UTC ISO 8601 with a Z; None is now. Naive times are UTC (as in traces)."""
    if text is None:
        ts = datetime.now(UTC)
    else:
        try:
            ts = datetime.fromisoformat(text)
        except ValueError:
            raise InputError(f"not an ISO 8601 time: {text!r}", field=field) from None
        ts = ts if ts.tzinfo is not None else ts.replace(tzinfo=UTC)
    ts = ts.astimezone(UTC)
    spec = "microseconds" if ts.microsecond else "seconds"
    return ts.isoformat(timespec=spec).replace("+00:00", "Z")


# -- reading and verifying ----------------------------------------------------------------------


def _bad(path: str, line: int, message: str, field: str | None = None) -> InputError:
    return InputError(message, file=path, line=line, field=field)


def _check_fields(doc: Any, path: str, line: int) -> None:
    if not isinstance(doc, dict):
        raise _bad(path, line, "not a history entry (expected a JSON object)")
    missing = [k for k in ENTRY_KEYS if k not in doc]
    extra = sorted(set(doc) - set(ENTRY_KEYS))
    if missing or extra:
        what = f"missing {', '.join(missing)}" if missing else f"unknown {', '.join(extra)}"
        raise _bad(path, line, f"not a history entry: {what}", (missing or extra)[0])
    if doc["schema"] != SCHEMA:
        raise _bad(path, line, f"expected schema {SCHEMA}, got {doc['schema']!r}", "schema")
    for key, kind in (("seq", int), ("at", str), ("who", str), ("why", str), ("config", dict),
                      ("config_digest", str), ("stable", bool), ("prev_sha256", str),
                      ("sha256", str)):
        if not isinstance(doc[key], kind) or (kind is int and isinstance(doc[key], bool)):
            raise _bad(path, line, f"expected {kind.__name__}", key)
    if doc["rec"] is not None and not isinstance(doc["rec"], dict):
        raise _bad(path, line, "expected an object or null", "rec")


def _check_config(doc: dict[str, Any], path: str, line: int) -> None:
    raw = doc["config"].get("gpu_lock")
    try:
        cfg = GpuLockConfig(**raw) if isinstance(raw, dict) else None
    except (TypeError, ValueError) as err:
        raise _bad(path, line, f"invalid gpu_lock values: {err}", "config.gpu_lock") from None
    if cfg is None:
        raise _bad(path, line, "expected the gpu_lock values", "config.gpu_lock")
    if config_digest(cfg) != doc["config_digest"]:
        raise _bad(path, line, "config_digest does not match the gpu_lock values",
                   "config_digest")


def _split_lines(data: bytes, path: str) -> list[bytes]:
    if not data:
        return []
    lines = data.split(b"\n")
    if lines[-1] != b"":
        raise _bad(path, len(lines), "truncated: the last line has no newline (a cut or "
                   "interrupted write); the history cannot be trusted past line "
                   f"{len(lines) - 1}")
    return lines[:-1]


def parse_history(data: bytes, path: str) -> list[HistoryEntry]:
    """Every entry, verified: schema, fields, own hash, chain, sequence, digest."""
    entries: list[HistoryEntry] = []
    prev = GENESIS
    for i, raw in enumerate(_split_lines(data, path), start=1):
        try:
            doc = json.loads(raw.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise _bad(path, i, f"not a JSON line ({err}): edited or cut") from None
        _check_fields(doc, path, i)
        body = {k: v for k, v in doc.items() if k != "sha256"}
        if sha256_hex(canonical(body).encode("utf-8")) != doc["sha256"]:
            raise _bad(path, i, "edited: the entry does not match its own sha256", "sha256")
        if doc["prev_sha256"] != prev:
            why = (f"line {i - 1} was edited after line {i} was written, or lines between "
                   f"them were removed or inserted" if i > 1 else
                   "the first line's prev_sha256 must be 64 zeros: earlier lines were removed")
            raise _bad(path, i, f"the hash chain breaks here: {why}", "prev_sha256")
        if doc["seq"] != i:
            raise _bad(path, i, f"seq is {doc['seq']}, expected {i}: a line was removed or "
                       "inserted", "seq")
        _check_config(doc, path, i)
        entries.append(HistoryEntry(i, doc, sha256_hex(raw + b"\n")))
        prev = entries[-1].line_sha256
    return entries


def read_history(path: str | Path) -> list[HistoryEntry]:
    """Read and verify a history file; a missing file is an error (nothing to list or roll
    back to)."""
    source = str(path)
    try:
        data = Path(source).read_bytes()
    except FileNotFoundError:
        raise InputError("no such history file", file=source) from None
    except OSError as err:
        raise InputError(f"cannot read: {err.strerror}", file=source) from None
    return parse_history(data, source)


def head_sha256(entries: list[HistoryEntry]) -> str:
    """The hash of the last line: keep it elsewhere to detect lines removed from the end."""
    return entries[-1].line_sha256 if entries else GENESIS


# -- appending ----------------------------------------------------------------------------------


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """The GPU_LOCK_* variables in force (load_lock_settings applied them to the values)."""
    return {k: v for k, v in sorted(environ.items()) if k.startswith(ENV_PREFIX)}


def rec_info(rec_path: str | None, cfg: GpuLockConfig) -> dict[str, Any] | None:
    """Which rec.json the config came from: its path, bytes' sha256, status, and whether the
    config is the one it recommends."""
    if rec_path is None:
        return None
    from advisor.recommendation import load_recommendation
    rec = load_recommendation(rec_path)
    data = Path(rec_path).read_bytes()
    recommended = rec.recommended.gpu_lock if rec.recommended is not None else None
    matches = (recommended is not None
               and config_digest(GpuLockConfig(**recommended)) == config_digest(cfg))
    return {"path": str(rec_path), "sha256": sha256_hex(data), "status": rec.status,
            "matches_recommended": matches}


@dataclass(frozen=True)
class NewEntry:
    """What `history add` is told; `at` None means now, `who` None means $USER."""
    config_path: str
    why: str
    who: str | None = None
    rec_path: str | None = None
    stable: bool = False
    at: str | None = None


def _who(given: str | None, environ: Mapping[str, str]) -> str:
    who = given if given is not None else (environ.get("USER") or "unknown")
    if not who.strip() or "\n" in who:
        raise InputError("must be a non-empty single line", field="--who")
    return who


def build_entry(new: NewEntry, settings: LockSettings, seq: int, prev: str,
                environ: Mapping[str, str]) -> dict[str, Any]:
    if not new.why.strip():
        raise InputError("say why the config changes (non-empty)", field="--why")
    cfg = settings.gpu_lock
    file_sha = sha256_hex(Path(new.config_path).read_bytes())
    doc = {
        "schema": SCHEMA, "seq": seq, "at": parse_at(new.at), "who": _who(new.who, environ),
        "why": new.why,
        "config": {"source": str(new.config_path), "file_sha256": file_sha,
                   "gpu_lock": cfg.model_dump(), "env_overrides": env_overrides(environ)},
        "config_digest": config_digest(cfg), "rec": rec_info(new.rec_path, cfg),
        "stable": bool(new.stable), "prev_sha256": prev,
    }
    doc["sha256"] = sha256_hex(canonical(doc).encode("utf-8"))
    return doc


def _read_fd(fd: int) -> bytes:
    chunks, offset = [], 0
    while True:
        chunk = os.pread(fd, 1 << 20, offset)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        offset += len(chunk)


def append_entry(path: str | Path, new: NewEntry,
                 environ: Mapping[str, str] | None = None) -> HistoryEntry:
    """Verify the history and append one entry, under an exclusive lock on the file: opened
    O_APPEND, one whole line written, fsync'd. A corrupt history is refused (exit 2); a write
    that fails midway is cut back so the file stays a valid history."""
    environ = os.environ if environ is None else environ
    settings = load_lock_settings(new.config_path, environ=environ)  # bad config: no file made
    source = str(path)
    created = not os.path.exists(source)
    try:
        fd = os.open(source, os.O_RDWR | os.O_APPEND | os.O_CREAT, 0o644)
    except OSError as err:
        raise InputError(f"cannot open: {err.strerror}", file=source) from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # two appenders would both take the same seq
        data = _read_fd(fd)
        entries = parse_history(data, source)
        doc = build_entry(new, settings, len(entries) + 1, head_sha256(entries), environ)
        line = (canonical(doc) + "\n").encode("utf-8")
        _write_whole(fd, line, len(data), source)
    finally:
        os.close(fd)
    if created:
        _fsync_folder(source)
    return HistoryEntry(len(entries) + 1, doc, sha256_hex(line))


def _write_whole(fd: int, line: bytes, size: int, source: str) -> None:
    try:
        view = memoryview(line)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    except OSError as err:
        try:
            os.ftruncate(fd, size)  # no half line left behind
        except OSError:
            pass
        reason = "disk full" if err.errno == errno.ENOSPC else err.strerror
        raise InputError(f"cannot append: {reason}", file=source) from None


def _fsync_folder(source: str) -> None:
    try:
        dfd = os.open(os.path.dirname(os.path.abspath(source)), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def entry_row(e: HistoryEntry) -> dict[str, Any]:
    """One entry as a flat row (history list, --json)."""
    d = e.doc
    return {"seq": d["seq"], "at": d["at"], "who": d["who"], "why": d["why"],
            "stable": d["stable"], "config_digest": d["config_digest"],
            "source": d["config"].get("source"), "gpu_lock": d["config"]["gpu_lock"],
            "env_overrides": d["config"].get("env_overrides", {}),
            "rec": d["rec"], "line": e.line, "line_sha256": e.line_sha256}
