"""Shared fixtures: which backends are reachable, and fresh isolated stores per test.

The suite always runs on the embedded backends (SQLite, memory). It runs on PostgreSQL + Redis too
whenever they are reachable; with CI=true an unreachable one is an error, never a skip.
"""

from __future__ import annotations

import asyncio
import os
import socket
import uuid

import pytest

REDIS_URL = os.environ.get("SCOREBOARD_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
POSTGRES_URL = os.environ.get("SCOREBOARD_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
IN_CI = os.environ.get("CI", "").lower() == "true"


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=1):
            return True
    except OSError:
        return False


def _require(name: str, host: str, port: int) -> None:
    if _reachable(host, port):
        return
    if IN_CI:
        pytest.fail(f"{name} at {host}:{port} is unreachable and CI=true: it must be running", pytrace=False)
    pytest.skip(f"{name} at {host}:{port} is not reachable")


def require_redis() -> str:
    _require("Redis", "127.0.0.1", 6379)
    return REDIS_URL


def require_postgres() -> str:
    _require("PostgreSQL", "127.0.0.1", 5432)
    return POSTGRES_URL


BACKENDS = ["embedded", "services"]


@pytest.fixture(params=BACKENDS)
def backend(request) -> str:
    """'embedded' (SQLite + memory) or 'services' (PostgreSQL + Redis); tests using it run on both."""
    if request.param == "services":
        require_redis()
        require_postgres()
    return request.param


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:12]


@pytest.fixture
def event_loop_runner():
    """A fresh asyncio loop for tests that drive async code directly."""
    loop = asyncio.new_event_loop()
    yield loop.run_until_complete
    loop.run_until_complete(loop.shutdown_asyncgens())
    loop.close()


@pytest.fixture
def redis_prefix(unique) -> str:
    return f"sbtest:{unique}:"


@pytest.fixture
def server_factory(backend, tmp_path):
    """Start app servers (in-process threads) on `backend`; all are stopped and cleaned up afterwards."""
    from harness import ServerThread, cleanup, merge, raw_config

    started, raws = [], []

    def start(extra: dict | None = None, clock=None, raw: dict | None = None):
        base = raw or raw_config(backend, tmp_path, REDIS_URL, POSTGRES_URL)
        if raw is None:
            raws.append(base)
        server = ServerThread(merge(base, extra or {}), clock)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
    for raw in raws:
        cleanup(raw)


@pytest.fixture
def server(server_factory):
    return server_factory()


@pytest.fixture
def client(server):
    from harness import Http

    return Http(server.url)


@pytest.fixture
def clock():
    """A ManualClock: pass it to server_factory(clock=...) and move time without sleeping."""
    from scoreboard.clock import ManualClock

    return ManualClock()
