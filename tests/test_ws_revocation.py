"""A revoked session stops working on live connections too: logout closes its WebSockets with 4001."""

from __future__ import annotations

from wsclient import Ws, run

from harness import Player


def test_logout_closes_the_sessions_websocket_with_4001(server, client):
    player = Player(client, "leaver")

    async def body():
        ws = await Ws.open(server, player.login["access_token"])
        await ws.subscribe(f"user:{player.user_id}")
        assert player.http.post("/auth/logout").status == 204
        assert await ws.close_code() == 4001

    run(body())


def test_logout_leaves_other_sessions_connections_open(server, client):
    player = Player(client, "twosessions")
    other = client.post("/auth/login", {"username": "twosessions", "password": "correct horse battery"}).json

    async def body():
        first = await Ws.authed(server, player)
        second = await Ws.open(server, other["access_token"])
        assert player.http.post("/auth/logout").status == 204
        assert await first.close_code() == 4001
        await second.nothing_queued()
        second.close()

    run(body())


def test_reusing_a_spent_refresh_token_closes_the_sessions_websocket(server, client):
    player = Player(client, "reuser")
    refresh = player.login["refresh_token"]
    assert client.post("/auth/refresh", {"refresh_token": refresh}).status == 200

    async def body():
        ws = await Ws.open(server, player.login["access_token"])
        assert client.post("/auth/refresh", {"refresh_token": refresh}).status == 401
        assert await ws.close_code() == 4001

    run(body())
