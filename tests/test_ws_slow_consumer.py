"""A client that stops reading is closed 4008 before it costs memory; the others keep receiving."""

from __future__ import annotations

import asyncio
import json

from wsclient import RawClient, Ws, run

MAX_BUFFER = 65_536
BLOB = "x" * 60_000  # one event is nearly the whole allowance


def test_a_client_that_stops_reading_is_closed_4008_while_others_keep_receiving(server_factory):
    server = server_factory({"websocket": {"max_buffer_bytes": MAX_BUFFER}})
    hub, metrics = server.app.hub, server.app.metrics.registry

    async def pending() -> list[int]:
        return [p.out._total_write_index - p.out._total_write_done_index for p in hub.peers("leaderboard:global")]

    async def body():
        slow = RawClient(server.port)
        slow.send({"op": "subscribe", "channel": "leaderboard:global"})
        assert json.loads(slow.frame()[1])["op"] == "subscribed"
        reader = await Ws.open(server)
        await reader.subscribe("leaderboard:global")
        published = 0
        while metrics.get_sample_value("scoreboard_ws_slow_consumers_closed_total") == 0:
            assert published < 500, "the slow client was never cut off"
            await asyncio.to_thread(server.call, hub.publish("leaderboard:global", "top", {"n": published,
                                                                                           "blob": BLOB}))
            published += 1
            assert (await reader.event("top"))["data"]["n"] == published - 1
            assert max(await asyncio.to_thread(server.call, pending())) <= MAX_BUFFER
        assert len(hub.peers("leaderboard:global")) == 1  # the reader only
        await asyncio.to_thread(server.call, hub.publish("leaderboard:global", "top", {"n": published}))
        assert (await reader.event("top"))["data"] == {"n": published}
        assert await asyncio.to_thread(slow.close_code) == 4008
        slow.sock.close()
        reader.close()

    run(body())
