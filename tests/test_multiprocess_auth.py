"""Two server processes sharing one PostgreSQL schema and one Redis prefix agree on sessions at once.

PROTOCOL: "The session is revoked at once on every server process". Only the services backend shares
state between processes (the embedded one is a single process by design), so these run on it alone.
"""

from __future__ import annotations

import pytest

from conftest import POSTGRES_URL, REDIS_URL
from harness import Http, ServerProcess, cleanup, raw_config, register_and_login

pytestmark = pytest.mark.parametrize("backend", ["services"], indirect=True)  # needs a store shared by processes


@pytest.fixture(scope="module")
def processes(tmp_path_factory):
    """Processes A and B on one schema and prefix; A migrates the empty schema, B starts once A is healthy.

    Started once for this module: every test works with users of its own.
    """
    workdir = tmp_path_factory.mktemp("two-processes")
    raw = raw_config("services", workdir, REDIS_URL, POSTGRES_URL)
    started = []
    try:
        started.append(ServerProcess(raw, workdir))
        started.append(ServerProcess(raw, workdir))
        yield Http(started[0].url), Http(started[1].url)
    finally:
        for server in started:
            server.stop()
        cleanup(raw)


@pytest.fixture
def pair(backend, request):
    return request.getfixturevalue("processes")


@pytest.fixture
def username(unique) -> str:
    return f"u{unique}"


def test_a_token_issued_by_one_process_is_accepted_by_the_other(pair, username):
    a, b = pair
    session = register_and_login(a, username)

    response = b.with_token(session["access_token"]).get("/users/me")

    assert response.status == 200
    assert response.json["user_id"] == session["user"]["user_id"]


def test_logout_on_one_process_is_refused_on_the_other_at_once(pair, username):
    a, b = pair
    session = register_and_login(a, username)
    assert b.with_token(session["access_token"]).get("/users/me").status == 200  # B has seen the session

    assert a.with_token(session["access_token"]).post("/auth/logout").status == 204

    response = b.with_token(session["access_token"]).get("/users/me")
    assert response.status == 401
    assert response.code == "unauthorized"


def test_after_logout_on_one_process_the_refresh_token_is_refused_on_the_other(pair, username):
    a, b = pair
    session = register_and_login(a, username)
    a.with_token(session["access_token"]).post("/auth/logout")

    response = b.post("/auth/refresh", {"refresh_token": session["refresh_token"]})

    assert response.status == 401
    assert response.code == "unauthorized"


def test_refresh_token_reuse_across_processes_revokes_the_session_on_both(pair, username):
    a, b = pair
    session = register_and_login(a, username)
    rotated = b.post("/auth/refresh", {"refresh_token": session["refresh_token"]}).json
    assert a.with_token(rotated["access_token"]).get("/users/me").status == 200

    assert a.post("/auth/refresh", {"refresh_token": session["refresh_token"]}).status == 401

    assert b.with_token(rotated["access_token"]).get("/users/me").status == 401
    assert a.with_token(rotated["access_token"]).get("/users/me").status == 401
