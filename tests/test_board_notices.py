"""Page-cache invalidation across processes: each process announces the board periods it changed, one
notice per event-loop turn, on the internal `_boards` channel; nobody listens to every score event."""

from __future__ import annotations

import asyncio

import orjson
import pytest
import redis

from scoreboard.boards import NOTICES_CHANNEL, Boards
from scoreboard.bus import Event
from scoreboard.bus.local import LocalBus
from scoreboard.scores import SCORES_CHANNEL

from conftest import REDIS_URL


def accepted(board: str, period: str = "all") -> dict:
    return {"board": board, "period": period}


def notices_of(server, *turns: list[dict]) -> list[list[str]]:
    """The notices a fresh Boards of `server` publishes when each turn's acceptances arrive together."""

    async def body() -> list[list[str]]:
        app, bus, heard = server.app, LocalBus(), []
        await bus.subscribe(NOTICES_CHANNEL, heard.append)
        boards = Boards(app.config, app.store, app.index, app.clock)
        await boards.share(bus)
        for events in turns:
            await asyncio.gather(*(boards.on_accepted(event) for event in events))
            await boards.close()
        return [orjson.loads(event.payload) for event in heard]

    return server.call(body())


def test_acceptances_of_one_loop_turn_go_out_as_one_notice_naming_each_board_period_once(server):
    turn = [accepted("global"), accepted("best"), accepted("global"), accepted("global", "2026-11-28")]
    assert notices_of(server, turn) == [["best:all", "global:2026-11-28", "global:all"]]


def test_a_change_after_a_notice_went_out_gets_a_notice_of_its_own(server):
    assert notices_of(server, [accepted("global")], [accepted("best")]) == [["global:all"], ["best:all"]]


def test_a_notice_drops_the_cached_pages_of_the_board_periods_it_names_only(server):
    boards = server.app.boards
    before = {key: boards.versions.get(key, 0) for key in ("global:all", "best:all")}

    async def deliver() -> None:  # on the server's loop, where the bus calls its listeners
        boards.on_notice(Event(NOTICES_CHANNEL, "epoch", 1, orjson.dumps(["global:all"])))

    server.call(deliver())
    assert boards.versions.get("global:all", 0) == before["global:all"] + 1
    assert boards.versions.get("best:all", 0) == before["best:all"]


@pytest.mark.parametrize("backend", ["services"], indirect=True)
def test_a_server_on_a_shared_bus_hears_board_notices_and_not_every_score_event(server):
    scores, notices = (f"{server.raw['redis']['prefix']}bus:{name}" for name in (SCORES_CHANNEL, NOTICES_CHANNEL))
    client = redis.Redis.from_url(REDIS_URL)
    try:
        counts = dict(client.pubsub_numsub(scores, notices))
    finally:
        client.close()
    assert counts == {scores.encode(): 0, notices.encode(): 1}
