"""PROTOCOL "Auth" and "Errors" end to end: register, login, /users/me, refresh rotation, logout, limits.

Every test runs against a real server on both backends (SQLite + memory, PostgreSQL + Redis).
"""

from __future__ import annotations

import base64
import re

import pytest

from harness import Http, register_and_login

PASSWORD = "correct horse battery"
ERROR_KEYS = {"code", "message", "request_id"}


def login(client: Http, username: str, password: str = PASSWORD):
    return client.post("/auth/login", {"username": username, "password": password})


def refresh(client: Http, refresh_token: str):
    return client.post("/auth/refresh", {"refresh_token": refresh_token})


def me(client: Http, token: str):
    return client.with_token(token).get("/users/me")


# ---- register -----------------------------------------------------------------------------------


def test_register_returns_201_with_user_id_and_username(client):
    response = client.post("/auth/register", {"username": "Alice", "password": PASSWORD})

    assert response.status == 201
    assert set(response.json) == {"user_id", "username"}
    assert isinstance(response.json["user_id"], int)
    assert response.json["username"] == "Alice"


def test_register_refuses_a_username_taken_in_another_case(client):
    assert client.post("/auth/register", {"username": "Alice", "password": PASSWORD}).status == 201

    response = client.post("/auth/register", {"username": "aLICE", "password": PASSWORD})

    assert response.status == 400
    assert response.code == "invalid_request"


def test_register_is_forbidden_while_registration_is_closed(server_factory):
    client = Http(server_factory({"auth": {"open_registration": False}}).url)

    response = client.post("/auth/register", {"username": "alice", "password": PASSWORD})

    assert response.status == 403
    assert response.code == "forbidden"


# ---- login --------------------------------------------------------------------------------------


def test_login_returns_every_protocol_field(client, server):
    created = client.post("/auth/register", {"username": "alice", "password": PASSWORD}).json

    response = login(client, "alice")

    assert response.status == 200
    body = response.json
    assert set(body) == {"access_token", "token_type", "expires_in", "refresh_token", "session_id",
                         "session_key", "user"}
    assert body["token_type"] == "Bearer"
    assert body["expires_in"] == server.config.auth.access_ttl_s
    assert isinstance(body["access_token"], str) and body["access_token"].count(".") == 2
    assert isinstance(body["refresh_token"], str) and body["refresh_token"]
    assert isinstance(body["session_id"], str) and body["session_id"]
    assert body["user"] == {"user_id": created["user_id"], "username": "alice", "role": "player"}


def test_login_session_key_is_32_bytes_of_unpadded_base64url(client):
    body = register_and_login(client, "alice")

    key = body["session_key"]

    assert re.fullmatch(r"[A-Za-z0-9_-]{43}", key)
    assert len(base64.urlsafe_b64decode(key + "=")) == 32


def test_login_accepts_the_username_in_any_case(client):
    client.post("/auth/register", {"username": "Alice", "password": PASSWORD})

    response = login(client, "ALICE")

    assert response.status == 200
    assert response.json["user"]["username"] == "Alice"


def test_login_with_a_wrong_password_is_unauthorized(client):
    client.post("/auth/register", {"username": "alice", "password": PASSWORD})

    response = login(client, "alice", "wrong password!")

    assert response.status == 401
    assert response.code == "unauthorized"


def test_login_of_an_unknown_user_is_unauthorized(client):
    response = login(client, "nobody")

    assert response.status == 401
    assert response.code == "unauthorized"


def test_two_logins_open_two_sessions_with_different_keys(client):
    first = register_and_login(client, "alice")

    second = login(client, "alice").json

    assert second["session_id"] != first["session_id"]
    assert second["session_key"] != first["session_key"]


# ---- login rate limit ---------------------------------------------------------------------------


@pytest.fixture
def limited_client(server_factory):
    """A server that locks a username after 3 failed logins a minute."""
    return Http(server_factory({"auth": {"login_limit_per_username": "3/m"}}).url)


def test_failed_logins_over_the_username_limit_get_429_with_retry_after(limited_client):
    limited_client.post("/auth/register", {"username": "alice", "password": PASSWORD})
    for _ in range(3):
        assert login(limited_client, "alice", "wrong password!").status == 401

    response = login(limited_client, "alice", "wrong password!")

    assert response.status == 429
    assert response.code == "rate_limited"
    assert int(response.headers["retry-after"]) >= 1


def test_a_locked_username_is_refused_even_with_the_right_password(limited_client):
    limited_client.post("/auth/register", {"username": "alice", "password": PASSWORD})
    for _ in range(3):
        login(limited_client, "alice", "wrong password!")

    response = login(limited_client, "alice")

    assert response.status == 429
    assert response.code == "rate_limited"


def test_the_username_lock_does_not_touch_other_usernames(limited_client):
    limited_client.post("/auth/register", {"username": "alice", "password": PASSWORD})
    limited_client.post("/auth/register", {"username": "bob", "password": PASSWORD})
    for _ in range(4):
        login(limited_client, "alice", "wrong password!")

    assert login(limited_client, "alice").status == 429
    assert login(limited_client, "bob").status == 200


# ---- /users/me ----------------------------------------------------------------------------------


def test_me_returns_the_profile_of_the_token_owner(client):
    session = register_and_login(client, "alice")

    response = me(client, session["access_token"])

    assert response.status == 200
    body = response.json
    assert set(body) == {"user_id", "username", "role", "status", "boards"}
    assert body["user_id"] == session["user"]["user_id"]
    assert body["username"] == "alice"
    assert body["role"] == "player"
    assert body["status"] == "active"
    assert isinstance(body["boards"], dict)


def test_me_without_a_token_is_unauthorized(client):
    response = client.get("/users/me")

    assert response.status == 401
    assert response.code == "unauthorized"


# ---- refresh ------------------------------------------------------------------------------------


def test_refresh_keeps_the_session_id_and_key(client):
    session = register_and_login(client, "alice")

    response = refresh(client, session["refresh_token"])

    assert response.status == 200
    assert response.json["session_id"] == session["session_id"]
    assert response.json["session_key"] == session["session_key"]
    assert response.json["token_type"] == "Bearer"
    assert response.json["user"] == session["user"]


def test_refresh_issues_new_tokens_that_work(client):
    session = register_and_login(client, "alice")

    renewed = refresh(client, session["refresh_token"]).json

    assert renewed["access_token"] != session["access_token"]
    assert renewed["refresh_token"] != session["refresh_token"]
    assert me(client, renewed["access_token"]).status == 200
    assert refresh(client, renewed["refresh_token"]).status == 200


def test_a_refresh_token_works_only_once(client):
    session = register_and_login(client, "alice")
    assert refresh(client, session["refresh_token"]).status == 200

    response = refresh(client, session["refresh_token"])

    assert response.status == 401
    assert response.code == "unauthorized"


def test_reusing_a_spent_refresh_token_revokes_the_whole_session(client):
    session = register_and_login(client, "alice")
    rotated = refresh(client, session["refresh_token"]).json
    assert me(client, rotated["access_token"]).status == 200

    refresh(client, session["refresh_token"])

    assert me(client, rotated["access_token"]).status == 401
    assert me(client, session["access_token"]).status == 401
    assert refresh(client, rotated["refresh_token"]).status == 401


def test_an_unknown_refresh_token_is_unauthorized(client):
    session = register_and_login(client, "alice")

    response = refresh(client, session["session_id"] + ".not-the-real-token")

    assert response.status == 401
    assert response.code == "unauthorized"


# ---- logout -------------------------------------------------------------------------------------


def test_logout_returns_204_without_a_body(client):
    session = register_and_login(client, "alice")

    response = client.with_token(session["access_token"]).post("/auth/logout")

    assert response.status == 204
    assert response.raw == b""


def test_after_logout_the_access_token_is_refused(client):
    session = register_and_login(client, "alice")
    client.with_token(session["access_token"]).post("/auth/logout")

    response = me(client, session["access_token"])

    assert response.status == 401
    assert response.code == "unauthorized"


def test_after_logout_the_refresh_token_is_refused(client):
    session = register_and_login(client, "alice")
    client.with_token(session["access_token"]).post("/auth/logout")

    response = refresh(client, session["refresh_token"])

    assert response.status == 401
    assert response.code == "unauthorized"


def test_logout_leaves_the_users_other_sessions_alone(client):
    first = register_and_login(client, "alice")
    second = login(client, "alice").json

    client.with_token(first["access_token"]).post("/auth/logout")

    assert me(client, second["access_token"]).status == 200


def test_logout_without_a_token_is_unauthorized(client):
    response = client.post("/auth/logout")

    assert response.status == 401
    assert response.code == "unauthorized"


# ---- access token expiry (injected clock, no sleeping) ------------------------------------------


@pytest.fixture
def clocked(server_factory, clock):
    """A server whose every clock is `clock`; returns (client, access_ttl_s, leeway_s)."""
    server = server_factory(clock=clock)
    return Http(server.url), server.config.auth.access_ttl_s, server.config.auth.leeway_s


def test_an_access_token_past_its_expiry_but_within_the_leeway_is_accepted(clocked, clock):
    client, ttl_s, leeway_s = clocked
    token = register_and_login(client, "alice")["access_token"]
    assert leeway_s >= 2

    clock.advance((ttl_s + leeway_s - 1) * 1000)

    assert me(client, token).status == 200


def test_an_access_token_past_its_expiry_plus_leeway_is_unauthorized(clocked, clock):
    client, ttl_s, leeway_s = clocked
    token = register_and_login(client, "alice")["access_token"]

    clock.advance((ttl_s + leeway_s + 1) * 1000)

    response = me(client, token)
    assert response.status == 401
    assert response.code == "unauthorized"


def test_refresh_after_the_access_token_expired_gives_a_working_token(clocked, clock):
    client, ttl_s, leeway_s = clocked
    session = register_and_login(client, "alice")
    clock.advance((ttl_s + leeway_s + 1) * 1000)

    renewed = refresh(client, session["refresh_token"]).json

    assert me(client, renewed["access_token"]).status == 200


# ---- request ids and the error shape ------------------------------------------------------------


def _sample_responses(client: Http, max_body: int) -> dict:
    """One response of each kind the auth endpoints give: successes and every error family."""
    created = client.post("/auth/register", {"username": "alice", "password": PASSWORD})
    session = login(client, "alice").json
    return {
        "healthz 200": client.get("/healthz"),
        "register 201": created,
        "login 200": login(client, "alice"),
        "me 200": me(client, session["access_token"]),
        "refresh 200": refresh(client, session["refresh_token"]),
        "bad json 400": client.post("/auth/login", b"{not json"),
        "bad field 400": client.post("/auth/register", {"username": "a", "password": PASSWORD}),
        "wrong method": client.get("/auth/login"),
        "no token 401": client.get("/users/me"),
        "wrong password 401": login(client, "alice", "wrong password!"),
        "unknown path 404": client.get("/no/such/path"),
        "too large 413": client.post("/auth/login", b" " * (max_body + 1)),
        "logout 204": client.with_token(session["access_token"]).post("/auth/logout"),
    }


def test_every_response_carries_an_x_request_id(client, server):
    responses = _sample_responses(client, server.config.server.max_body_bytes)

    missing = [name for name, response in responses.items() if not response.headers.get("x-request-id")]

    assert missing == []


def test_request_ids_differ_between_requests(client):
    ids = {client.get("/healthz").headers["x-request-id"] for _ in range(5)}

    assert len(ids) == 5


def test_a_well_formed_client_request_id_is_echoed(client):
    response = client.get("/users/me", headers={"X-Request-Id": "game-client.42_abc"})

    assert response.headers["x-request-id"] == "game-client.42_abc"
    assert response.json["error"]["request_id"] == "game-client.42_abc"


def test_a_malformed_client_request_id_is_replaced(client):
    response = client.get("/healthz", headers={"X-Request-Id": "bad id with spaces"})

    assert re.fullmatch(r"[A-Za-z0-9._-]{1,64}", response.headers["x-request-id"])
    assert response.headers["x-request-id"] != "bad id with spaces"


def test_error_bodies_have_exactly_code_message_and_request_id(client, server):
    responses = _sample_responses(client, server.config.server.max_body_bytes)
    errors = {name: r for name, r in responses.items() if r.status >= 400 and name != "bad field 400"}

    for name, response in errors.items():
        assert response.headers["content-type"].startswith("application/json"), name
        assert set(response.json) == {"error"}, name
        assert set(response.json["error"]) == ERROR_KEYS, name
        assert all(isinstance(response.json["error"][key], str) for key in ERROR_KEYS), name


def test_field_errors_add_only_a_field_hint_to_the_error_shape(client):
    response = client.post("/auth/register", {"username": "a", "password": PASSWORD})

    assert set(response.json) == {"error"}
    assert ERROR_KEYS <= set(response.json["error"]) <= ERROR_KEYS | {"field", "reason"}
    assert response.json["error"]["field"] == "username"


def test_the_error_request_id_equals_the_header(client, server):
    responses = _sample_responses(client, server.config.server.max_body_bytes)

    mismatched = [name for name, r in responses.items()
                  if r.status >= 400 and r.json["error"]["request_id"] != r.headers["x-request-id"]]

    assert mismatched == []
