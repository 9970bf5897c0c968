"""Rate-limit policies: what a limit is and what exceeding it means. The counting is the KV's (GCRA)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING

from scoreboard.errors import RateLimited

if TYPE_CHECKING:  # kv sits below this module; only its types are needed here
    from scoreboard.kv import KV, LimitSpec, RateDecision

_UNIT_MS = {"s": 1_000, "m": 60_000, "h": 3_600_000, "d": 86_400_000}
_SPEC = re.compile(r"\s*(\d+)\s*/\s*([smhd])\s*")


@dataclass(frozen=True)
class Limit:
    """`rate` requests per `period_ms`, with up to `burst` of them at once."""

    rate: int
    period_ms: int
    burst: int

    def __post_init__(self) -> None:
        if self.rate < 1 or self.period_ms < 1 or self.burst < 1:
            raise ValueError(f"rate, period_ms and burst must be positive: {self}")

    @classmethod
    def parse(cls, spec: str, burst: int | None = None) -> Limit:
        """'10/s', '600/m', '1000/h' or '5/d'; burst defaults to the rate."""
        match = _SPEC.fullmatch(spec)
        if match is None:
            raise ValueError(f"bad rate limit {spec!r}: expected '<count>/<s|m|h|d>', e.g. '10/s'")
        rate = int(match[1])
        return cls(rate, _UNIT_MS[match[2]], rate if burst is None else burst)


async def check_all(kv: KV, limits: list[LimitSpec], now_ms: int) -> None:
    """Count one request against each limit in turn, in one KV step; raise RateLimited for the first that
    refuses (the ones before it stay counted, the ones after it are not)."""
    decisions = await kv.rate_limits(limits, now_ms)
    _refuse_unless_allowed(decisions[-1])


async def check(kv: KV, key: str, limit: Limit, now_ms: int, cost: int = 1) -> RateDecision:
    """Count one request (of weight `cost`) against `limit`; raise RateLimited when over it."""
    if cost > limit.burst:
        # GCRA could never allow it, and a Retry-After would promise otherwise.
        raise ValueError(f"cost {cost} exceeds the burst of {limit}")
    decision = await kv.rate_limit(key, limit.rate, limit.period_ms, limit.burst, now_ms, cost)
    _refuse_unless_allowed(decision)
    return decision


def _refuse_unless_allowed(decision: RateDecision) -> None:
    if not decision.allowed:
        raise rate_limited(decision)


def rate_limited(decision: RateDecision) -> RateLimited:
    """The 429 for a refusing decision, with its Retry-After and X-RateLimit-* values."""
    return RateLimited(retry_after_s=-(-decision.retry_after_ms // 1000), limit=decision.limit,
                       remaining=decision.remaining)
