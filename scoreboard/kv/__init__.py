"""Short-lived shared state: nonces, rate-limit counters, sequence high-water marks, revocations, caches.

Two implementations with one contract (tests/test_kv_contract.py runs on both): `memory.MemoryKV`
for a single process and `redis.RedisKV` for many processes sharing one Redis.
Every time is in Unix milliseconds and comes from the caller (`now_ms`), so expiry is testable without sleeping.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple, Protocol


class RateDecision(NamedTuple):
    """The verdict of one GCRA check: allowed or not, with what a 429 response needs."""

    allowed: bool
    limit: int
    remaining: int
    retry_after_ms: int
    reset_after_ms: int


class KV(Protocol):
    async def get(self, key: str, now_ms: int) -> bytes | None: ...

    async def set(self, key: str, value: bytes, now_ms: int, ttl_ms: int | None = None) -> None: ...

    async def set_nx(self, key: str, value: bytes, now_ms: int, ttl_ms: int) -> bool:
        """Store only if absent (or expired); True when this call stored it."""

    async def delete(self, key: str) -> None: ...

    async def rate_limit(self, key: str, rate: int, period_ms: int, burst: int, now_ms: int,
                         cost: int = 1) -> RateDecision:
        """GCRA: `rate` requests per `period_ms` with `burst` allowed at once; atomic under concurrency."""

    async def rate_limits(self, limits: list[LimitSpec], now_ms: int) -> list[RateDecision]:
        """`rate_limit` of one request against each limit in turn, as one atomic step, stopping at the first
        that refuses: returns the decisions made, the refusing one last. The limits before it stay counted,
        as separate calls would have left them; the ones after it are not counted."""

    async def advance(self, key: str, value: int, now_ms: int, ttl_ms: int) -> int | None:
        """Raise the stored integer to `value` if `value` is greater; return the previous value
        (None when absent) on success, or raise `NotGreater` with the current value."""

    async def retreat(self, key: str, value: int, previous: int | None, now_ms: int, ttl_ms: int) -> None:
        """Undo an `advance`: put back `previous` only if the stored value is still `value`."""

    async def reserve(self, nonce_key: str, nonce_ttl_ms: int, seq_key: str, seq: int, now_ms: int,
                      seq_ttl_ms: int, limit: LimitSpec | None = None, gates: Sequence[LimitSpec] = ()) -> Reserved:
        """`rate_limits(gates)` first, then `set_nx(nonce_key, b"1")` and `advance(seq_key, seq)` for a
        mark that is present, then (with `limit`) `rate_limit` of one request, all as one atomic step:
        returns the mark's previous value and the limit's decision. Raises `Refused` with the decision
        of the first gate that refuses (the gates before it stay counted, nothing else changes),
        `NonceUsed` when the nonce is live, `NotGreater` when the mark is not below `seq` (for these two
        only the gates changed), `SeqUnknown` when the mark is absent (the gates are counted and the
        nonce stored; the mark stays absent for the caller to rebuild; the limit is not counted)."""

    async def close(self) -> None: ...


class LimitSpec(NamedTuple):
    """A `rate_limit` call's key and limit: `rate` per `period_ms`, `burst` at once."""

    key: str
    rate: int
    period_ms: int
    burst: int


class Reserved(NamedTuple):
    """What `reserve` did: the seq mark's previous value, and the limit's decision when one was given."""

    previous: int | None
    decision: RateDecision | None = None


class Refused(Exception):
    """reserve: a gate (a rate limit counted before anything else) refused the request."""

    def __init__(self, decision: RateDecision) -> None:
        super().__init__(f"refused: {decision}")
        self.decision = decision


class NonceUsed(Exception):
    """reserve: the nonce is already stored."""


class SeqUnknown(Exception):
    """reserve: there is no sequence mark to advance."""


class NotGreater(Exception):
    def __init__(self, current: int) -> None:
        super().__init__(f"not greater than {current}")
        self.current = current
