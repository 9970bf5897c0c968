"""Conflated top-N and rank events (PROTOCOL "Realtime" channel table), on both backends.

"Exactly one" is shown without waiting for silence: offsets rise by one per channel event, so when the
next `top` after a burst has the burst's offset + 1, nothing was published in between.
"""

from __future__ import annotations

import asyncio
import time

from wsclient import Ws, run, submit

from scoreboard.hub import Hub, moved_ranks

from harness import Http, Player


def standings(*pairs: tuple[Player, int]) -> list[dict]:
    ranked = sorted(pairs, key=lambda pair: -pair[1])
    return [{"rank": n, "user_id": p.user_id, "username": p.login["user"]["username"], "score": score}
            for n, (p, score) in enumerate(ranked, 1)]


def test_a_burst_within_one_interval_becomes_one_top_event_with_the_final_state(server_factory):
    interval_ms = 800
    server = server_factory({"broadcast": {"interval_ms": interval_ms}})
    http = Http(server.url)
    players = [Player(http, f"player{n}") for n in range(4)]

    async def body():
        ws = await Ws.open(server)
        subscribed = await ws.subscribe("leaderboard:global")
        started = time.monotonic()
        for round_ in range(3):
            for n, player in enumerate(players):
                await submit(player, 10 * (n + 1) + round_)
        burst_ms = (time.monotonic() - started) * 1000
        assert burst_ms < interval_ms, f"the burst took {burst_ms:.0f} ms: longer than one interval"
        top = await ws.event("top")
        assert top["offset"] == subscribed["offset"] + 1
        totals = [sum(10 * (n + 1) + r for r in range(3)) for n in range(4)]
        assert top["data"]["entries"] == standings(*zip(players, totals, strict=True))
        await submit(players[0], 1)
        after = await ws.event("top")
        assert after["offset"] == top["offset"] + 1
        assert after["data"]["entries"][-1]["score"] == totals[0] + 1
        ws.close()

    run(body())


def test_an_unchanged_top_is_not_published_again(server_factory):
    server = server_factory({"broadcast": {"interval_ms": 1, "top_n": 1}})
    http = Http(server.url)
    alice, bob = Player(http, "alice"), Player(http, "bob")

    async def body():
        ws = await Ws.open(server)
        await ws.subscribe("leaderboard:global")
        await submit(alice, 100)
        first = await ws.event("top")
        await submit(bob, 10)
        await asyncio.to_thread(server.call, server.app.hub.refresh("global"))  # a tick: top 1 is unchanged
        await ws.nothing_queued()
        await submit(alice, 5)
        second = await ws.event("top")
        assert second["offset"] == first["offset"] + 1
        assert second["data"]["entries"] == standings((alice, 105))
        ws.close()

    run(body())


def test_an_overtaken_user_gets_a_rank_event_and_the_overtaker_only_its_score_event(server_factory):
    server = server_factory({"broadcast": {"interval_ms": 1}})
    http = Http(server.url)
    alice, bob = Player(http, "alice"), Player(http, "bob")

    async def body():
        board = await Ws.open(server)
        await board.subscribe("leaderboard:global")
        await submit(alice, 100)
        await board.event("top")
        await submit(bob, 50)
        await board.event("top")
        watch_alice, watch_bob = await Ws.authed(server, alice), await Ws.authed(server, bob)
        await watch_alice.subscribe(f"user:{alice.user_id}")
        await watch_bob.subscribe(f"user:{bob.user_id}")
        await watch_bob.subscribe("leaderboard:global")
        await submit(bob, 100)
        rank = await watch_alice.event("rank")
        assert rank["channel"] == f"user:{alice.user_id}"
        assert rank["data"] == {"board": "global", "period": "all", "rank": 2, "previous_rank": 1}
        score = await watch_bob.event("score")
        assert (score["data"]["rank"], score["data"]["previous_rank"]) == (1, 2)
        # A tick publishes rank events before its top event: none came for bob.
        assert (await watch_bob.event("top"))["data"]["entries"] == standings((bob, 150), (alice, 100))
        await watch_bob.nothing_queued()
        await watch_alice.nothing_queued()
        for ws in (board, watch_alice, watch_bob):
            ws.close()

    run(body())


def test_a_user_pushed_below_the_notify_depth_still_hears_of_it(server_factory):
    server = server_factory({"broadcast": {"interval_ms": 1, "rank_notify_depth": 2}})
    http = Http(server.url)
    alice, bob, carol = Player(http, "alice"), Player(http, "bob"), Player(http, "carol")

    async def body():
        board = await Ws.open(server)
        await board.subscribe("leaderboard:global")
        for player, points in ((alice, 100), (bob, 50)):
            await submit(player, points)
            await board.event("top")
        watch_bob = await Ws.authed(server, bob)
        await watch_bob.subscribe(f"user:{bob.user_id}")
        await submit(carol, 200)
        rank = await watch_bob.event("rank")
        assert rank["data"] == {"board": "global", "period": "all", "rank": 3, "previous_rank": 2}
        board.close()
        watch_bob.close()

    run(body())


def test_two_hubs_sharing_the_kv_run_one_tick_per_board(server_factory):
    """Two processes' hubs (one KV, one bus): the lease lets only the first start a tick."""
    server = server_factory({"broadcast": {"interval_ms": 300}})
    app, alice = server.app, Player(Http(server.url), "alice")

    async def body():
        ws = await Ws.open(server)
        subscribed = await ws.subscribe("leaderboard:global")
        result = await submit(alice, 10)
        other = Hub(app.config, app.bus, app.kv, app.index, app.boards, app.users, app.clock, app.metrics)
        event = {"user_id": alice.user_id, "board": "global", "period": "all", "score": 10, "rank": 1,
                 "previous_rank": None, "action_id": result["action_id"]}
        await asyncio.to_thread(server.call, other.on_accepted(event))
        assert other._tasks == set() and other._leased == set()
        lease = await asyncio.to_thread(server.call, app.kv.get("hub:lease:global", app.clock.now_ms()))
        assert lease == app.hub._token
        top = await ws.event("top")
        assert top["offset"] == subscribed["offset"] + 1
        # The first tick is over and its lease released: now the other hub can, and does, take it.
        await asyncio.to_thread(server.call, other.on_accepted(event))
        lease = await asyncio.to_thread(server.call, app.kv.get("hub:lease:global", app.clock.now_ms()))
        assert lease == other._token and other._leased == {"global"}
        await asyncio.to_thread(server.call, other.close())
        ws.close()

    run(body())


def test_moved_ranks_skips_users_whose_own_score_changed():
    previous = [[1, 1, 100], [2, 2, 90], [3, 3, 80], [4, 4, 70]]
    current = [[5, 1, 500], [1, 2, 100], [3, 3, 95], [2, 4, 90]]

    moved, dropped = moved_ranks(previous, current)

    assert moved == [(1, 2, 1), (2, 4, 2)]  # 3 moved itself (score changed); 5 is new
    assert dropped == [(4, 4, 70)]
