"""Two server processes on one PostgreSQL + Redis: events cross processes, top-N conflates once per board."""

from __future__ import annotations

import pytest
from wsclient import Ws, run, submit

from conftest import POSTGRES_URL, REDIS_URL
from harness import Http, Player, ServerProcess, cleanup, merge, raw_config

pytestmark = pytest.mark.parametrize("backend", ["services"], indirect=True)  # needs a store shared by processes

INTERVAL_MS = 600


@pytest.fixture
def two_processes(backend, tmp_path):
    raw = merge(raw_config("services", tmp_path, REDIS_URL, POSTGRES_URL), {"broadcast": {"interval_ms": INTERVAL_MS}})
    started = []
    try:
        started.append(ServerProcess(raw, tmp_path))  # A first: it applies the migrations
        started.append(ServerProcess(raw, tmp_path))
        yield started
    finally:
        for process in started:
            process.stop()
        cleanup(raw)


def test_events_of_a_submission_on_one_process_reach_subscribers_on_the_other(two_processes):
    a, b = two_processes
    alice_on_a = Player(Http(a.url), "alice")
    alice_on_b = Player(Http(b.url), "alice", login=alice_on_a.login)
    bob_on_a, carol_on_b = Player(Http(a.url), "bob"), Player(Http(b.url), "carol")

    async def body():
        ws = await Ws.authed(a, alice_on_a)
        board = await ws.subscribe("leaderboard:global")
        mine = await ws.subscribe(f"user:{alice_on_a.user_id}")
        result = await submit(alice_on_b, 40)
        score = await ws.event("score", timeout=1)
        assert score["channel"] == mine["channel"] and score["offset"] == mine["offset"] + 1
        assert score["data"]["action_id"] == result["action_id"]
        top = await ws.event("top", timeout=1 + INTERVAL_MS / 1000)
        assert top["offset"] == board["offset"] + 1
        assert top["data"]["entries"] == [{"rank": 1, "user_id": alice_on_a.user_id, "username": "alice",
                                           "score": 40}]
        # A burst spread over both processes within one interval: one tick, one top event.
        for player, points in ((bob_on_a, 10), (alice_on_b, 5), (bob_on_a, 50), (alice_on_b, 1)):
            await submit(player, points)
        events = [await ws.event(timeout=1 + INTERVAL_MS / 1000) for _ in range(3)]
        assert [e["type"] for e in events] == ["score", "score", "top"]  # alice's two, then the tick
        assert events[2]["offset"] == top["offset"] + 1
        assert [(e["username"], e["score"]) for e in events[2]["data"]["entries"]] == [("bob", 60), ("alice", 46)]
        # carol passes alice, whose score stays: a rank event from B's tick, before its top event.
        await submit(carol_on_b, 100)
        rank, last = [await ws.event(timeout=1 + INTERVAL_MS / 1000) for _ in range(2)]
        assert rank["type"] == "rank" and rank["data"] == {"board": "global", "period": "all", "rank": 3,
                                                           "previous_rank": 2}
        assert last["type"] == "top" and last["offset"] == events[2]["offset"] + 1
        ws.close()

    run(body())


def test_logout_on_one_process_closes_the_sessions_websocket_on_the_other(two_processes):
    a, b = two_processes
    dave_on_a = Player(Http(a.url), "dave")
    dave_on_b = Player(Http(b.url), "dave", login=dave_on_a.login)

    async def body():
        ws = await Ws.open(a, dave_on_a.login["access_token"])
        await ws.subscribe(f"user:{dave_on_a.user_id}")
        assert dave_on_b.http.post("/auth/logout").status == 204
        assert await ws.close_code() == 4001

    run(body())


def test_a_submission_on_one_process_drops_the_cached_page_on_the_other(tmp_path, backend):
    raw = merge(raw_config("services", tmp_path, REDIS_URL, POSTGRES_URL),
                {"broadcast": {"interval_ms": 50}, "cache": {"page_ttl_ms": 600_000}})  # only invalidation helps
    a = b = None
    try:
        a = ServerProcess(raw, tmp_path)
        b = ServerProcess(raw, tmp_path)
        alice = Player(Http(b.url), "alice")
        assert Http(a.url).get("/leaderboards/global").json["entries"] == []  # A caches the empty page

        async def body():
            ws = await Ws.open(a)
            await ws.subscribe("leaderboard:global")
            await submit(alice, 30)
            # B sends its board notice a loop turn after the acknowledgement and the top tick 50 ms after,
            # on its one Redis connection: A has dropped its page by the time the top event arrives.
            await ws.event("top")

        run(body())
        entries = Http(a.url).get("/leaderboards/global").json["entries"]
        assert [(e["username"], e["score"]) for e in entries] == [("alice", 30)]
    finally:
        for process in (a, b):
            if process is not None:
                process.stop()
        cleanup(raw)
