"""Score events go out after the acknowledgement (the issue's order: rank, respond, publish).

The answer never waits on the bus; the events of the actions acknowledged while a publish is in flight
go out together in the next bus call; `Scores.flush()` (shutdown) returns only once every acknowledged
action's events are published. Each event still goes out exactly once.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from concurrent.futures import ThreadPoolExecutor

from scoreboard.errors import Unavailable
from scoreboard.scores import SCORES_CHANNEL

from harness import Http, Player, register_and_login

PLAYERS, EACH = 10, 5
SETTINGS = {
    "ratelimit": {"per_user": "1000/s", "per_address": "100000/s"},
    "auth": {"register_limit_per_address": "1000/m"},
    "actions": {"level_complete": {"max_points": 1000, "max_per_minute": 100_000}},
}


class HeldBus:
    """The app's bus, with the bus calls that carry score events counted and held until released (others,
    such as board change notices, pass)."""

    def __init__(self, server) -> None:
        self.server, self.real = server, server.app.bus.publish_many
        self.gate: asyncio.Event = server.call(_event())
        self.calls = 0
        server.app.bus.publish_many = self.publish_many

    async def publish_many(self, messages):
        if any(channel == SCORES_CHANNEL for channel, _ in messages):
            self.calls += 1
            await self.gate.wait()
        return await self.real(messages)

    def release(self) -> None:
        self.server.loop.call_soon_threadsafe(self.gate.set)


async def _event() -> asyncio.Event:
    return asyncio.Event()


def _collect(server, expected: int) -> tuple[list[dict], threading.Event]:
    seen: list[dict] = []
    done = threading.Event()

    def on_score(event) -> None:
        seen.append(json.loads(event.payload))
        if len(seen) >= expected:
            done.set()

    server.call(server.app.bus.subscribe(SCORES_CHANNEL, on_score))
    return seen, done


def test_the_answer_does_not_wait_for_the_score_event_to_be_published(server):
    bus = HeldBus(server)
    seen, delivered = _collect(server, 1)

    response = Player(Http(server.url), "alice").submit(10)
    answered_while_held = not delivered.is_set()  # the gate is shut: its event cannot have gone out
    bus.release()  # before any assertion: a held publish would hold the server's shutdown

    assert response.status == 200, response.raw
    assert answered_while_held
    assert delivered.wait(10)
    assert [(event["action_id"], event["score"]) for event in seen] == [(response.json["action_id"], 10)]


def test_flush_returns_only_once_every_acknowledged_event_is_published(server):
    bus = HeldBus(server)
    seen, delivered = _collect(server, 1)
    assert Player(Http(server.url), "bob").submit(7).status == 200
    server.call(server.app.scores.results.flush())  # its result recorded: only its event is left

    flushing = asyncio.run_coroutine_threadsafe(server.app.scores.flush(), server.loop)
    server.call(asyncio.sleep(0))  # a loop turn in which the flush could have returned
    returned_while_held = flushing.done()
    bus.release()

    assert not returned_while_held
    flushing.result(10)
    assert delivered.wait(10)
    assert [event["score"] for event in seen] == [7]


def test_events_acknowledged_together_go_out_together_each_exactly_once(server_factory):
    server = server_factory(SETTINGS)
    http = Http(server.url)
    with ThreadPoolExecutor(PLAYERS) as pool:
        logins = list(pool.map(lambda i: register_and_login(http, f"ev{i:02d}"), range(PLAYERS)))
    players = [Player(http, login["user"]["username"], login=login) for login in logins]
    bus = HeldBus(server)
    bus.release()
    seen, delivered = _collect(server, PLAYERS * EACH)

    def play(player: Player) -> list[str]:
        return [player.submit(points).json["action_id"] for points in range(1, EACH + 1)]

    with ThreadPoolExecutor(PLAYERS) as pool:
        acknowledged = [action for actions in pool.map(play, players) for action in actions]

    server.call(server.app.scores.flush())
    assert delivered.wait(10)
    assert sorted(event["action_id"] for event in seen) == sorted(acknowledged)
    assert bus.calls < len(acknowledged)  # grouped: fewer bus calls than events


def test_a_bus_that_is_down_costs_the_events_only_and_the_log_names_their_action(server, caplog):
    async def down(messages):
        raise Unavailable("event bus: down")

    server.app.bus.publish_many = down
    with caplog.at_level(logging.WARNING, logger="scoreboard.outbox"):
        response = Player(Http(server.url), "carol").submit(5)
        server.call(server.app.scores.flush())

    assert response.status == 200, response.raw
    lost = [record.getMessage() for record in caplog.records if record.name == "scoreboard.outbox"]
    # On services the board change notice goes over the same bus and is lost too, in its own line.
    assert [line for line in lost if line.startswith("events")] == [
        f"events of actions {response.json['action_id']} not sent: event bus: down"]
