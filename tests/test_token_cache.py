"""Users remembers access tokens that passed verification (the JWT decode is a quarter of a submission's
event-loop time); what a token may do must not change because it was seen before."""

from __future__ import annotations

import pytest

from scoreboard import users as users_module
from scoreboard.errors import Unauthorized

from harness import Http, register_and_login


@pytest.fixture
def clocked(server_factory, clock):
    server = server_factory(clock=clock)
    return server, Http(server.url)


def _me(client: Http, token: str):
    return client.get("/users/me", headers={"Authorization": f"Bearer {token}"})


def test_a_token_seen_before_still_expires(clocked, clock):
    server, client = clocked
    token = register_and_login(client, "alice")["access_token"]
    assert _me(client, token).status == 200
    assert token in server.app.users.verified
    ttl_s, leeway_s = server.config.auth.access_ttl_s, server.config.auth.leeway_s

    clock.advance((ttl_s + leeway_s - 1) * 1000)
    assert _me(client, token).status == 200
    clock.advance(2000)
    response = _me(client, token)

    assert response.status == 401 and response.code == "unauthorized"
    assert "expired" in response.json["error"]["message"]


def test_a_token_seen_before_is_refused_once_its_session_is_logged_out(clocked):
    server, client = clocked
    token = register_and_login(client, "bob")["access_token"]
    assert _me(client, token).status == 200

    assert client.post("/auth/logout", headers={"Authorization": f"Bearer {token}"}).status == 204

    assert _me(client, token).status == 401


def test_only_the_exact_token_is_remembered(clocked):
    server, client = clocked
    token = register_and_login(client, "carol")["access_token"]
    assert _me(client, token).status == 200
    head, payload, signature = token.split(".")
    forged = f"{head}.{payload}.{signature[:-2]}{'AA' if signature[-2:] != 'AA' else 'BB'}"

    assert _me(client, forged).status == 401
    assert forged not in server.app.users.verified


def test_the_memory_is_bounded(clocked, monkeypatch):
    server, client = clocked
    monkeypatch.setattr(users_module, "VERIFIED_TOKENS_MAX", 3)
    users = server.app.users
    tokens = [register_and_login(client, f"dave{i}")["access_token"] for i in range(5)]

    for token in tokens:
        assert _me(client, token).status == 200
        assert len(users.verified) <= 3
    assert all(_me(client, token).status == 200 for token in tokens)


def test_a_garbage_token_is_not_remembered(clocked):
    server, _ = clocked
    with pytest.raises(Unauthorized):
        server.call(server.app.users.principal("not.a.token"))
    assert server.app.users.verified == {}


def test_a_cached_session_lives_80_to_100_percent_of_session_cache_ms_so_sessions_expire_apart(clocked, clock):
    server, client = clocked
    cache_ms = server.config.auth.session_cache_ms
    login = register_and_login(client, "alice")
    key = users_module._session_key(login["session_id"])
    lifetimes = set()
    for _ in range(12):
        server.call(server.app.kv.delete(key))
        start = clock.now_ms()
        assert _me(client, login["access_token"]).status == 200  # caches the session afresh
        lifetimes.add(_lifetime(server, key, start, cache_ms))

    assert all(cache_ms * 0.8 <= lifetime <= cache_ms for lifetime in lifetimes), lifetimes
    assert len(lifetimes) > 1  # spread, not one common instant


def _lifetime(server, key: str, start: int, cache_ms: int) -> int:
    """The first ms after `start` at which `key` is gone (probing upwards: an expired read may delete it)."""
    at = start + int(cache_ms * 0.8) - 1
    while at <= start + cache_ms + 1 and server.call(server.app.kv.get(key, at)) is not None:
        at += 1
    return at - start
