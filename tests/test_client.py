"""The Python client (scoreboard/client.py): signing vectors, HTTP round trips and errors on a real server.

Server tests run on both backends (SQLite + memory, PostgreSQL + Redis).
"""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import pytest

from scoreboard import signing
from scoreboard.client import ClientError, Live, NetworkError, ScoreboardClient, backoff_delay, sign_body, ws_url

VECTORS = Path(__file__).resolve().parents[2] / "shared" / "vectors" / "signing.json"
PASSWORD = "correct horse battery"


def signing_cases() -> list[dict]:
    if not VECTORS.exists():
        return []
    return json.loads(VECTORS.read_text(encoding="utf-8"))["cases"]


# ---- signing --------------------------------------------------------------------------------------


@pytest.mark.skipif(not VECTORS.exists(), reason=f"no signing vectors at {VECTORS}")
@pytest.mark.parametrize("case", signing_cases(), ids=lambda case: case["x_signature"][3:11])
def test_sign_body_matches_every_shared_vector(case):
    raw = case["raw_body_utf8"].encode("utf-8")

    assert sign_body(case["session_key"], raw) == case["x_signature"]


@pytest.mark.skipif(not VECTORS.exists(), reason=f"no signing vectors at {VECTORS}")
def test_the_vector_file_has_cases():
    assert len(signing_cases()) >= 1


def logged_in_offline(key: str = "AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh8") -> ScoreboardClient:
    client = ScoreboardClient("http://127.0.0.1:1", clock_ms=lambda: 1_795_000_000_000)
    client.session_key, client.access_token = key, "token"
    return client


def test_build_submission_signs_exactly_the_bytes_it_returns():
    client = logged_in_offline()

    raw, signature = client.build_submission(300, duration_ms=41_250, level=3, note="café")

    signing.verify(client.session_key, raw, signature)  # raises on mismatch
    assert re.fullmatch(r"v1=[0-9a-f]{64}", signature)
    assert "café".encode() in raw


def test_build_submission_body_follows_the_protocol():
    client = logged_in_offline()

    body = json.loads(client.build_submission(300, board="weekly", duration_ms=41_250, level=3)[0])

    assert list(body) == ["action_id", "board", "seq", "ts", "nonce", "score_data"]
    assert re.fullmatch(r"[0-9a-f]{32}", body["action_id"])
    assert body["board"] == "weekly"
    assert body["ts"] == 1_795_000_000_000
    assert re.fullmatch(r"[A-Za-z0-9_-]{16,64}", body["nonce"])
    assert body["score_data"] == {"type": "level_complete", "points": 300, "duration_ms": 41_250, "level": 3}


def test_build_submission_omits_the_default_board_and_counts_seq_up():
    client = logged_in_offline()

    bodies = [json.loads(client.build_submission(10)[0]) for _ in range(3)]

    assert "board" not in bodies[0]
    assert [body["seq"] for body in bodies] == [1, 2, 3]
    assert len({body["nonce"] for body in bodies}) == 3
    assert len({body["action_id"] for body in bodies}) == 3


def test_build_submission_keeps_a_given_action_id():
    body = json.loads(logged_in_offline().build_submission(10, action_id="level-3-run-7")[0])

    assert body["action_id"] == "level-3-run-7"


def test_build_submission_needs_a_session():
    with pytest.raises(ClientError) as caught:
        ScoreboardClient("http://127.0.0.1:1").build_submission(10)

    assert caught.value.code == "unauthorized"


# ---- backoff --------------------------------------------------------------------------------------


def test_backoff_equal_jitter_stays_between_half_and_the_whole_step():
    assert backoff_delay(0, rand=lambda: 0.0) == 0.25
    assert backoff_delay(0, rand=lambda: 1.0) == 0.5
    assert backoff_delay(3, rand=lambda: 1.0) == 4.0


def test_backoff_is_capped_at_30_seconds():
    assert backoff_delay(10, rand=lambda: 1.0) == 30.0
    assert backoff_delay(1000, rand=lambda: 0.0) == 15.0


def test_backoff_full_and_no_jitter():
    assert backoff_delay(2, jitter="full", rand=lambda: 0.5) == 1.0
    assert backoff_delay(2, jitter="none") == 2.0
    with pytest.raises(ValueError):
        backoff_delay(0, jitter="sometimes")


def test_ws_url_is_derived_from_the_http_base():
    assert ws_url("http://127.0.0.1:8000") == "ws://127.0.0.1:8000/ws"
    assert ws_url("https://scores.example/api/") == "wss://scores.example/api/ws"
    assert ws_url("ws://h:1/ws") == "ws://h:1/ws"


# ---- against a real server ------------------------------------------------------------------------


async def logged_in(server, username: str) -> ScoreboardClient:
    client = ScoreboardClient(server.url)
    await client.register(username, PASSWORD)
    await client.login(username, PASSWORD)
    return client


def test_register_login_submit_and_read_back(server, event_loop_runner):
    async def scenario():
        client = ScoreboardClient(server.url)
        created = await client.register("alice", PASSWORD)
        login = await client.login("alice", PASSWORD)
        first = await client.submit(300, duration_ms=41_250, level=3)
        second = await client.submit(200)
        page = await client.leaderboard("global")
        me = await client.me()
        return created, login, first, second, page, me, client

    created, login, first, second, page, me, client = event_loop_runner(scenario())

    assert login["user"]["user_id"] == created["user_id"] == client.user["user_id"]
    assert client.session_key == login["session_key"]
    assert first["accepted"] is True and first["duplicate"] is False
    assert first["score"] == 300 and first["rank"] == 1
    assert second["score"] == 500
    assert page["entries"] == [{"rank": 1, "user_id": created["user_id"], "username": "alice", "score": 500}]
    assert me["boards"]["global"]["score"] == 500


def test_around_standing_and_listing(server, event_loop_runner):
    async def scenario():
        alice, bob = await logged_in(server, "alice"), await logged_in(server, "bob")
        await alice.submit(100)
        await bob.submit(900)
        reader = ScoreboardClient(server.url)  # anonymous: public reads
        return (alice.user["user_id"], await reader.leaderboards(),
                await reader.around("global", alice.user["user_id"], radius=1),
                await reader.standing("global", alice.user["user_id"]),
                await reader.leaderboard("global", offset=1, limit=1))

    alice_id, listing, around, standing, page = event_loop_runner(scenario())

    assert "global" in [board["name"] for board in listing["boards"]]
    assert [entry["username"] for entry in around["entries"]] == ["bob", "alice"]
    assert standing["rank"] == 2 and standing["score"] == 100 and standing["total"] == 2
    assert page["entries"][0]["user_id"] == alice_id


def test_points_over_the_rule_maximum_raise_score_rejected_with_its_reason(server, event_loop_runner):
    async def scenario():
        client = await logged_in(server, "alice")
        with pytest.raises(ClientError) as caught:
            await client.submit(server.config.action("level_complete").max_points + 1)
        return caught.value

    error = event_loop_runner(scenario())

    assert (error.status, error.code, error.reason) == (422, "score_rejected", "points_over_max")
    assert error.message and error.request_id


def test_unknown_board_raises_invalid_request(server, event_loop_runner):
    async def scenario():
        client = await logged_in(server, "alice")
        with pytest.raises(ClientError) as caught:
            await client.submit(10, board="nope")
        return caught.value

    error = event_loop_runner(scenario())

    assert (error.status, error.code) == (400, "invalid_request")


def test_a_wrong_password_raises_unauthorized(server, event_loop_runner):
    async def scenario():
        client = ScoreboardClient(server.url)
        await client.register("alice", PASSWORD)
        with pytest.raises(ClientError) as caught:
            await client.login("alice", "wrong password!")
        return caught.value, client

    error, client = event_loop_runner(scenario())

    assert (error.status, error.code) == (401, "unauthorized")
    assert not client.logged_in


def test_resending_the_same_bytes_is_answered_as_a_duplicate(server, event_loop_runner):
    async def scenario():
        client = await logged_in(server, "alice")
        raw, signature = client.build_submission(40)
        return await client.send_signed(raw, signature), await client.send_signed(raw, signature)

    first, again = event_loop_runner(scenario())

    assert first["duplicate"] is False and again["duplicate"] is True
    assert again["score"] == first["score"] == 40


def test_refresh_keeps_the_session_and_seq_goes_on(server, event_loop_runner):
    async def scenario():
        client = await logged_in(server, "alice")
        await client.submit(10)
        old_token, key = client.access_token, client.session_key
        await client.refresh()
        result = await client.submit(10)
        return old_token, key, client, result

    old_token, key, client, result = event_loop_runner(scenario())

    assert client.access_token != old_token and client.session_key == key
    assert client.seq == 2 and result["score"] == 20


def test_logout_forgets_the_session_and_revokes_the_token(server, event_loop_runner):
    async def scenario():
        client = await logged_in(server, "alice")
        token = client.access_token
        await client.logout()
        stale = ScoreboardClient(server.url)
        stale.access_token = token
        with pytest.raises(ClientError) as caught:
            await stale.me()
        return client, caught.value

    client, error = event_loop_runner(scenario())

    assert not client.logged_in and client.session_key is None
    assert error.code == "unauthorized"


def test_rate_limited_submissions_carry_retry_after(server_factory, event_loop_runner):
    server = server_factory({"ratelimit": {"per_user": "2/m"}})

    async def scenario():
        client = await logged_in(server, "alice")
        await client.submit(1)
        await client.submit(1)
        with pytest.raises(ClientError) as caught:
            await client.submit(1)
        return caught.value

    error = event_loop_runner(scenario())

    assert (error.status, error.code) == (429, "rate_limited")
    assert error.retry_after >= 1


def test_an_unreachable_server_raises_network_error(event_loop_runner):
    from harness import free_port

    async def scenario():
        with pytest.raises(NetworkError) as caught:
            await ScoreboardClient(f"http://127.0.0.1:{free_port()}", request_timeout=5).leaderboards()
        return caught.value

    error = event_loop_runner(scenario())

    assert error.status == 0 and error.code == "network"


# ---- Live (WebSocket) -----------------------------------------------------------------------------

FAST = {"backoff_start": 0.05, "backoff_cap": 0.2}


class Recorder:
    """Collects what a Live reports; every wait is bounded."""

    def __init__(self) -> None:
        self.events: asyncio.Queue = asyncio.Queue()
        self.snapshots: list[tuple[str, dict]] = []
        self.states: list[str] = []

    def on_event(self, channel, type_, data) -> None:
        self.events.put_nowait((channel, type_, data))

    def on_snapshot(self, channel, snapshot) -> None:
        self.snapshots.append((channel, snapshot))

    def on_state(self, state, info) -> None:
        self.states.append(state)

    def callbacks(self) -> dict:
        return {"on_event": self.on_event, "on_snapshot": self.on_snapshot, "on_state": self.on_state}

    async def next(self, type_: str, timeout: float = 5.0) -> tuple[str, str, dict]:
        while True:
            channel, kind, data = await asyncio.wait_for(self.events.get(), timeout)
            if kind == type_:
                return channel, kind, data


async def wait_until(predicate, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while not predicate():
            await asyncio.sleep(0.02)


def test_live_spectator_gets_a_snapshot_then_top_events(server, event_loop_runner):
    async def scenario():
        player = await logged_in(server, "alice")
        await player.submit(70)
        seen = Recorder()
        live = Live(server.url, **seen.callbacks())
        await live.connect(timeout=5)
        subscribed = await live.subscribe("leaderboard:global", timeout=5)
        await player.submit(30)
        top = await seen.next("top")
        await live.close()
        return player.user["user_id"], subscribed, seen, top, live

    user_id, subscribed, seen, top, live = event_loop_runner(asyncio.wait_for(scenario(), 30))

    assert subscribed["op"] == "subscribed" and subscribed["recovered"] is False
    assert seen.snapshots[0][0] == "leaderboard:global"
    assert seen.snapshots[0][1]["entries"][0]["user_id"] == user_id
    channel, _, data = top
    assert channel == "leaderboard:global"
    assert data["entries"][0] == {"rank": 1, "user_id": user_id, "username": "alice", "score": 100}
    assert live.positions["leaderboard:global"][1] > subscribed["offset"]
    assert seen.states[0] == "connecting" and "live" in seen.states and seen.states[-1] == "closed"


def test_live_as_a_player_gets_own_score_events_and_per_type_callbacks(server, event_loop_runner):
    async def scenario():
        player = await logged_in(server, "alice")
        seen = Recorder()
        live = player.live(**seen.callbacks())
        scores: asyncio.Queue = asyncio.Queue()
        live.on(f"user:{player.user['user_id']}", "score", lambda c, t, d: scores.put_nowait(d))
        await live.connect(timeout=5)
        await live.subscribe(f"user:{player.user['user_id']}", timeout=5)
        result = await player.submit(120)
        data = await asyncio.wait_for(scores.get(), 5)
        rtt = await live.ping()
        await live.close()
        return result, data, rtt

    result, data, rtt = event_loop_runner(asyncio.wait_for(scenario(), 30))

    assert data["score"] == result["score"] == 120 and data["rank"] == result["rank"] == 1
    assert 0 <= rtt < 5


def test_live_can_authenticate_with_the_first_message(server, event_loop_runner):
    async def scenario():
        player = await logged_in(server, "alice")
        live = Live(server.url, token=player.access_token, auth="message")
        await live.connect(timeout=5)
        subscribed = await live.subscribe(f"user:{player.user['user_id']}", timeout=5)
        await live.close()
        return player.user["user_id"], live.identity, subscribed

    user_id, identity, subscribed = event_loop_runner(asyncio.wait_for(scenario(), 30))

    assert identity == {"user_id": user_id, "role": "player"}
    assert subscribed["channel"] == f"user:{user_id}"


def test_live_subscribing_to_someone_elses_channel_raises_forbidden(server, event_loop_runner):
    async def scenario():
        live = Live(server.url)
        await live.connect(timeout=5)
        with pytest.raises(ClientError) as caught:
            await live.subscribe("user:1", timeout=5)
        await live.close()
        return caught.value, live

    error, live = event_loop_runner(asyncio.wait_for(scenario(), 30))

    assert (error.status, error.code) == (403, "forbidden")
    assert "user:1" not in live.channels


def test_live_with_a_bad_token_stops_with_unauthorized(server, event_loop_runner):
    async def scenario():
        live = Live(server.url, token="not-a-jwt", **FAST)
        with pytest.raises(ClientError) as caught:
            await live.connect(timeout=10)
        return caught.value, live

    error, live = event_loop_runner(asyncio.wait_for(scenario(), 30))

    assert (error.status, error.code) == (401, "unauthorized")
    assert live.state == "closed"


def test_live_reconnects_and_resumes_from_the_last_offset(server, event_loop_runner):
    """The connection is cut (a TCP proxy drops it and refuses new ones), an event happens meanwhile;
    after the restore the client resubscribes with `since` and gets the missed event, without a snapshot."""
    from netproxy import Proxy

    proxy = Proxy("127.0.0.1", server.port)

    async def scenario():
        player = await logged_in(server, "alice")
        seen = Recorder()
        live = Live(f"http://127.0.0.1:{proxy.port}", **seen.callbacks(), **FAST)
        await live.connect(timeout=5)
        await live.subscribe("leaderboard:global", timeout=5)
        await player.submit(10)
        await seen.next("top")
        before = live.positions["leaderboard:global"]
        proxy.cut()
        await wait_until(lambda: live.state == "reconnecting")
        await player.submit(20)  # published while the client is away
        await asyncio.sleep(0.3)  # a few refused attempts
        proxy.restore()
        _, _, missed = await seen.next("top", timeout=10)
        await live.close()
        return before, missed, live, seen

    try:
        before, missed, live, seen = event_loop_runner(asyncio.wait_for(scenario(), 30))
    finally:
        proxy.close()

    assert missed["entries"][0]["score"] == 30
    assert live.connections == 2
    assert len(seen.snapshots) == 1  # only the first subscribe: the resubscribe was recovered
    epoch, offset = live.positions["leaderboard:global"]
    assert epoch == before[0] and offset == before[1] + 1
    assert seen.states.count("reconnecting") >= 2  # the wait, and at least one refused attempt


def test_live_outlives_its_access_token_by_refreshing_and_resuming(server_factory, event_loop_runner):
    """The server closes the connection 4001 when its token expires (2 s here); the client refreshes
    the token, reconnects and resumes its channel from the last offset, without a snapshot."""
    server = server_factory({"auth": {"access_ttl_s": 2, "leeway_s": 0}})

    async def scenario():
        player = await logged_in(server, "alice")
        channel = f"user:{player.user['user_id']}"
        seen = Recorder()
        live = player.live(**seen.callbacks(), **FAST)
        await live.connect(timeout=5)
        await live.subscribe(channel, timeout=5)
        await wait_until(lambda: live.connections == 2 and live.state == "live", timeout=10)
        result = await player.submit(15)
        _, _, data = await seen.next("score")
        await live.close()
        return result, data, live, seen

    result, data, live, seen = event_loop_runner(asyncio.wait_for(scenario(), 30))

    assert data["action_id"] == result["action_id"]
    assert "closed" not in seen.states[:-1]  # closed only by our own close() at the end
    assert len(seen.snapshots) == 1  # the resubscribe after the 4001 was recovered
