"""scoreboard.redispipe: commands issued in one event-loop turn go to Redis as one pipeline, and each
caller still gets exactly its own reply or its own error. Against the real Redis (services only)."""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio
import redis.exceptions

from scoreboard.redispipe import AutoPipelineRedis

from conftest import require_redis


@pytest.fixture
def prefix() -> str:
    return f"sbtest:pipe:{uuid.uuid4().hex[:8]}:"


@pytest.fixture
def run(event_loop_runner, prefix):
    url = require_redis()
    yield lambda scenario: event_loop_runner(_with_client(url, prefix, scenario))


async def _with_client(url: str, prefix: str, scenario):
    name = f"pipe{uuid.uuid4().hex[:8]}"
    client = AutoPipelineRedis.from_url(url, client_name=name)
    try:
        return await asyncio.wait_for(scenario(client, name), 20)
    finally:
        keys = [key async for key in client.scan_iter(match=prefix + "*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def _connections_named(name: str) -> int:
    observer = redis.asyncio.Redis.from_url(require_redis())
    try:
        return sum(1 for client in await observer.client_list() if client.get("name") == name)
    finally:
        await observer.aclose()


def test_fifty_concurrent_commands_share_one_connection_and_each_gets_its_reply(run, prefix):
    async def scenario(client, name):
        replies = await asyncio.gather(*(client.incrby(f"{prefix}{i}", i) for i in range(50)))
        return replies, await _connections_named(name)

    replies, connections = run(scenario)

    assert replies == list(range(50))
    assert connections == 1  # one command at a time would have needed up to 50


def test_commands_issued_in_one_turn_apply_in_issue_order(run, prefix):
    async def scenario(client, _name):
        await asyncio.gather(*(client.rpush(f"{prefix}list", i) for i in range(20)))
        return await client.lrange(f"{prefix}list", 0, -1)

    assert run(scenario) == [str(i).encode() for i in range(20)]


def test_an_error_reaches_only_the_caller_whose_command_failed(run, prefix):
    async def scenario(client, _name):
        await client.hset(f"{prefix}hash", "field", "1")
        return await asyncio.gather(client.incr(f"{prefix}counter"), client.incr(f"{prefix}hash"),
                                    client.incr(f"{prefix}counter"), return_exceptions=True)

    first, failed, second = run(scenario)

    assert (first, second) == (1, 2)
    assert isinstance(failed, redis.exceptions.ResponseError) and "WRONGTYPE" in str(failed)


def test_a_script_unknown_to_the_server_is_loaded_again_inside_a_batch(run, prefix):
    async def scenario(client, _name):
        script = client.register_script("return redis.call('INCRBY', KEYS[1], ARGV[1])")
        await client.script_flush()
        return await asyncio.gather(*(script([f"{prefix}scripted"], [i]) for i in (1, 2, 3)),
                                    client.get(f"{prefix}missing"))

    *sums, missing = run(scenario)

    assert sorted(sums) == [1, 3, 6] and missing is None


def test_a_cancelled_caller_leaves_the_others_of_its_batch_alone(run, prefix):
    async def scenario(client, _name):
        doomed = asyncio.ensure_future(client.set(f"{prefix}doomed", "x"))
        kept = asyncio.ensure_future(client.incr(f"{prefix}kept"))
        await asyncio.sleep(0)  # both are queued for the same batch
        doomed.cancel()
        return await kept, doomed.cancelled()

    assert run(scenario) == (1, True)


def test_a_connection_error_reaches_every_caller_of_the_batch():
    async def scenario():
        client = AutoPipelineRedis.from_url("redis://127.0.0.1:1/0", socket_connect_timeout=1)
        try:
            return await asyncio.gather(client.get("a"), client.get("b"), return_exceptions=True)
        finally:
            await client.aclose()

    outcomes = asyncio.run(asyncio.wait_for(scenario(), 20))

    assert all(isinstance(outcome, redis.exceptions.ConnectionError) for outcome in outcomes), outcomes


def test_commands_packed_by_hiredis_reach_redis_exactly_as_redis_py_would_send_them(run, prefix):
    async def scenario(client, _name):
        await client.mset({f"{prefix}text": "héllo wörld", f"{prefix}bytes": b"\x00\xff:raw",
                           f"{prefix}int": 42, f"{prefix}float": 1.5})
        await client.set(f"{prefix}view", memoryview(b"viewed"))
        await client.set(f"{prefix}array", bytearray(b"arrayed"))
        values = await client.mget(*(f"{prefix}{name}" for name in ("text", "bytes", "int", "float", "view", "array")))
        return values, await client.config_get("maxmemory-policy")  # a command name of two words

    values, config = run(scenario)

    assert values == ["héllo wörld".encode(), b"\x00\xff:raw", b"42", b"1.5", b"viewed", b"arrayed"]
    assert set(config) == {"maxmemory-policy"}


def test_an_argument_redis_cannot_take_is_refused_before_anything_is_sent(run, prefix):
    async def scenario(client, _name):
        outcomes = await asyncio.gather(client.set(f"{prefix}flag", True), client.set(f"{prefix}none", None),
                                        return_exceptions=True)
        return outcomes, await client.exists(f"{prefix}flag", f"{prefix}none")

    outcomes, stored = run(scenario)

    assert all(isinstance(outcome, redis.exceptions.DataError) for outcome in outcomes), outcomes
    assert stored == 0


def test_a_batch_outliving_the_socket_timeout_fails_for_each_caller_and_the_client_goes_on(prefix):
    # A 300 ms Lua loop keeps Redis busy past the client's 100 ms deadline for the batch behind it.
    busy = "local t = redis.call('TIME') local start = t[1] * 1e6 + t[2] " \
           "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - start > 300000 return 1"

    async def scenario():
        blocker = redis.asyncio.Redis.from_url(require_redis())
        client = AutoPipelineRedis.from_url(require_redis(), socket_timeout=0.1)
        try:
            await client.ping()  # the pooled connection exists before Redis gets busy
            hold = asyncio.ensure_future(blocker.eval(busy, 0))
            await asyncio.sleep(0.05)  # no event says Redis has begun the script: 50 of its 300 ms as margin
            late = await asyncio.gather(client.incr(f"{prefix}late"), client.get(f"{prefix}late"),
                                        return_exceptions=True)
            await hold
            return late, await client.incr(f"{prefix}after")
        finally:
            await asyncio.gather(client.aclose(), blocker.aclose())

    late, after = asyncio.run(asyncio.wait_for(scenario(), 20))

    assert all(isinstance(outcome, redis.exceptions.TimeoutError) for outcome in late), late
    assert after == 1


def test_a_connection_redis_dropped_while_idle_is_replaced_before_the_next_batch(run, prefix):
    async def scenario(client, name):
        await client.incr(f"{prefix}n")
        observer = redis.asyncio.Redis.from_url(require_redis())
        try:
            ids = [c["id"] for c in await observer.client_list() if c.get("name") == name]
            for client_id in ids:
                await observer.client_kill_filter(_id=client_id)
        finally:
            await observer.aclose()
        return len(ids), await asyncio.gather(*(client.incr(f"{prefix}n") for _ in range(3)))

    killed, replies = run(scenario)

    assert killed == 1
    assert sorted(replies) == [2, 3, 4]


def test_a_batch_goes_out_on_the_same_connection_while_an_earlier_one_is_unanswered(run, prefix):
    # A 50 ms Lua loop keeps the first batch unanswered while the second is sent behind it.
    busy = "local t = redis.call('TIME') local start = t[1] * 1e6 + t[2] " \
           "repeat t = redis.call('TIME') until t[1] * 1e6 + t[2] - start > 50000 return 'slow'"

    async def scenario(client, name):
        script = client.register_script(busy)
        await script()  # loaded, and the connection is open
        slow = asyncio.ensure_future(script())
        await asyncio.sleep(0)  # the caller queues its command
        await asyncio.sleep(0)  # the batch is written
        quick = await client.incr(f"{prefix}quick")  # another loop turn: another batch
        return await slow, quick, await _connections_named(name)

    assert run(scenario) == (b"slow", 1, 1)  # a pool would have opened a second connection for it
