"""The KV contract: the same tests against MemoryKV and RedisKV, each with an injected clock."""

from __future__ import annotations

import asyncio
import time

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from scoreboard import errors
from scoreboard.kv import LimitSpec, NonceUsed, NotGreater, RateDecision, Refused, Reserved, SeqUnknown
from scoreboard.kv.memory import MemoryKV
from scoreboard.kv.redis import RedisKV

from conftest import require_redis

NOW = 1_795_000_000_000


async def _gather(*aws, return_exceptions: bool = False):
    return await asyncio.gather(*aws, return_exceptions=return_exceptions)


async def _delete_prefixed(client: redis.asyncio.Redis, prefix: str) -> None:
    keys = [key async for key in client.scan_iter(match=prefix + "*", count=500)]
    if keys:
        await client.delete(*keys)


@pytest.fixture
def run(event_loop_runner):
    return event_loop_runner


@pytest.fixture(params=["memory", "redis"])
def kv(request, run, redis_prefix):
    if request.param == "memory":
        store = MemoryKV()
        yield store
        run(store.close())
        return
    client = redis.asyncio.Redis.from_url(require_redis())
    store = RedisKV(client, redis_prefix)
    yield store
    run(_delete_prefixed(client, redis_prefix))
    run(store.close())


# get / set / expiry


def test_get_missing_is_none(kv, run):
    assert run(kv.get("nope", NOW)) is None


def test_set_then_get_returns_bytes(kv, run):
    run(kv.set("k", b"v:1", NOW, ttl_ms=1000))
    assert run(kv.get("k", NOW)) == b"v:1"


def test_set_expires_by_callers_clock(kv, run):
    run(kv.set("k", b"v", NOW, ttl_ms=1000))
    assert run(kv.get("k", NOW + 999)) == b"v"
    assert run(kv.get("k", NOW + 1000)) is None


def test_set_without_ttl_never_expires(kv, run):
    run(kv.set("k", b"v", NOW))
    assert run(kv.get("k", NOW + 10**12)) == b"v"


def test_set_overwrites_value_and_ttl(kv, run):
    run(kv.set("k", b"old", NOW, ttl_ms=100))
    run(kv.set("k", b"new", NOW, ttl_ms=5000))
    assert run(kv.get("k", NOW + 1000)) == b"new"


def test_non_positive_ttl_is_refused(kv, run):
    with pytest.raises(ValueError):
        run(kv.set("k", b"v", NOW, ttl_ms=0))


def test_set_nx_first_wins(kv, run):
    assert run(kv.set_nx("n", b"a", NOW, 1000)) is True
    assert run(kv.set_nx("n", b"b", NOW + 1, 1000)) is False
    assert run(kv.get("n", NOW + 2)) == b"a"


def test_set_nx_wins_again_after_expiry(kv, run):
    run(kv.set_nx("n", b"a", NOW, 1000))
    assert run(kv.set_nx("n", b"b", NOW + 1000, 1000)) is True
    assert run(kv.get("n", NOW + 1001)) == b"b"


def test_set_nx_concurrent_exactly_one_wins(kv, run):
    results = run(_gather(*(kv.set_nx("n", b"%d" % i, NOW, 1000) for i in range(20))))
    assert results.count(True) == 1


def test_delete(kv, run):
    run(kv.set("k", b"v", NOW, ttl_ms=1000))
    run(kv.delete("k"))
    assert run(kv.get("k", NOW)) is None


def test_delete_missing_is_a_no_op(kv, run):
    run(kv.delete("never-there"))


# rate_limit (GCRA): 5 per second, burst 5 -> one slot every 200 ms


def _hit(kv, run, now_ms: int, key: str = "rl", cost: int = 1) -> RateDecision:
    return run(kv.rate_limit(key, 5, 1000, 5, now_ms, cost))


def test_rate_limit_allows_exactly_burst(kv, run):
    decisions = [_hit(kv, run, NOW) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True] * 5
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0]
    assert all(d.limit == 5 and d.retry_after_ms == 0 for d in decisions)


def test_rate_limit_refuses_with_retry_after_one_interval(kv, run):
    for _ in range(5):
        _hit(kv, run, NOW)
    refused = _hit(kv, run, NOW + 50)
    assert refused == RateDecision(False, 5, 0, retry_after_ms=150, reset_after_ms=950)


def test_rate_limit_refusal_does_not_consume(kv, run):
    for _ in range(5):
        _hit(kv, run, NOW)
    for _ in range(10):
        _hit(kv, run, NOW)
    assert _hit(kv, run, NOW + 200).allowed


def test_rate_limit_refills_after_time(kv, run):
    for _ in range(5):
        _hit(kv, run, NOW)
    assert _hit(kv, run, NOW + 200).allowed
    assert not _hit(kv, run, NOW + 200).allowed
    full = [_hit(kv, run, NOW + 5000) for _ in range(6)]
    assert [d.allowed for d in full] == [True] * 5 + [False]


def test_rate_limit_reset_after_is_time_to_full_bucket(kv, run):
    _hit(kv, run, NOW)
    assert _hit(kv, run, NOW).reset_after_ms == 400


def test_rate_limit_keys_are_independent(kv, run):
    for _ in range(5):
        _hit(kv, run, NOW, key="a")
    assert _hit(kv, run, NOW, key="b").allowed


def test_rate_limit_cost_counts_as_many_requests(kv, run):
    assert _hit(kv, run, NOW, cost=3).remaining == 2
    assert not _hit(kv, run, NOW, cost=3).allowed
    assert _hit(kv, run, NOW, cost=2).allowed


def test_rate_limit_fractional_interval_allows_whole_burst(kv, run):
    # 1000/3 ms per slot: float arithmetic on a ~1.8e12 TAT would lose the last slot.
    decisions = [run(kv.rate_limit("f", 3, 1000, 3, NOW + 7)) for _ in range(4)]
    assert [d.allowed for d in decisions] == [True, True, True, False]


def test_rate_limit_concurrent_calls_allow_exactly_burst(kv, run):
    decisions = run(_gather(*(kv.rate_limit("c", 10, 1000, 10, NOW) for _ in range(11))))
    assert sum(d.allowed for d in decisions) == 10


def test_rate_limits_count_each_limit_exactly_as_rate_limit_does(kv, run):
    limits = [LimitSpec("a", 5, 1000, 5), LimitSpec("u", 3, 1000, 3)]
    together = [run(kv.rate_limits(limits, NOW)) for _ in range(3)]
    twins = [[run(kv.rate_limit(f"twin-{limit.key}", limit.rate, limit.period_ms, limit.burst, NOW))
              for limit in limits] for _ in range(3)]
    assert together == twins


def test_rate_limits_stop_at_the_first_refusal_and_leave_the_rest_uncounted(kv, run):
    first, second = LimitSpec("first", 1, 1000, 1), LimitSpec("second", 5, 1000, 5)
    run(kv.rate_limit("first", 1, 1000, 1, NOW))  # first is now spent
    decisions = run(kv.rate_limits([first, second], NOW))
    assert [d.allowed for d in decisions] == [False]
    assert run(kv.rate_limit("second", 5, 1000, 5, NOW)).remaining == 4  # never counted


def test_rate_limits_before_a_refusal_stay_counted(kv, run):
    counted, spent = LimitSpec("counted", 5, 1000, 5), LimitSpec("spent", 1, 1000, 1)
    run(kv.rate_limit("spent", 1, 1000, 1, NOW))
    decisions = run(kv.rate_limits([counted, spent], NOW))
    assert [d.allowed for d in decisions] == [True, False]
    assert run(kv.rate_limit("counted", 5, 1000, 5, NOW)).remaining == 3


def test_rate_limits_concurrent_calls_allow_exactly_burst(kv, run):
    limits = [LimitSpec("wide", 100, 1000, 100), LimitSpec("narrow", 10, 1000, 10)]
    outcomes = run(_gather(*(kv.rate_limits(limits, NOW) for _ in range(11))))
    assert sum(decisions[-1].allowed for decisions in outcomes) == 10


# advance / retreat


def test_advance_from_absent_returns_none(kv, run):
    assert run(kv.advance("seq", 5, NOW, 1000)) is None
    assert run(kv.get("seq", NOW)) == b"5"


def test_advance_returns_previous(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    assert run(kv.advance("seq", 9, NOW, 1000)) == 5


def test_advance_smaller_raises_not_greater(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    with pytest.raises(NotGreater) as raised:
        run(kv.advance("seq", 3, NOW, 1000))
    assert raised.value.current == 5


def test_advance_equal_is_refused(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    with pytest.raises(NotGreater):
        run(kv.advance("seq", 5, NOW, 1000))


def test_advance_starts_over_after_expiry(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    assert run(kv.advance("seq", 1, NOW + 1000, 1000)) is None


def test_advance_concurrent_same_value_exactly_one_wins(kv, run):
    attempts = (kv.advance("seq", 7, NOW, 1000) for _ in range(10))
    results = run(_gather(*attempts, return_exceptions=True))
    assert sum(not isinstance(r, NotGreater) for r in results) == 1


def test_retreat_restores_previous(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    run(kv.advance("seq", 9, NOW, 1000))
    run(kv.retreat("seq", 9, 5, NOW, 1000))
    assert run(kv.get("seq", NOW)) == b"5"


def test_retreat_to_none_deletes(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    run(kv.retreat("seq", 5, None, NOW, 1000))
    assert run(kv.get("seq", NOW)) is None


def test_retreat_leaves_a_newer_value_alone(kv, run):
    run(kv.advance("seq", 5, NOW, 1000))
    run(kv.advance("seq", 9, NOW, 1000))
    run(kv.retreat("seq", 5, None, NOW, 1000))
    assert run(kv.get("seq", NOW)) == b"9"


# reserve: set_nx of a nonce and advance of a known sequence mark, as one step


def _reserve(kv, seq: int, nonce: str = "n1", now: int = NOW, limit: LimitSpec | None = None,
             gates: tuple[LimitSpec, ...] = ()):
    return kv.reserve(f"nonce:{nonce}", 2000, "seq", seq, now, 1000, limit, gates)


def test_reserve_stores_the_nonce_and_advances_the_mark(kv, run):
    run(kv.set("seq", b"4", NOW, ttl_ms=1000))
    assert run(_reserve(kv, 5)) == Reserved(4, None)
    assert (run(kv.get("nonce:n1", NOW)), run(kv.get("seq", NOW))) == (b"1", b"5")
    assert run(kv.get("nonce:n1", NOW + 1999)) == b"1" and run(kv.get("nonce:n1", NOW + 2000)) is None
    assert run(kv.get("seq", NOW + 999)) == b"5" and run(kv.get("seq", NOW + 1000)) is None


def test_reserve_of_a_live_nonce_changes_nothing(kv, run):
    run(kv.set("seq", b"4", NOW, ttl_ms=1000))
    run(kv.set_nx("nonce:n1", b"1", NOW, 2000))
    with pytest.raises(NonceUsed):
        run(_reserve(kv, 5))
    assert run(kv.get("seq", NOW)) == b"4"


def test_reserve_of_an_expired_nonce_succeeds(kv, run):
    run(kv.set("seq", b"4", NOW, ttl_ms=5000))
    run(kv.set_nx("nonce:n1", b"1", NOW, 10))
    assert run(_reserve(kv, 5, now=NOW + 10)).previous == 4


def test_reserve_not_greater_gives_the_nonce_back(kv, run):
    run(kv.set("seq", b"7", NOW, ttl_ms=1000))
    with pytest.raises(NotGreater) as raised:
        run(_reserve(kv, 7))
    assert raised.value.current == 7
    assert (run(kv.get("nonce:n1", NOW)), run(kv.get("seq", NOW))) == (None, b"7")


def test_reserve_with_no_mark_keeps_the_nonce_and_leaves_the_mark_absent(kv, run):
    with pytest.raises(SeqUnknown):
        run(_reserve(kv, 5))
    assert (run(kv.get("nonce:n1", NOW)), run(kv.get("seq", NOW))) == (b"1", None)
    run(kv.set("seq", b"1", NOW - 1000, ttl_ms=1000))  # expired by NOW: absent again
    with pytest.raises(SeqUnknown):
        run(_reserve(kv, 5, nonce="n2"))


def test_reserve_counts_the_limit_once_reserved_exactly_as_rate_limit_does(kv, run):
    run(kv.set("seq", b"0", NOW, ttl_ms=60_000))
    limit = LimitSpec("rule", 2, 60_000, 2)
    decisions = [run(_reserve(kv, seq, nonce=f"n{seq}", limit=limit)).decision for seq in (1, 2, 3)]
    expected = [run(kv.rate_limit("twin", 2, 60_000, 2, NOW)) for _ in range(3)]
    assert decisions == expected
    assert [d.allowed for d in decisions] == [True, True, False]


def test_reserve_does_not_count_the_limit_when_it_reserves_nothing(kv, run):
    limit = LimitSpec("rule", 1, 60_000, 1)
    with pytest.raises(SeqUnknown):  # nonce stored, no mark: not counted
        run(_reserve(kv, 5, limit=limit))
    with pytest.raises(NonceUsed):
        run(_reserve(kv, 6, limit=limit))
    run(kv.set("seq", b"9", NOW, ttl_ms=1000))
    with pytest.raises(NotGreater):
        run(_reserve(kv, 9, nonce="n2", limit=limit))
    assert run(kv.rate_limit("rule", 1, 60_000, 1, NOW)).allowed


def test_reserve_concurrent_same_nonce_exactly_one_wins(kv, run):
    run(kv.set("seq", b"0", NOW, ttl_ms=1000))
    results = run(_gather(*(_reserve(kv, seq) for seq in range(1, 11)), return_exceptions=True))
    assert sum(not isinstance(r, NonceUsed) for r in results) == 1


# reserve's gates: rate limits counted first, in the same step


def test_reserve_counts_its_gates_exactly_as_rate_limits_does(kv, run):
    run(kv.set("seq", b"0", NOW, ttl_ms=60_000))
    gates = (LimitSpec("a", 5, 1000, 5), LimitSpec("u", 3, 1000, 3))
    for seq in (1, 2, 3):
        run(_reserve(kv, seq, nonce=f"n{seq}", gates=gates))
    twins = [LimitSpec(f"twin-{gate.key}", gate.rate, gate.period_ms, gate.burst) for gate in gates]
    for _ in range(3):
        run(kv.rate_limits(twins, NOW))
    assert [run(kv.get(gate.key, NOW)) for gate in gates] == [run(kv.get(twin.key, NOW)) for twin in twins]


def test_reserve_refused_by_a_gate_gives_its_decision_and_reserves_nothing(kv, run):
    run(kv.set("seq", b"4", NOW, ttl_ms=1000))
    counted, spent = LimitSpec("counted", 5, 1000, 5), LimitSpec("spent", 1, 1000, 1)
    run(kv.rate_limit("spent", 1, 1000, 1, NOW))
    with pytest.raises(Refused) as raised:
        run(_reserve(kv, 5, gates=(counted, spent), limit=LimitSpec("rule", 1, 60_000, 1)))
    assert raised.value.decision == run(kv.rate_limits([LimitSpec("twin", 1, 1000, 1)] * 2, NOW))[-1]
    assert (run(kv.get("nonce:n1", NOW)), run(kv.get("seq", NOW))) == (None, b"4")
    assert run(kv.rate_limit("counted", 5, 1000, 5, NOW)).remaining == 3  # the gate before it stays counted
    assert run(kv.rate_limit("rule", 1, 60_000, 1, NOW)).allowed  # the rule's limit was not counted


def test_reserve_refusal_stops_at_the_first_gate_that_refuses(kv, run):
    spent, after = LimitSpec("spent", 1, 1000, 1), LimitSpec("after", 5, 1000, 5)
    run(kv.rate_limit("spent", 1, 1000, 1, NOW))
    with pytest.raises(Refused) as raised:
        run(_reserve(kv, 5, gates=(spent, after)))
    assert raised.value.decision.limit == 1
    assert run(kv.rate_limit("after", 5, 1000, 5, NOW)).remaining == 4  # never counted


def test_reserve_counts_its_gates_even_when_the_nonce_is_used(kv, run):
    gate = LimitSpec("gate", 5, 1000, 5)
    run(kv.set_nx("nonce:n1", b"1", NOW, 2000))
    with pytest.raises(NonceUsed):
        run(_reserve(kv, 5, gates=(gate,)))
    assert run(kv.rate_limit("gate", 5, 1000, 5, NOW)).remaining == 3


def test_reserve_concurrent_calls_pass_a_gate_exactly_burst_times(kv, run):
    run(kv.set("seq", b"0", NOW, ttl_ms=1000))
    gate = LimitSpec("gate", 10, 1000, 10)
    results = run(_gather(*(_reserve(kv, seq, nonce=f"n{seq}", gates=(gate,)) for seq in range(1, 12)),
                          return_exceptions=True))
    assert sum(isinstance(r, Refused) for r in results) == 1


# backend specifics


def test_memory_sweep_keeps_size_bounded(run):
    store = MemoryKV()
    for i in range(5000):
        run(store.set(f"k{i}", b"v", NOW + i, ttl_ms=10))
    assert len(store) <= 2048


def test_redis_keys_carry_prefix_and_a_ttl(run, redis_prefix):
    client = redis.asyncio.Redis.from_url(require_redis())
    store = RedisKV(client, redis_prefix)
    try:
        decision = run(store.rate_limit("rl", 5, 1000, 5, NOW))
        ttl = run(client.pttl(redis_prefix + "rl"))
        assert 0 < ttl <= decision.reset_after_ms
    finally:
        run(_delete_prefixed(client, redis_prefix))
        run(store.close())


def test_redis_refuses_a_decoding_client():
    with pytest.raises(ValueError):
        RedisKV(redis.asyncio.Redis(decode_responses=True), "p:")


def test_redis_down_raises_unavailable(run):
    client = redis.asyncio.Redis.from_url(
        "redis://127.0.0.1:1", socket_connect_timeout=0.2, retry=Retry(NoBackoff(), 0))
    store = RedisKV(client, "down:")
    started = time.monotonic()
    with pytest.raises(errors.Unavailable):
        run(store.get("k", NOW))
    with pytest.raises(errors.Unavailable):
        run(store.rate_limit("k", 1, 1000, 1, NOW))
    assert time.monotonic() - started < 5
    run(store.close())
