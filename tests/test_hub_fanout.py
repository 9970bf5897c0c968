"""The hub's group senders: a peer class with `fanout` gets its live peers as one group, others `deliver`."""

from __future__ import annotations

import orjson

from scoreboard.bus import Event
from scoreboard.hub import _Channel
from scoreboard.metrics import Metrics

PAYLOAD = b'{"type":"top","data":{"n":1}}'


class Plain:
    def __init__(self) -> None:
        self.frames: list[bytes] = []

    def deliver(self, frame: bytes) -> bool:
        self.frames.append(frame)
        return True

    def close(self, code: int, reason: str) -> None:
        pass


class Grouped(Plain):
    built: list[list[Grouped]] = []

    @classmethod
    def fanout(cls, peers: list[Grouped]):
        cls.built.append(list(peers))

        def send(frame: bytes) -> int:
            for peer in peers:
                peer.frames.append(b"group:" + frame)
            return len(peers)
        return send


def live_channel(peers) -> tuple[_Channel, Metrics]:
    metrics = Metrics()
    channel = _Channel("leaderboard:global", metrics)
    channel.seen = ("e", 0)
    for peer in peers:
        channel.join(peer)
        channel.admit(peer, {"op": "subscribed", "epoch": "e", "offset": 0}, [])
        peer.frames.clear()  # the reply
    return channel, metrics


def test_each_class_gets_its_own_sender_and_every_peer_the_event_once():
    Grouped.built = []
    plain, grouped = [Plain(), Plain()], [Grouped(), Grouped(), Grouped()]
    channel, metrics = live_channel([*plain, *grouped])
    before = metrics.registry.get_sample_value("scoreboard_ws_frames_sent_total")
    channel.on_event(Event("leaderboard:global", "e", 1, PAYLOAD))
    message = plain[0].frames[0]
    assert orjson.loads(message) == {"op": "event", "channel": "leaderboard:global", "epoch": "e", "offset": 1,
                                     "type": "top", "data": {"n": 1}}
    assert all(peer.frames == [message] for peer in plain)
    assert all(peer.frames == [b"group:" + message] for peer in grouped)
    assert len(Grouped.built) == 1 and sorted(map(id, Grouped.built[0])) == sorted(map(id, grouped))
    assert metrics.registry.get_sample_value("scoreboard_ws_frames_sent_total") - before == 5


def test_senders_are_reused_until_the_live_peers_change():
    Grouped.built = []
    grouped = [Grouped(), Grouped()]
    channel, _ = live_channel(grouped)
    channel.on_event(Event("leaderboard:global", "e", 1, PAYLOAD))
    channel.on_event(Event("leaderboard:global", "e", 2, PAYLOAD))
    assert len(Grouped.built) == 1
    channel.discard(grouped[0])
    channel.on_event(Event("leaderboard:global", "e", 3, PAYLOAD))
    assert len(Grouped.built) == 2 and Grouped.built[1] == [grouped[1]]
    assert len(grouped[0].frames) == 2 and len(grouped[1].frames) == 3
