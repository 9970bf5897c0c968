"""Resubscribe with `since` (PROTOCOL "Realtime"): the missed events in order, or a snapshot; both backends."""

from __future__ import annotations

import asyncio

import orjson
from wsclient import Ws, events_out, run, submit

from scoreboard.hub import Hub

from harness import Http, Player


async def missed_while_away(server, player: Player, count: int) -> tuple[dict, list[dict]]:
    """Subscribe to the player's channel, disconnect, submit `count` times; returns (reply, results)."""
    ws = await Ws.authed(server, player)
    reply = await ws.subscribe(f"user:{player.user_id}")
    ws.close()
    results = [await submit(player, 10 * (n + 1)) for n in range(count)]
    await events_out(server)
    return reply, results


def test_reconnecting_with_since_gets_exactly_the_missed_events_in_order(server, client):
    alice = Player(client, "alice")

    async def body():
        before, results = await missed_while_away(server, alice, 5)
        ws = await Ws.authed(server, alice)
        since = {"epoch": before["epoch"], "offset": before["offset"]}
        reply = await ws.subscribe(f"user:{alice.user_id}", since)
        assert reply == {"op": "subscribed", "channel": f"user:{alice.user_id}", "epoch": before["epoch"],
                         "offset": before["offset"] + 5, "recovered": True, "snapshot": None}
        events = [await ws.event("score") for _ in range(5)]
        assert [e["offset"] for e in events] == [before["offset"] + n for n in range(1, 6)]
        assert [e["data"]["action_id"] for e in events] == [r["action_id"] for r in results]
        assert [e["data"]["score"] for e in events] == [10, 30, 60, 100, 150]
        await ws.nothing_queued()
        # Live events continue right after the replayed ones.
        await submit(alice, 1)
        assert (await ws.event("score"))["offset"] == before["offset"] + 6
        ws.close()

    run(body())


def test_since_at_the_current_offset_recovers_with_no_events(server, client):
    alice = Player(client, "alice")

    async def body():
        ws = await Ws.authed(server, alice)
        first = await ws.subscribe(f"user:{alice.user_id}")
        again = await ws.subscribe(f"user:{alice.user_id}", {"epoch": first["epoch"], "offset": first["offset"]})
        assert again["recovered"] is True and again["offset"] == first["offset"] and again["snapshot"] is None
        await ws.nothing_queued()
        ws.close()

    run(body())


def test_a_wrong_epoch_gets_a_snapshot(server, client):
    alice = Player(client, "alice")

    async def body():
        before, _ = await missed_while_away(server, alice, 2)
        ws = await Ws.authed(server, alice)
        reply = await ws.subscribe(f"user:{alice.user_id}", {"epoch": "not-" + before["epoch"], "offset": 1})
        assert reply["recovered"] is False
        assert reply["epoch"] == before["epoch"] and reply["offset"] == before["offset"] + 2
        assert reply["snapshot"] == {"boards": {"global": {"score": 30, "rank": 1}}}
        await ws.nothing_queued()
        ws.close()

    run(body())


def test_an_offset_older_than_the_history_gets_a_snapshot(server_factory):
    server = server_factory({"broadcast": {"history_size": 3}})
    alice = Player(Http(server.url), "alice")

    async def body():
        before, _ = await missed_while_away(server, alice, 5)
        ws = await Ws.authed(server, alice)
        reply = await ws.subscribe(f"user:{alice.user_id}", {"epoch": before["epoch"], "offset": before["offset"]})
        assert reply["recovered"] is False and reply["offset"] == before["offset"] + 5
        assert reply["snapshot"] == {"boards": {"global": {"score": 150, "rank": 1}}}
        await ws.nothing_queued()
        # Three back is still inside the history.
        inside = await ws.subscribe(f"user:{alice.user_id}", {"epoch": before["epoch"], "offset": before["offset"] + 2})
        assert inside["recovered"] is True
        assert [(await ws.event("score"))["data"]["score"] for _ in range(3)] == [60, 100, 150]
        ws.close()

    run(body())


def test_an_offset_ahead_of_the_channel_gets_a_snapshot(server, client):
    alice = Player(client, "alice")

    async def body():
        ws = await Ws.authed(server, alice)
        first = await ws.subscribe(f"user:{alice.user_id}")
        ahead = await ws.subscribe(f"user:{alice.user_id}", {"epoch": first["epoch"], "offset": first["offset"] + 9})
        assert ahead["recovered"] is False and ahead["offset"] == first["offset"]
        ws.close()

    run(body())


def test_leaderboard_top_events_are_replayed_too(server_factory):
    server = server_factory({"broadcast": {"interval_ms": 1}})
    alice, bob = Player(Http(server.url), "alice"), Player(Http(server.url), "bob")

    async def body():
        watcher, leaver = await Ws.open(server), await Ws.open(server)
        await watcher.subscribe("leaderboard:global")
        before = await leaver.subscribe("leaderboard:global")
        leaver.close()
        seen = []
        for player, points in ((alice, 10), (bob, 20), (alice, 30)):
            await submit(player, points)
            seen.append(await watcher.event("top"))
        back = await Ws.open(server)
        reply = await back.subscribe("leaderboard:global", {"epoch": before["epoch"], "offset": before["offset"]})
        assert reply["recovered"] is True and reply["offset"] == seen[-1]["offset"]
        assert [await back.event("top") for _ in seen] == seen
        await back.nothing_queued()
        watcher.close()
        back.close()

    run(body())


class FakePeer:
    def __init__(self) -> None:
        self.frames: list[dict] = []
        self.arrived = asyncio.Event()

    def deliver(self, frame: bytes) -> bool:
        self.frames.append(orjson.loads(frame))
        self.arrived.set()
        return True

    def close(self, code: int, reason: str) -> None:
        pass

    async def until_offset(self, offset: int) -> None:
        while not any(f.get("op") == "event" and f["offset"] >= offset for f in self.frames):
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)


class RacingBus:
    """The app's bus with a lagging pub/sub: events reach listeners 50 ms late (in order), and two more
    are published while the hub reads the history or the position."""

    def __init__(self, bus) -> None:
        self.bus = bus
        self.lagging: dict = {}

    def __getattr__(self, name: str):
        return getattr(self.bus, name)

    async def subscribe(self, channel: str, listener) -> None:
        await self.bus.subscribe(channel, self.lagging.setdefault(listener, self._lag(listener)))

    async def unsubscribe(self, channel: str, listener) -> None:
        await self.bus.unsubscribe(channel, self.lagging.pop(listener))

    @staticmethod
    def _lag(listener):
        queue: list = []

        def flush() -> None:
            events = queue[:]
            queue.clear()
            for event in events:
                listener(event)

        def lagging(event) -> None:
            if not queue:
                asyncio.get_running_loop().call_later(0.05, flush)
            queue.append(event)

        return lagging

    async def _race(self, channel: str) -> None:
        for n in range(2):
            await self.bus.publish(channel, orjson.dumps({"type": "flag", "data": {"live": n}}))

    async def history(self, channel: str, epoch: str, after: int):
        await self._race(channel)
        return await self.bus.history(channel, epoch, after)

    async def position(self, channel: str):
        await self._race(channel)
        return await self.bus.position(channel)


def test_events_published_during_catch_up_come_once_and_in_order(server):
    app = server.app

    async def body():
        hub = Hub(app.config, RacingBus(app.bus), app.kv, app.index, app.boards, app.users, app.clock, app.metrics)
        admin = type("Admin", (), {"is_admin": True, "user_id": 0})()
        for n in range(3):
            await hub.publish_alert("flag", {"before": n})
        recovering, fresh = FakePeer(), FakePeer()
        epoch, offset = await app.bus.position("admin:alerts")
        reply = await hub.subscribe(recovering, "admin:alerts", {"epoch": epoch, "offset": 1}, admin)
        assert reply["recovered"] is True and reply["offset"] == 5
        snapshot = await hub.subscribe(fresh, "admin:alerts", None, admin)
        assert snapshot["recovered"] is False and snapshot["offset"] == 7
        await hub.publish_alert("incident", {"after": True})
        await recovering.until_offset(8)
        await fresh.until_offset(8)
        assert [f["offset"] for f in recovering.frames[1:]] == [2, 3, 4, 5, 6, 7, 8]
        assert [f["offset"] for f in fresh.frames[1:]] == [8]
        await hub.close()

    server.call(body())
