"""One contract for every Bus: LocalBus always, RedisBus whenever Redis is reachable (required in CI).

Tests drive the loop through `event_loop_runner` and wait for deliveries with asyncio.wait_for, never
with sleeps. A "restart" is a new LocalBus, or the channel's keys deleted under the RedisBus.
"""

from __future__ import annotations

import asyncio
import contextlib

import pytest
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from scoreboard.bus import Bus, Event
from scoreboard.bus.local import LocalBus
from scoreboard.bus.redis import RedisBus
from scoreboard.errors import Unavailable

from conftest import REDIS_URL, require_redis

TIMEOUT_S = 5.0


class Collector:
    """A listener that records what it gets and lets a test wait for the n-th event."""

    def __init__(self) -> None:
        self.events: list[Event] = []
        self._changed = asyncio.Event()

    def __call__(self, event: Event) -> None:
        self.events.append(event)
        self._changed.set()

    async def until(self, count: int, timeout: float = TIMEOUT_S) -> list[Event]:
        async def wait() -> None:
            while len(self.events) < count:
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(wait(), timeout)
        return self.events

    @property
    def offsets(self) -> list[int]:
        return [event.offset for event in self.events]


class Buses:
    """Makes buses of one kind inside the test's loop; `close` removes every trace afterwards."""

    def __init__(self, kind: str, prefix: str) -> None:
        self.kind, self.prefix = kind, prefix
        self.buses: list[Bus] = []
        self.clients: list[aioredis.Redis] = []

    async def make(self, history_size: int = 1000) -> Bus:
        if self.kind == "local":
            bus: Bus = LocalBus(history_size)
        else:
            client = aioredis.from_url(REDIS_URL, client_name=f"{self.prefix}bus")
            self.clients.append(client)
            bus = RedisBus(client, self.prefix, history_size)
        self.buses.append(bus)
        return bus

    async def restart(self, bus: Bus) -> Bus:
        """The bus loses its history: what a process restart (local) or a flushed Redis does."""
        if self.kind == "local":
            return await self.make(bus._history_size)
        await self.wipe()
        return bus

    async def wipe(self) -> None:
        if self.clients:
            keys = [key async for key in self.clients[0].scan_iter(match=f"{self.prefix}*", count=500)]
            if keys:
                await self.clients[0].delete(*keys)

    async def close(self) -> None:
        for bus in self.buses:
            await bus.close()
        await self.wipe()
        for client in self.clients:
            await client.aclose()


def _buses(kind: str, prefix: str, run):
    buses = Buses(kind, prefix)
    yield buses
    run(buses.close())


@pytest.fixture(params=["local", "redis"])
def buses(request, redis_prefix, event_loop_runner):
    if request.param == "redis":
        require_redis()
    yield from _buses(request.param, redis_prefix, event_loop_runner)


@pytest.fixture
def redis_buses(redis_prefix, event_loop_runner):
    require_redis()
    yield from _buses("redis", redis_prefix, event_loop_runner)


# --- offsets and delivery


def test_offsets_start_at_one_and_rise_by_one_per_channel(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        events = [await bus.publish("a", b"x%d" % i) for i in range(5)]
        other = await bus.publish("b", b"y")
        assert [e.offset for e in events] == [1, 2, 3, 4, 5]
        assert len({e.epoch for e in events}) == 1  # epochs are per channel: no claim across channels
        assert (other.channel, other.offset) == ("b", 1)
        assert events[2] == Event("a", events[0].epoch, 3, b"x2")

    event_loop_runner(scenario())


def test_subscribers_get_every_event_in_order_with_the_same_bytes(buses, event_loop_runner):
    payloads = [b'\x00\xff\n{"n": %d}\n' % i for i in range(30)]

    async def scenario():
        bus = await buses.make()
        first, second = Collector(), Collector()
        await bus.subscribe("board", first)
        await bus.subscribe("board", second)
        await bus.subscribe("board", second)  # a second subscribe of the same listener is a no-op
        published = [await bus.publish("board", p) for p in payloads]
        await bus.publish("elsewhere", b"not for them")
        assert await first.until(30) == published
        assert await second.until(30) == published
        assert [e.payload for e in first.events] == payloads

    event_loop_runner(scenario())


def test_concurrent_publishes_get_distinct_gapless_offsets(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        seen = Collector()
        await bus.subscribe("c", seen)
        events = await asyncio.gather(*(bus.publish("c", b"%d" % i) for i in range(40)))
        assert sorted(e.offset for e in events) == list(range(1, 41))
        await seen.until(40)
        assert seen.offsets == list(range(1, 41))

    event_loop_runner(scenario())


def test_publish_many_publishes_each_message_as_publish_would(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        on_a, on_b = Collector(), Collector()
        await bus.subscribe("a", on_a)
        await bus.subscribe("b", on_b)
        first = await bus.publish("a", b"a1")
        events = await bus.publish_many([("a", b"a2"), ("b", b"b1"), ("a", b"a3")])
        assert [(e.channel, e.offset, e.payload) for e in events] == [("a", 2, b"a2"), ("b", 1, b"b1"),
                                                                       ("a", 3, b"a3")]
        assert events[0].epoch == events[2].epoch == first.epoch
        assert await on_a.until(3) == [first, events[0], events[2]]
        assert await on_b.until(1) == [events[1]]
        assert await bus.history("a", first.epoch, 1) == [events[0], events[2]]
        assert await bus.history("b", events[1].epoch, 0) == [events[1]]

    event_loop_runner(scenario())


def test_publish_many_of_nothing_returns_no_events(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        assert await bus.publish_many([]) == []

    event_loop_runner(scenario())


def test_slow_coroutine_listener_does_not_block_publish_and_keeps_order(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        gate, seen = asyncio.Event(), Collector()

        async def slow(event: Event) -> None:
            await gate.wait()
            seen(event)

        fast = Collector()
        await bus.subscribe("s", slow)
        await bus.subscribe("s", fast)
        for i in range(5):
            await asyncio.wait_for(bus.publish("s", b"%d" % i), TIMEOUT_S)
        await fast.until(5)  # the stuck listener holds up neither publish nor the other listeners
        assert seen.events == []
        gate.set()
        await seen.until(5)
        assert seen.offsets == [1, 2, 3, 4, 5]

    event_loop_runner(scenario())


def test_a_failing_listener_does_not_stop_delivery(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        seen = Collector()

        def broken(event: Event) -> None:
            raise RuntimeError("listener bug")

        await bus.subscribe("f", broken)
        await bus.subscribe("f", seen)
        await bus.publish("f", b"1")
        await bus.publish("f", b"2")
        await seen.until(2)

    event_loop_runner(scenario())


def test_unsubscribe_stops_delivery(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        leaving, staying = Collector(), Collector()
        await bus.subscribe("u", leaving)
        await bus.subscribe("u", staying)
        await bus.publish("u", b"1")
        await leaving.until(1)
        await bus.unsubscribe("u", leaving)
        await bus.unsubscribe("u", leaving)  # unsubscribing twice is harmless
        await bus.publish("u", b"2")
        # Both listeners share one delivery path in order, so once `staying` has 2, `leaving` would too.
        await staying.until(2)
        assert leaving.offsets == [1]

    event_loop_runner(scenario())


def test_resubscribing_after_the_last_listener_left_delivers_again(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        first, again = Collector(), Collector()
        await bus.subscribe("r", first)
        await bus.unsubscribe("r", first)
        await bus.subscribe("r", again)
        await bus.publish("r", b"1")
        assert (await again.until(1))[0].offset == 1

    event_loop_runner(scenario())


# --- position and history


def test_position(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        epoch, offset = await bus.position("p")
        assert offset == 0 and epoch
        assert await bus.history("p", epoch, 0) == []
        event = await bus.publish("p", b"1")
        await bus.publish("p", b"2")
        # The epoch reported before the first event is the one the events then carry.
        assert event.epoch == epoch
        assert await bus.position("p") == (epoch, 2)

    event_loop_runner(scenario())


def test_history_returns_exactly_the_missed_events(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        published = [await bus.publish("h", b"e%d" % i) for i in range(6)]
        epoch = published[0].epoch
        assert await bus.history("h", epoch, 2) == published[2:]
        assert await bus.history("h", epoch, 0) == published
        assert await bus.history("h", epoch, 6) == []

    event_loop_runner(scenario())


def test_history_refuses_what_it_cannot_replay(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        epoch = (await bus.publish("h", b"1")).epoch
        assert await bus.history("h", "some-other-epoch", 0) is None
        assert await bus.history("h", epoch, 2) is None  # a client ahead of the channel
        assert await bus.history("h", epoch, -1) is None
        assert await bus.history("never-published", "some-other-epoch", 0) is None

    event_loop_runner(scenario())


def test_history_beyond_what_is_kept_is_none(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make(history_size=3)
        published = [await bus.publish("k", b"%d" % i) for i in range(5)]
        epoch = published[0].epoch
        assert await bus.history("k", epoch, 2) == published[2:]  # exactly the 3 kept events
        assert await bus.history("k", epoch, 1) is None
        assert await bus.history("k", epoch, 0) is None
        assert await bus.history("k", epoch, 5) == []

    event_loop_runner(scenario())


def test_restart_means_a_new_epoch_and_old_positions_are_not_replayed(buses, event_loop_runner):
    async def scenario():
        bus = await buses.make()
        old = [await bus.publish("x", b"%d" % i) for i in range(3)]
        bus = await buses.restart(bus)
        seen = Collector()
        await bus.subscribe("x", seen)
        fresh = await bus.publish("x", b"after")
        assert fresh.epoch != old[0].epoch and fresh.offset == 1
        assert await bus.history("x", old[0].epoch, 1) is None
        assert await bus.history("x", fresh.epoch, 0) == [fresh]
        assert await seen.until(1) == [fresh]

    event_loop_runner(scenario())


# --- several processes sharing Redis


def test_another_process_publishes_and_serves_history(redis_buses, event_loop_runner):
    async def scenario():
        a, b = await redis_buses.make(), await redis_buses.make()
        seen = Collector()
        await a.subscribe("shared", seen)
        published = [await b.publish("shared", b"%d" % i) for i in range(3)]
        published += await asyncio.gather(*(bus.publish("shared", b"mixed") for bus in (a, b)))
        await seen.until(5)
        assert seen.offsets == [1, 2, 3, 4, 5]
        assert seen.events[:3] == published[:3]
        assert await a.position("shared") == (published[0].epoch, 5)
        assert await a.history("shared", published[0].epoch, 1) == seen.events[1:]

    event_loop_runner(scenario())


def test_keys_lost_under_running_processes_start_a_new_epoch(redis_buses, event_loop_runner):
    async def scenario():
        a, b = await redis_buses.make(), await redis_buses.make()
        seen = Collector()
        await a.subscribe("lost", seen)
        old = await b.publish("lost", b"before")
        await redis_buses.wipe()
        new = await b.publish("lost", b"after")
        assert new.epoch != old.epoch and new.offset == 1
        assert await a.history("lost", old.epoch, 0) is None
        assert await a.position("lost") == (new.epoch, 1)
        assert await seen.until(2) == [old, new]

    event_loop_runner(scenario())


def test_reader_reconnects_after_the_pubsub_connection_is_killed(redis_buses, event_loop_runner):
    async def scenario():
        bus = await redis_buses.make()
        seen = Collector()
        await bus.subscribe("k", seen)
        await bus.publish("k", b"1")
        await seen.until(1)
        await _kill_pubsub_connections(redis_buses.clients[0], redis_buses.prefix)

        # Events published before the resubscribe lands are lost by design: publish until one arrives.
        async def until_delivered() -> None:
            while len(seen.events) < 2:
                await bus.publish("k", b"again")
                with contextlib.suppress(TimeoutError):
                    await seen.until(2, timeout=0.2)

        await asyncio.wait_for(until_delivered(), TIMEOUT_S * 2)
        assert seen.events[1].offset > 1

    event_loop_runner(scenario())


async def _kill_pubsub_connections(client: aioredis.Redis, prefix: str) -> None:
    killed = 0
    for entry in await client.client_list(_type="pubsub"):
        if entry.get("name") == f"{prefix}bus":
            killed += await client.client_kill_filter(_id=entry["id"])
    assert killed == 1


def test_redis_errors_become_unavailable(redis_buses, event_loop_runner):
    async def scenario():
        # Nothing listens on 127.0.0.1:1, and without retries the failure is immediate.
        client = aioredis.Redis(host="127.0.0.1", port=1, retry=Retry(NoBackoff(), 0))
        bus = RedisBus(client, redis_buses.prefix)
        with pytest.raises(Unavailable):
            await bus.publish("c", b"1")
        with pytest.raises(Unavailable):
            await bus.position("c")
        with pytest.raises(Unavailable):
            await bus.history("c", "e", 0)
        with pytest.raises(Unavailable):
            await bus.subscribe("c", Collector())
        await bus.close()
        await client.aclose()

    event_loop_runner(scenario())


def test_redis_bus_needs_binary_replies(redis_buses, event_loop_runner):
    async def scenario():
        client = aioredis.from_url(REDIS_URL, decode_responses=True)
        with pytest.raises(ValueError):
            RedisBus(client, redis_buses.prefix)
        await client.aclose()

    event_loop_runner(scenario())


def test_a_redis_channels_keys_expire_after_its_history_ttl(redis_buses, event_loop_runner):
    async def scenario():
        client = aioredis.from_url(REDIS_URL)
        redis_buses.clients.append(client)
        bus = RedisBus(client, redis_buses.prefix, history_size=10, history_ttl_ms=60_000)
        redis_buses.buses.append(bus)
        await bus.publish("quiet", b"1")
        await bus.position("never-published")
        meta, stream = bus._keys("quiet")
        untouched_meta, untouched_stream = bus._keys("never-published")
        for key in (meta, stream, untouched_meta):
            assert 0 < await client.pttl(key) <= 60_000, key
        assert not await client.exists(untouched_stream)  # nothing published: no stream to expire

    event_loop_runner(scenario())


def test_a_redis_channel_without_ttl_keeps_its_keys(redis_buses, event_loop_runner):
    async def scenario():
        bus = await redis_buses.make()
        await bus.publish("kept", b"1")
        for key in bus._keys("kept"):
            assert await redis_buses.clients[0].pttl(key) == -1, key

    event_loop_runner(scenario())


# ---- the memory bus forgets silent channels, as Redis expires them --------------------------------


class _Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_a_silent_local_channel_without_listeners_is_forgotten_after_its_ttl(event_loop_runner):
    async def scenario():
        clock = _Monotonic()
        bus = LocalBus(history_size=10, history_ttl_ms=60_000, monotonic=clock)
        old = await bus.publish("user:1", b"1")
        clock.now += 61
        await bus.publish("user:2", b"1")  # any publish sweeps, at most every tenth of the ttl
        assert await bus.history("user:1", old.epoch, 0) is None
        epoch, offset = await bus.position("user:1")
        fresh = await bus.publish("user:1", b"2")
        return old, epoch, offset, fresh

    old, epoch, offset, fresh = event_loop_runner(scenario())

    assert epoch != old.epoch and offset == 0  # a new history, never the old offsets under its epoch
    assert (fresh.epoch, fresh.offset) == (epoch, 1)


def test_a_local_channel_with_a_listener_or_recent_events_is_kept(event_loop_runner):
    async def scenario():
        clock = _Monotonic()
        bus = LocalBus(history_size=10, history_ttl_ms=60_000, monotonic=clock)
        listened = await bus.publish("leaderboard:global", b"1")
        await bus.subscribe("leaderboard:global", lambda event: None)
        clock.now += 50
        recent = await bus.publish("user:1", b"1")
        clock.now += 20  # 70 s after the first, 20 s after the second
        await bus.publish("user:2", b"1")
        return (await bus.history("leaderboard:global", listened.epoch, 0),
                await bus.history("user:1", recent.epoch, 0), listened, recent)

    kept_listened, kept_recent, listened, recent = event_loop_runner(scenario())

    assert kept_listened == [listened] and kept_recent == [recent]


def test_a_local_channel_without_ttl_is_kept(event_loop_runner):
    async def scenario():
        clock = _Monotonic()
        bus = LocalBus(history_size=10, monotonic=clock)
        old = await bus.publish("user:1", b"1")
        clock.now += 10 ** 6
        await bus.publish("user:2", b"1")
        return old, await bus.history("user:1", old.epoch, 0)

    old, history = event_loop_runner(scenario())

    assert history == [old]


def test_epochs_are_twelve_hex_digits_and_never_repeat_in_a_process():
    from scoreboard.bus.local import new_epoch

    epochs = {new_epoch() for _ in range(10_000)}
    assert len(epochs) == 10_000
    assert all(len(epoch) == 12 and int(epoch, 16) >= 0 for epoch in epochs)

