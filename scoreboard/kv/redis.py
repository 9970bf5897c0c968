"""The KV contract on a shared Redis, so every server process sees the same nonces, limits and marks.

Expiry follows the caller's clock, exactly as in MemoryKV: each stored string is `<expires_at_ms>:<value>`
(the expiry part empty for "never"), readers treat an entry whose expiry is <= now_ms as absent, and the
Redis TTL (PX, same length) only reclaims memory. Without this, a test (or a process whose clock is a
little ahead) would see Redis and memory disagree about what has expired. Every read-modify-write is one
Lua script, so it is atomic across processes.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Sequence
from typing import ParamSpec, TypeVar

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from scoreboard.errors import Unavailable
from scoreboard.kv import LimitSpec, NonceUsed, NotGreater, RateDecision, Refused, Reserved, SeqUnknown

P = ParamSpec("P")
R = TypeVar("R")

# Shared by every script: `live` reads a value unless it expired by the caller's clock, `put` writes one.
_LUA_HELPERS = """
local function live(key, now)
  local blob = redis.call('GET', key)
  if not blob then return nil end
  local sep = string.find(blob, ':', 1, true)
  local exp = string.sub(blob, 1, sep - 1)
  if exp ~= '' and tonumber(exp) <= now then return nil end
  return string.sub(blob, sep + 1)
end
local function put(key, value, now, ttl)
  redis.call('SET', key, string.format('%.0f', now + ttl) .. ':' .. value, 'PX', string.format('%.0f', ttl))
end
"""

# ARGV: value, now_ms, ttl_ms
_SET_NX = _LUA_HELPERS + """
local now = tonumber(ARGV[2])
if live(KEYS[1], now) then return 0 end
put(KEYS[1], ARGV[1], now, tonumber(ARGV[3]))
return 1
"""

# The twin of memory._gcra: keep the arithmetic identical (integer microseconds, exact in Lua's doubles
# up to 2^53). Returns {allowed, remaining, retry_after_ms, reset_after_ms}.
_GCRA = """
local function gcra(key, now_ms, interval, tolerance, cost)
  local now = now_ms * 1000
  local stored = live(key, now_ms)
  local tat = math.max(stored and tonumber(stored) or 0, now)
  local new_tat = tat + cost * interval
  local allow_at = new_tat - tolerance
  if now < allow_at then
    local remaining = math.max(0, math.floor((tolerance - (tat - now)) / interval))
    return {0, remaining, math.ceil((allow_at - now) / 1000), math.ceil((tat - now) / 1000)}
  end
  local reset = math.ceil((new_tat - now) / 1000)
  put(key, string.format('%.0f', new_tat), now_ms, math.max(1, reset))
  return {1, math.max(0, math.floor((tolerance - (new_tat - now)) / interval)), 0, reset}
end
"""

# ARGV: now_ms, interval_us, tolerance_us, cost
_RATE_LIMIT = _LUA_HELPERS + _GCRA + """
return gcra(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3]), tonumber(ARGV[4]))
"""

# KEYS: limits; ARGV: now_ms, then interval_us and tolerance_us of each -> gcra's 4 per limit, up to the first
# refusal
_RATE_LIMITS = _LUA_HELPERS + _GCRA + """
local now = tonumber(ARGV[1])
local out = {}
for i, key in ipairs(KEYS) do
  local d = gcra(key, now, tonumber(ARGV[2 * i]), tonumber(ARGV[2 * i + 1]), 1)
  for _, value in ipairs(d) do out[#out + 1] = value end
  if d[1] == 0 then break end
end
return out
"""

# ARGV: value, now_ms, ttl_ms -> {1, previous?} stored, {0, current} not greater
_ADVANCE = _LUA_HELPERS + """
local now = tonumber(ARGV[2])
local cur = live(KEYS[1], now)
if cur and tonumber(cur) >= tonumber(ARGV[1]) then return {0, cur} end
put(KEYS[1], ARGV[1], now, tonumber(ARGV[3]))
if cur then return {1, cur} end
return {1}
"""

# KEYS: gates (G of them), nonce, seq mark[, limit]
# ARGV: now_ms, G, interval_us and tolerance_us of each gate, nonce_ttl_ms, seq, seq_ttl_ms[, interval_us,
# tolerance_us] -> {4, gate index, gcra's last 3} a gate refused, {0} nonce used, {2, current} not greater,
# {3} no mark (nonce stored), {1, previous[, gcra's 4]} reserved
_RESERVE = _LUA_HELPERS + _GCRA + """
local now = tonumber(ARGV[1])
local gates = tonumber(ARGV[2])
for i = 1, gates do
  local d = gcra(KEYS[i], now, tonumber(ARGV[1 + 2 * i]), tonumber(ARGV[2 + 2 * i]), 1)
  if d[1] == 0 then return {4, i, d[2], d[3], d[4]} end
end
local nonce, mark, limit, a = KEYS[gates + 1], KEYS[gates + 2], KEYS[gates + 3], 2 + 2 * gates
if live(nonce, now) then return {0} end
local cur = live(mark, now)
if cur and tonumber(cur) >= tonumber(ARGV[a + 2]) then return {2, cur} end
put(nonce, '1', now, tonumber(ARGV[a + 1]))
if not cur then return {3} end
put(mark, ARGV[a + 2], now, tonumber(ARGV[a + 3]))
if not limit then return {1, cur} end
local d = gcra(limit, now, tonumber(ARGV[a + 4]), tonumber(ARGV[a + 5]), 1)
return {1, cur, d[1], d[2], d[3], d[4]}
"""

# ARGV: value, previous ('' for none), now_ms, ttl_ms
_RETREAT = _LUA_HELPERS + """
local now = tonumber(ARGV[3])
local cur = live(KEYS[1], now)
if not cur or tonumber(cur) ~= tonumber(ARGV[1]) then return 0 end
if ARGV[2] == '' then redis.call('DEL', KEYS[1]) else put(KEYS[1], ARGV[2], now, tonumber(ARGV[4])) end
return 1
"""


def _unavailable_when_down(method: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """The one place where a lost Redis becomes the protocol's 503 `unavailable`."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await method(*args, **kwargs)
        except (RedisConnectionError, RedisTimeoutError) as exc:
            raise Unavailable("redis is unavailable") from exc

    return wrapper


class RedisKV:
    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisKV needs a client with decode_responses=False: values are bytes")
        self._client = client
        self._prefix = prefix
        self._set_nx = client.register_script(_SET_NX)
        self._rate_limit = client.register_script(_RATE_LIMIT)
        self._rate_limits = client.register_script(_RATE_LIMITS)
        self._advance = client.register_script(_ADVANCE)
        self._retreat = client.register_script(_RETREAT)
        self._reserve = client.register_script(_RESERVE)

    @_unavailable_when_down
    async def get(self, key: str, now_ms: int) -> bytes | None:
        blob = await self._client.get(self._prefix + key)
        if blob is None:
            return None
        expires_at, _, value = blob.partition(b":")
        if expires_at and int(expires_at) <= now_ms:
            return None
        return value

    @_unavailable_when_down
    async def set(self, key: str, value: bytes, now_ms: int, ttl_ms: int | None = None) -> None:
        if ttl_ms is None:
            await self._client.set(self._prefix + key, b":" + value)
            return
        _check_ttl(ttl_ms)
        await self._client.set(self._prefix + key, b"%d:%s" % (now_ms + ttl_ms, value), px=ttl_ms)

    @_unavailable_when_down
    async def set_nx(self, key: str, value: bytes, now_ms: int, ttl_ms: int) -> bool:
        _check_ttl(ttl_ms)
        return bool(await self._set_nx(keys=[self._prefix + key], args=[value, now_ms, ttl_ms]))

    @_unavailable_when_down
    async def delete(self, key: str) -> None:
        await self._client.delete(self._prefix + key)

    @_unavailable_when_down
    async def rate_limit(self, key: str, rate: int, period_ms: int, burst: int, now_ms: int,
                         cost: int = 1) -> RateDecision:
        args = [now_ms, *_gcra_args(rate, period_ms, burst), cost]
        allowed, remaining, retry_after, reset_after = await self._rate_limit(
            keys=[self._prefix + key], args=args)
        return RateDecision(bool(allowed), burst, remaining, retry_after, reset_after)

    @_unavailable_when_down
    async def rate_limits(self, limits: list[LimitSpec], now_ms: int) -> list[RateDecision]:
        args = [now_ms]
        for limit in limits:
            args.extend(_gcra_args(limit.rate, limit.period_ms, limit.burst))
        reply = await self._rate_limits(keys=[self._prefix + limit.key for limit in limits], args=args)
        return [RateDecision(bool(reply[i]), limit.burst, reply[i + 1], reply[i + 2], reply[i + 3])
                for i, limit in zip(range(0, len(reply), 4), limits, strict=False)]  # up to the refusal

    @_unavailable_when_down
    async def advance(self, key: str, value: int, now_ms: int, ttl_ms: int) -> int | None:
        _check_ttl(ttl_ms)
        reply = await self._advance(keys=[self._prefix + key], args=[value, now_ms, ttl_ms])
        if not reply[0]:
            raise NotGreater(int(reply[1]))
        return int(reply[1]) if len(reply) > 1 else None

    @_unavailable_when_down
    async def retreat(self, key: str, value: int, previous: int | None, now_ms: int, ttl_ms: int) -> None:
        _check_ttl(ttl_ms)
        args = [value, "" if previous is None else previous, now_ms, ttl_ms]
        await self._retreat(keys=[self._prefix + key], args=args)

    @_unavailable_when_down
    async def reserve(self, nonce_key: str, nonce_ttl_ms: int, seq_key: str, seq: int, now_ms: int,
                      seq_ttl_ms: int, limit: LimitSpec | None = None, gates: Sequence[LimitSpec] = ()) -> Reserved:
        _check_ttl(nonce_ttl_ms)
        _check_ttl(seq_ttl_ms)
        keys = [self._prefix + gate.key for gate in gates]
        args = [now_ms, len(gates)]
        for gate in gates:
            args.extend(_gcra_args(gate.rate, gate.period_ms, gate.burst))
        keys += [self._prefix + nonce_key, self._prefix + seq_key]
        args += [nonce_ttl_ms, seq, seq_ttl_ms]
        if limit is not None:
            keys.append(self._prefix + limit.key)
            args.extend(_gcra_args(limit.rate, limit.period_ms, limit.burst))
        reply = await self._reserve(keys=keys, args=args)
        if reply[0] == 1:
            if limit is None:
                return Reserved(int(reply[1]))
            allowed, remaining, retry_after, reset_after = reply[2:]
            decision = RateDecision(bool(allowed), limit.burst, remaining, retry_after, reset_after)
            return Reserved(int(reply[1]), decision)
        if reply[0] == 4:
            gate, remaining, retry_after, reset_after = reply[1:]
            raise Refused(RateDecision(False, gates[gate - 1].burst, remaining, retry_after, reset_after))
        if reply[0] == 2:
            raise NotGreater(int(reply[1]))
        raise NonceUsed(nonce_key) if reply[0] == 0 else SeqUnknown(seq_key)

    async def close(self) -> None:
        await self._client.aclose()


def _gcra_args(rate: int, period_ms: int, burst: int) -> tuple[int, int]:
    """The GCRA script's interval and tolerance, in integer microseconds."""
    interval_us = max(1, period_ms * 1000 // rate)
    return interval_us, interval_us * burst


def _check_ttl(ttl_ms: int) -> None:
    # Redis rejects PX 0 with a ResponseError; fail the same way MemoryKV does, before the round trip.
    if ttl_ms <= 0:
        raise ValueError(f"ttl_ms must be positive, got {ttl_ms}")
