"""Limit parsing and the policy check on top of a KV (the counting itself is in test_kv_contract.py)."""

from __future__ import annotations

import pytest

from scoreboard import errors
from scoreboard.kv.memory import MemoryKV
from scoreboard.ratelimit import Limit, check

NOW = 1_795_000_000_000


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("10/s", Limit(10, 1_000, 10)),
        ("600/m", Limit(600, 60_000, 600)),
        ("1000/h", Limit(1000, 3_600_000, 1000)),
        ("5/d", Limit(5, 86_400_000, 5)),
        (" 3 / s ", Limit(3, 1_000, 3)),
    ],
)
def test_parse(spec, expected):
    assert Limit.parse(spec) == expected


def test_parse_with_explicit_burst():
    assert Limit.parse("600/m", burst=20) == Limit(600, 60_000, 20)


@pytest.mark.parametrize("spec", ["", "10", "10/x", "ten/s", "-1/s", "0/s", "10/s/s", "1.5/s"])
def test_parse_rejects(spec):
    with pytest.raises(ValueError):
        Limit.parse(spec)


def test_limit_is_frozen():
    with pytest.raises(AttributeError):
        Limit.parse("1/s").rate = 2


def test_check_returns_the_decision_when_allowed(event_loop_runner):
    decision = event_loop_runner(check(MemoryKV(), "u:1", Limit.parse("2/s"), NOW))
    assert decision.allowed and decision.remaining == 1


def test_check_raises_rate_limited_with_headers(event_loop_runner):
    kv, limit = MemoryKV(), Limit.parse("2/m")
    for _ in range(2):
        event_loop_runner(check(kv, "u:1", limit, NOW))
    with pytest.raises(errors.RateLimited) as raised:
        event_loop_runner(check(kv, "u:1", limit, NOW + 500))
    assert raised.value.status == 429
    assert raised.value.headers() == {
        "Retry-After": "30",  # one slot frees 30 s after the burst, 29.5 s from now: rounded up
        "X-RateLimit-Limit": "2",
        "X-RateLimit-Remaining": "0",
        "X-RateLimit-Reset": "30",
    }


def test_check_rounds_sub_second_retry_up_to_one(event_loop_runner):
    kv, limit = MemoryKV(), Limit.parse("10/s", burst=1)
    event_loop_runner(check(kv, "k", limit, NOW))
    with pytest.raises(errors.RateLimited) as raised:
        event_loop_runner(check(kv, "k", limit, NOW + 1))
    assert raised.value.retry_after_s == 1


def test_check_refuses_a_cost_above_the_burst(event_loop_runner):
    with pytest.raises(ValueError):
        event_loop_runner(check(MemoryKV(), "k", Limit.parse("2/s"), NOW, cost=3))
