"""PROTOCOL "Realtime: GET /ws" end to end on both backends: ops, errors, ACL, limits, close codes, events."""

from __future__ import annotations

import asyncio
import base64
import os

import pytest
from tornado.httpclient import HTTPClientError
from wsclient import Ws, make_admin, run, submit

from harness import Http, Player

ERROR_KEYS = {"op", "code", "message"}


def upgrade_headers(token: str | None = None) -> dict:
    headers = {"Upgrade": "websocket", "Connection": "Upgrade", "Sec-WebSocket-Version": "13",
               "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode()}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return headers


# ---- ops ------------------------------------------------------------------------------------------


def test_ping_is_answered_with_pong(server):
    async def body():
        ws = await Ws.open(server)
        assert await ws.call(op="ping") == {"op": "pong"}
        ws.close()

    run(body())


def test_auth_message_answers_authed_with_user_id_and_role(server, client):
    player = Player(client, "alice")

    async def body():
        ws = await Ws.open(server)
        reply = await ws.call(op="auth", token=player.login["access_token"])
        assert reply == {"op": "authed", "user_id": player.user_id, "role": "player"}
        assert (await ws.subscribe(f"user:{player.user_id}"))["recovered"] is False
        ws.close()

    run(body())


def test_bad_token_in_auth_message_gets_unauthorized_then_close_4001(server):
    async def body():
        ws = await Ws.open(server)
        reply = await ws.call(op="auth", token="not.a.jwt")
        assert set(reply) == ERROR_KEYS and reply["op"] == "error" and reply["code"] == "unauthorized"
        assert await ws.close_code() == 4001

    run(body())


def test_auth_after_another_message_is_invalid_and_the_connection_stays_anonymous(server, client):
    player = Player(client, "alice")

    async def body():
        ws = await Ws.open(server)
        await ws.nothing_queued()
        reply = await ws.call(op="auth", token=player.login["access_token"])
        assert reply["op"] == "error" and reply["code"] == "invalid_request"
        assert (await ws.call(op="subscribe", channel=f"user:{player.user_id}"))["code"] == "forbidden"
        ws.close()

    run(body())


def test_auth_after_the_timeout_is_invalid(server_factory):
    server = server_factory({"websocket": {"auth_timeout_s": 0}})
    player = Player(Http(server.url), "alice")

    async def body():
        ws = await Ws.open(server)
        await asyncio.sleep(0.01)  # past a zero timeout, whatever the clock's resolution
        assert (await ws.call(op="auth", token=player.login["access_token"]))["code"] == "invalid_request"
        ws.close()

    run(body())


def test_bearer_on_the_upgrade_authenticates_without_an_authed_frame(server, client):
    player = Player(client, "alice")

    async def body():
        ws = await Ws.open(server, token=player.login["access_token"])
        reply = await ws.subscribe(f"user:{player.user_id}")
        assert reply["snapshot"] == {"boards": {}}
        again = await ws.call(op="auth", token=player.login["access_token"])
        assert again["code"] == "invalid_request"  # already authenticated
        ws.close()

    run(body())


def test_bad_bearer_refuses_the_upgrade_with_a_401_json_error(server, client):
    response = client.get("/ws", headers=upgrade_headers("not.a.jwt"))

    assert response.status == 401
    assert response.json["error"]["code"] == "unauthorized"
    assert response.json["error"]["request_id"] == response.headers["x-request-id"]

    async def body():
        with pytest.raises(HTTPClientError) as refused:
            await Ws.open(server, token="not.a.jwt")
        assert refused.value.code == 401

    run(body())


def test_unsubscribe_is_acknowledged_and_stops_events(server, client):
    player = Player(client, "alice")

    async def body():
        leaving, staying = await Ws.open(server), await Ws.open(server)
        await leaving.subscribe("leaderboard:global")
        await staying.subscribe("leaderboard:global")
        assert await leaving.call(op="unsubscribe", channel="leaderboard:global") == {
            "op": "unsubscribed", "channel": "leaderboard:global"}
        await submit(player, 50)
        await staying.event("top")
        # The same fan-out would have written to `leaving` before `staying` got its copy.
        await leaving.nothing_queued()
        assert await leaving.call(op="unsubscribe", channel="leaderboard:global") == {
            "op": "unsubscribed", "channel": "leaderboard:global"}
        leaving.close()
        staying.close()

    run(body())


# ---- errors ---------------------------------------------------------------------------------------


def test_unknown_op_or_bad_json_is_invalid_request_and_the_connection_stays_open(server):
    async def body():
        ws = await Ws.open(server)
        for message in ('{"op": "dance"}', "not json", "[1, 2]", '{"channel": "x"}', '{"op": 7}'):
            await ws.send_raw(message)
            reply = await ws.recv()
            assert reply["op"] == "error" and reply["code"] == "invalid_request" and reply["message"], message
        await ws.send_raw(b'{"op": "ping"}', binary=True)
        assert (await ws.recv())["code"] == "invalid_request"
        await ws.nothing_queued()
        ws.close()

    run(body())


def test_bad_channels_get_their_error_code_with_the_channel(server):
    async def body():
        ws = await Ws.open(server)
        for channel, code in (("leaderboard:nope", "not_found"), ("leaderboard:", "invalid_request"),
                              ("lobby:1", "invalid_request"), ("user:abc", "invalid_request"),
                              ("user:0", "invalid_request"), ("admin:other", "invalid_request")):
            reply = await ws.call(op="subscribe", channel=channel)
            assert reply == {"op": "error", "code": code, "message": reply["message"], "channel": channel}
        assert (await ws.call(op="subscribe", channel=7))["code"] == "invalid_request"
        ws.close()

    run(body())


def test_malformed_since_is_invalid_request(server):
    async def body():
        ws = await Ws.open(server)
        for since in ({"epoch": "e"}, {"offset": 1}, {"epoch": "e", "offset": -1}, {"epoch": 1, "offset": 1},
                      {"epoch": "e", "offset": True}, "e:1"):
            reply = await ws.call(op="subscribe", channel="leaderboard:global", since=since)
            assert reply["code"] == "invalid_request", since
        ws.close()

    run(body())


# ---- ACL ------------------------------------------------------------------------------------------


def test_anonymous_may_only_subscribe_to_leaderboards(server):
    async def body():
        ws = await Ws.open(server)
        for channel in ("user:1", "admin:alerts"):
            assert (await ws.call(op="subscribe", channel=channel))["code"] == "forbidden"
        assert (await ws.subscribe("leaderboard:global"))["recovered"] is False
        ws.close()

    run(body())


def test_a_player_may_not_read_another_users_channel_or_admin_alerts(server, client):
    alice, bob = Player(client, "alice"), Player(client, "bob")

    async def body():
        ws = await Ws.authed(server, alice)
        for channel in (f"user:{bob.user_id}", "admin:alerts"):
            reply = await ws.call(op="subscribe", channel=channel)
            assert reply["code"] == "forbidden" and reply["channel"] == channel
        await ws.subscribe(f"user:{alice.user_id}")
        await ws.subscribe("leaderboard:global")
        ws.close()

    run(body())


def test_an_admin_may_read_any_user_channel_and_admin_alerts(server, client):
    alice, root = Player(client, "alice"), make_admin(server, client, "root")

    async def body():
        ws = await Ws.authed(server, root)
        assert (await ws.subscribe(f"user:{alice.user_id}"))["snapshot"] == {"boards": {}}
        alerts = await ws.subscribe("admin:alerts")
        assert alerts["snapshot"] == {} and alerts["offset"] == 0
        server.call(server.app.hub.publish_alert("flag", {"user_id": alice.user_id, "reason": "too_fast"}))
        event = await ws.event("flag")
        assert event == {"op": "event", "channel": "admin:alerts", "epoch": alerts["epoch"], "offset": 1,
                         "type": "flag", "data": {"user_id": alice.user_id, "reason": "too_fast"}}
        ws.close()

    run(body())


def test_without_public_reads_anonymous_is_refused_and_a_token_is_needed(server_factory):
    server = server_factory({"server": {"public_reads": False}})
    player = Player(Http(server.url), "alice")

    async def body():
        anonymous = await Ws.open(server)
        for channel, code in (("leaderboard:global", "unauthorized"), ("user:1", "forbidden")):
            assert (await anonymous.call(op="subscribe", channel=channel))["code"] == code
        await anonymous.nothing_queued()
        authed = await Ws.authed(server, player)
        await authed.subscribe("leaderboard:global")
        anonymous.close()
        authed.close()

    run(body())


# ---- limits and close codes -----------------------------------------------------------------------


def test_over_max_subscriptions_is_forbidden_and_resubscribing_does_not_count(server_factory):
    server = server_factory({"websocket": {"max_subscriptions": 2}, "boards": {
        "global": {}, "daily": {"reset": "daily"}, "speed": {"order": "asc", "operator": "best"}}})

    async def body():
        ws = await Ws.open(server)
        await ws.subscribe("leaderboard:global")
        await ws.subscribe("leaderboard:daily")
        await ws.subscribe("leaderboard:daily")
        reply = await ws.call(op="subscribe", channel="leaderboard:speed")
        assert reply["code"] == "forbidden" and reply["channel"] == "leaderboard:speed"
        await ws.call(op="unsubscribe", channel="leaderboard:global")
        await ws.subscribe("leaderboard:speed")
        ws.close()

    run(body())


def test_a_message_flood_is_closed_4029(server_factory):
    server = server_factory({"websocket": {"max_messages_per_s": 5}})

    async def body():
        ws = await Ws.open(server)
        for _ in range(30):
            await ws.send(op="ping")
        assert await ws.close_code() == 4029

    run(body())


def test_connections_over_the_cap_are_refused_with_503(server_factory):
    server = server_factory({"websocket": {"max_connections": 1}})
    client = Http(server.url)

    async def body():
        first = await Ws.open(server)
        await first.nothing_queued()
        response = await asyncio.to_thread(client.get, "/ws", headers=upgrade_headers())
        assert response.status == 503 and response.json["error"]["code"] == "unavailable"
        first.close()

    run(body())


def test_stopping_the_server_closes_connections_1001(server_factory):
    server = server_factory()

    async def body():
        ws = await Ws.open(server)
        await ws.subscribe("leaderboard:global")
        await asyncio.to_thread(server.call, server.app.hub.close())
        assert await ws.close_code() == 1001

    run(body())


# ---- snapshots and events -------------------------------------------------------------------------


def test_subscribed_reply_and_snapshots_have_the_protocol_shape(server, client):
    alice, bob = Player(client, "alice"), Player(client, "bob")
    assert alice.submit(300).status == 200 and bob.submit(100).status == 200

    async def body():
        ws = await Ws.authed(server, alice)
        board = await ws.subscribe("leaderboard:global")
        assert set(board) == {"op", "channel", "epoch", "offset", "recovered", "snapshot"}
        assert isinstance(board["epoch"], str) and isinstance(board["offset"], int)
        assert board["recovered"] is False
        assert board["snapshot"] == {"board": "global", "period": "all", "entries": [
            {"rank": 1, "user_id": alice.user_id, "username": "alice", "score": 300},
            {"rank": 2, "user_id": bob.user_id, "username": "bob", "score": 100}]}
        mine = await ws.subscribe(f"user:{alice.user_id}")
        assert mine["snapshot"] == {"boards": {"global": {"score": 300, "rank": 1}}}
        assert mine["offset"] == 1  # one `score` event so far
        ws.close()

    run(body())


def test_a_submission_brings_a_top_event_and_the_users_score_event(server, client):
    alice, bob = Player(client, "alice"), Player(client, "bob")
    assert bob.submit(100).status == 200

    async def body():
        board, mine = await Ws.open(server), await Ws.authed(server, alice)
        subscribed = await board.subscribe("leaderboard:global")
        own = await mine.subscribe(f"user:{alice.user_id}")
        result = await submit(alice, 250)
        score = await mine.event("score")
        assert score == {"op": "event", "channel": f"user:{alice.user_id}", "epoch": own["epoch"],
                         "offset": own["offset"] + 1, "type": "score", "data": {
                             "board": "global", "period": "all", "score": 250, "rank": 1, "previous_rank": None,
                             "action_id": result["action_id"]}}
        top = await board.event("top")
        assert top["offset"] == subscribed["offset"] + 1 and top["epoch"] == subscribed["epoch"]
        assert top["data"] == {"board": "global", "period": "all", "entries": [
            {"rank": 1, "user_id": alice.user_id, "username": "alice", "score": 250},
            {"rank": 2, "user_id": bob.user_id, "username": "bob", "score": 100}]}
        board.close()
        mine.close()

    run(body())


def test_frames_and_connections_are_counted(server, client):
    player = Player(client, "alice")

    async def body():
        ws = await Ws.open(server)
        await ws.subscribe("leaderboard:global")
        await submit(player, 10)
        await ws.event("top")
        metrics = (await asyncio.to_thread(client.get, "/metrics")).raw.decode()
        assert "scoreboard_ws_connections 1.0" in metrics
        assert "scoreboard_ws_frames_sent_total 2.0" in metrics  # subscribed + top
        ws.close()

    run(body())
