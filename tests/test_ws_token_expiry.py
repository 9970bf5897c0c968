"""An access token that expires on an open WebSocket ends the connection with 4001, as its next HTTP
request would be refused; the clients refresh and reconnect (test_client_live covers their side).

Tokens here live 2 s with no leeway, so each test waits about 2 s for the server's close event.
"""

from __future__ import annotations

import time

import jwt
import pytest
from wsclient import Ws, run

from harness import Http, Player

SHORT_TOKENS = {"auth": {"access_ttl_s": 2, "leeway_s": 0}}


@pytest.fixture
def srv(server_factory):
    return server_factory(SHORT_TOKENS)


@pytest.fixture
def player(srv) -> Player:
    return Player(Http(srv.url), "expiring")


def test_a_connection_authenticated_on_the_upgrade_is_closed_4001_when_its_token_expires(srv, player):
    async def body():
        ws = await Ws.open(srv, player.login["access_token"])
        await ws.subscribe(f"user:{player.user_id}")
        assert await ws.close_code() == 4001
        assert ws.conn.close_reason == "token expired"
        assert time.time() >= token_expiry(player)  # not a moment before

    run(body())


def test_a_connection_authenticated_by_message_is_closed_4001_when_its_token_expires(srv, player):
    async def body():
        ws = await Ws.authed(srv, player)
        assert await ws.close_code() == 4001
        assert ws.conn.close_reason == "token expired"

    run(body())


def test_an_anonymous_spectator_outlives_the_tokens_of_others(srv, player):
    async def body():
        spectator = await Ws.open(srv)
        await spectator.subscribe("leaderboard:global")
        authed = await Ws.open(srv, player.login["access_token"])
        assert await authed.close_code() == 4001
        await spectator.nothing_queued()
        spectator.close()

    run(body())


def token_expiry(player: Player) -> int:
    return jwt.decode(player.login["access_token"], options={"verify_signature": False})["exp"]
