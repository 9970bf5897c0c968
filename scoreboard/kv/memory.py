"""The KV contract in one process: a dict whose entries expire by the caller's clock.

Every method runs to completion without awaiting, so concurrent callers on one event loop can never
interleave between a read and its write: that is what makes set_nx, rate_limit and advance atomic here.
"""

from __future__ import annotations

from collections.abc import Sequence

from scoreboard.kv import LimitSpec, NonceUsed, NotGreater, RateDecision, Refused, Reserved, SeqUnknown

# Expired entries are dropped lazily when read; a full sweep runs once the writes since the last sweep
# reach the size that sweep left (at least this many), so sweeping costs O(1) per write amortised and
# the dict holds at most about twice the entries alive at the last sweep.
_MIN_WRITES_BETWEEN_SWEEPS = 1024


class MemoryKV:
    def __init__(self) -> None:
        # key -> (value, expires_at_ms or None for never)
        self._data: dict[str, tuple[bytes, int | None]] = {}
        self._writes_until_sweep = _MIN_WRITES_BETWEEN_SWEEPS

    def __len__(self) -> int:
        return len(self._data)

    async def get(self, key: str, now_ms: int) -> bytes | None:
        return self._live(key, now_ms)

    async def set(self, key: str, value: bytes, now_ms: int, ttl_ms: int | None = None) -> None:
        self._put(key, value, now_ms, ttl_ms)

    async def set_nx(self, key: str, value: bytes, now_ms: int, ttl_ms: int) -> bool:
        if self._live(key, now_ms) is not None:
            return False
        self._put(key, value, now_ms, ttl_ms)
        return True

    async def delete(self, key: str) -> None:
        self._data.pop(key, None)

    async def rate_limit(self, key: str, rate: int, period_ms: int, burst: int, now_ms: int,
                         cost: int = 1) -> RateDecision:
        return self._rate_limit(key, rate, period_ms, burst, now_ms, cost)

    async def rate_limits(self, limits: list[LimitSpec], now_ms: int) -> list[RateDecision]:
        return self._rate_limits(limits, now_ms)

    def _rate_limits(self, limits: Sequence[LimitSpec], now_ms: int) -> list[RateDecision]:
        decisions = []
        for limit in limits:
            decisions.append(self._rate_limit(limit.key, limit.rate, limit.period_ms, limit.burst, now_ms, 1))
            if not decisions[-1].allowed:
                break
        return decisions

    def _rate_limit(self, key: str, rate: int, period_ms: int, burst: int, now_ms: int, cost: int) -> RateDecision:
        stored = self._live(key, now_ms)
        tat_us = int(stored) if stored is not None else 0
        new_tat_us, decision = _gcra(tat_us, rate, period_ms, burst, now_ms, cost)
        if new_tat_us is not None:
            self._put(key, str(new_tat_us).encode(), now_ms, max(1, decision.reset_after_ms))
        return decision

    async def advance(self, key: str, value: int, now_ms: int, ttl_ms: int) -> int | None:
        stored = self._live(key, now_ms)
        previous = int(stored) if stored is not None else None
        if previous is not None and previous >= value:
            raise NotGreater(previous)
        self._put(key, str(value).encode(), now_ms, ttl_ms)
        return previous

    async def retreat(self, key: str, value: int, previous: int | None, now_ms: int, ttl_ms: int) -> None:
        stored = self._live(key, now_ms)
        if stored is None or int(stored) != value:
            return  # someone advanced past us (or it expired): their value wins
        if previous is None:
            self._data.pop(key, None)
        else:
            self._put(key, str(previous).encode(), now_ms, ttl_ms)

    async def reserve(self, nonce_key: str, nonce_ttl_ms: int, seq_key: str, seq: int, now_ms: int,
                      seq_ttl_ms: int, limit: LimitSpec | None = None, gates: Sequence[LimitSpec] = ()) -> Reserved:
        decisions = self._rate_limits(gates, now_ms)
        if decisions and not decisions[-1].allowed:
            raise Refused(decisions[-1])
        if self._live(nonce_key, now_ms) is not None:
            raise NonceUsed(nonce_key)
        stored = self._live(seq_key, now_ms)
        if stored is not None and int(stored) >= seq:
            raise NotGreater(int(stored))
        self._put(nonce_key, b"1", now_ms, nonce_ttl_ms)
        if stored is None:
            raise SeqUnknown(seq_key)
        self._put(seq_key, str(seq).encode(), now_ms, seq_ttl_ms)
        if limit is None:
            return Reserved(int(stored))
        return Reserved(int(stored), self._rate_limit(limit.key, limit.rate, limit.period_ms, limit.burst, now_ms, 1))

    async def close(self) -> None:
        self._data.clear()

    def _live(self, key: str, now_ms: int) -> bytes | None:
        entry = self._data.get(key)
        if entry is None:
            return None
        value, expires_at = entry
        if expires_at is not None and expires_at <= now_ms:
            del self._data[key]
            return None
        return value

    def _put(self, key: str, value: bytes, now_ms: int, ttl_ms: int | None) -> None:
        if ttl_ms is not None and ttl_ms <= 0:
            raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
        self._data[key] = (bytes(value), None if ttl_ms is None else now_ms + ttl_ms)
        self._writes_until_sweep -= 1
        if self._writes_until_sweep <= 0:
            self._sweep(now_ms)

    def _sweep(self, now_ms: int) -> None:
        dead = [k for k, (_, exp) in self._data.items() if exp is not None and exp <= now_ms]
        for key in dead:
            del self._data[key]
        self._writes_until_sweep = max(_MIN_WRITES_BETWEEN_SWEEPS, len(self._data))


def _gcra(tat_us: int, rate: int, period_ms: int, burst: int, now_ms: int,
          cost: int) -> tuple[int | None, RateDecision]:
    """One GCRA step; returns the new TAT to store (None when refused) and the decision.

    Times are integer microseconds so that every step is exact (a float TAT near 1.8e12 ms drifts by
    rounding and can turn the last allowed request of a burst into a refusal). The Lua twin in
    redis.py must compute exactly the same numbers.
    """
    interval = max(1, period_ms * 1000 // rate)
    tolerance = interval * burst
    now = now_ms * 1000
    tat = max(tat_us, now)
    new_tat = tat + cost * interval
    allow_at = new_tat - tolerance
    if now < allow_at:
        remaining = max(0, (tolerance - (tat - now)) // interval)
        return None, RateDecision(False, burst, remaining, _ceil_ms(allow_at - now), _ceil_ms(tat - now))
    remaining = max(0, (tolerance - (new_tat - now)) // interval)
    return new_tat, RateDecision(True, burst, remaining, 0, _ceil_ms(new_tat - now))


def _ceil_ms(us: int) -> int:
    return -(-us // 1000)
