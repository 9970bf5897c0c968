"""The shared leaderboard index: per board one sorted set and one hash, kept consistent by Lua scripts.

The zset score is the game score; the member encodes the tie-break so that Redis's byte order of
equal-score members puts whoever reached the score first first:
  asc boards   member = f"{reached_seq:016d}:{user_id}",            read with ZRANGE / ZRANK
  desc boards  member = f"{10**16 - 1 - reached_seq:016d}:{user_id}", read with ZREVRANGE / ZREVRANK
The hash maps user_id -> f"{member} {username}", which both finds a user's member and names them.
Every write and every multi-step read is one script, so concurrent processes never see a user twice
or a rank computed against a half-applied change.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import Awaitable, Callable, Iterable
from typing import ParamSpec, TypeVar

import redis.asyncio
import redis.exceptions

from ..errors import Unavailable
from . import Entry, Ranked

SEQ_LIMIT = 10**16
SCORE_LIMIT = 2**53 - 1  # beyond this a double (the zset score) is no longer exact
REBUILD_CHUNK = 10_000
TMP_TTL_S = 3600  # a rebuild that dies half-way leaves nothing behind for longer than this

P = ParamSpec("P")
T = TypeVar("T")

# Shared by every script. ARGV[1] is the board order; KEYS[1] the zset, KEYS[2] the hash.
_LUA_PRELUDE = """
local rev = ARGV[1] == 'desc'
local RANK = rev and 'ZREVRANK' or 'ZRANK'
local RANGE = rev and 'ZREVRANGE' or 'ZRANGE'

local function member_of(uid)
  local meta = redis.call('HGET', KEYS[2], uid)
  if not meta then return false, false end
  return string.sub(meta, 1, string.find(meta, ' ', 1, true) - 1), meta
end

-- {first_rank, score, meta, score, meta, ...}; the user id is member characters 18.. (after 'seq16:').
local function rows(start, stop)
  local out = {start + 1}
  local flat = redis.call(RANGE, KEYS[1], start, stop, 'WITHSCORES')
  for i = 1, #flat, 2 do
    out[#out + 1] = flat[i + 1]
    out[#out + 1] = redis.call('HGET', KEYS[2], string.sub(flat[i], 18)) or ''
  end
  return out
end

-- Members start with the (inverted, on desc boards) reached_seq, zero-padded: comparing those 16 characters
-- tells which of two entries the database committed later. An older one arriving late is ignored.
local function older(member, old)
  local new_seq, old_seq = string.sub(member, 1, 16), string.sub(old, 1, 16)
  if rev then return new_seq > old_seq end
  return new_seq < old_seq
end

local function put(uid, score, member, name, want_previous)
  local old, meta = member_of(uid)
  local previous = 0
  if old then
    if want_previous then previous = redis.call(RANK, KEYS[1], old) + 1 end
    if older(member, old) then return previous, old end
    redis.call('ZREM', KEYS[1], old)
    -- An empty username means "not known here", not "renamed to nothing".
    if name == '' then name = string.sub(meta, #old + 2) end
  end
  redis.call('ZADD', KEYS[1], score, member)
  redis.call('HSET', KEYS[2], uid, member .. ' ' .. name)
  return previous, member
end
"""

# ARGV: order, user_id, score, member, username -> {rank, previous_rank or 0, total}
_APPLY = """
local previous, member = put(ARGV[2], ARGV[3], ARGV[4], ARGV[5], true)
return {redis.call(RANK, KEYS[1], member) + 1, previous, redis.call('ZCARD', KEYS[1])}
"""

# ARGV: order, then (user_id, score, member, username) repeated
_APPLY_MANY = """
for i = 2, #ARGV, 4 do put(ARGV[i], ARGV[i + 1], ARGV[i + 2], ARGV[i + 3], false) end
return redis.call('ZCARD', KEYS[1])
"""

# ARGV: order, user_id -> {rank, score} or nil
_RANK = """
local member = member_of(ARGV[2])
if not member then return false end
return {redis.call(RANK, KEYS[1], member) + 1, redis.call('ZSCORE', KEYS[1], member)}
"""

# ARGV: order, offset, limit -> rows
_PAGE = """
return rows(tonumber(ARGV[2]), tonumber(ARGV[2]) + tonumber(ARGV[3]) - 1)
"""

# ARGV: order, user_id, radius -> rows, or {} when the user is absent
_AROUND = """
local member = member_of(ARGV[2])
if not member then return {} end
local index = redis.call(RANK, KEYS[1], member)
local total = redis.call('ZCARD', KEYS[1])
local radius = tonumber(ARGV[3])
local width = math.min(2 * radius + 1, total)
local start = math.max(0, math.min(index - radius, total - width))
return rows(start, start + width - 1)
"""

# ARGV: order, user_id
_REMOVE = """
local member = member_of(ARGV[2])
if member then
  redis.call('ZREM', KEYS[1], member)
  redis.call('HDEL', KEYS[2], ARGV[2])
end
return 0
"""

# KEYS: tmp zset, tmp hash, zset, hash. Both renames happen in one script: readers see old or new.
_SWAP = """
if redis.call('EXISTS', KEYS[1]) == 1 then
  redis.call('RENAME', KEYS[1], KEYS[3])
  redis.call('RENAME', KEYS[2], KEYS[4])
  redis.call('PERSIST', KEYS[3])
  redis.call('PERSIST', KEYS[4])
else
  redis.call('DEL', KEYS[2], KEYS[3], KEYS[4])
end
return redis.call('ZCARD', KEYS[3])
"""


def guarded(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """The one place where losing Redis becomes the server's 503."""

    @functools.wraps(method)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (redis.exceptions.ConnectionError, redis.exceptions.TimeoutError) as exc:
            raise Unavailable("leaderboard store unavailable") from exc

    return wrapper


def member(order: str, entry: Entry) -> str:
    if not 0 <= entry.reached_seq < SEQ_LIMIT:
        raise ValueError(f"reached_seq {entry.reached_seq} does not fit 16 digits")
    if not -SCORE_LIMIT <= entry.score <= SCORE_LIMIT:
        raise ValueError(f"score {entry.score} is not exact in a double")
    if order == "asc":
        return f"{entry.reached_seq:016d}:{entry.user_id}"
    if order == "desc":
        return f"{SEQ_LIMIT - 1 - entry.reached_seq:016d}:{entry.user_id}"
    raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _add_encoded(scores: dict[bytes, int], metas: dict[bytes, bytes], held: str, entry: Entry) -> None:
    # Handing redis-py bytes skips its per-argument type dispatch: a sixth of a 1M-entry rebuild.
    scores[held.encode()] = entry.score
    metas[str(entry.user_id).encode()] = f"{held} {entry.username}".encode()


def _ranked(reply: list) -> list[Ranked]:
    if not reply:
        return []
    first = int(reply[0])
    out = []
    for offset in range(1, len(reply), 2):
        held, _, name = _text(reply[offset + 1]).partition(" ")
        user_id = int(held[17:])
        out.append(Ranked(first + offset // 2, user_id, int(float(reply[offset])), name))
    return out


class RedisIndex:
    """The Index contract in Redis, shared by every server process.

    The client belongs to the caller (it is usually shared with other backends), so close() leaves it open.
    A board's order must be the same on every call: it decides the member encoding.
    """

    def __init__(self, client: redis.asyncio.Redis, prefix: str) -> None:
        self._client = client
        self._prefix = prefix
        self._script = {
            name: client.register_script(_LUA_PRELUDE + body)
            for name, body in {
                "apply": _APPLY,
                "apply_many": _APPLY_MANY,
                "rank": _RANK,
                "page": _PAGE,
                "around": _AROUND,
                "remove": _REMOVE,
            }.items()
        }
        self._swap = client.register_script(_SWAP)

    def keys(self, key: str) -> list[str]:
        """[zset, hash] of a board. The braces keep both in one cluster slot, as scripts require."""
        base = f"{self._prefix}lb:{{{key}}}"
        return [f"{base}:z", f"{base}:h"]

    async def _run(self, script: str, key: str, *args: object) -> object:
        return await self._script[script](keys=self.keys(key), args=list(args))

    @guarded
    async def apply(self, key: str, order: str, entry: Entry) -> tuple[int, int | None, int]:
        held = member(order, entry)
        rank, previous, total = await self._run("apply", key, order, entry.user_id, entry.score, held, entry.username)
        return int(rank), int(previous) or None, int(total)

    @guarded
    async def apply_many(self, key: str, order: str, entries: list[Entry]) -> None:
        if not entries:
            return
        args: list[object] = []
        for entry in entries:
            args += [entry.user_id, entry.score, member(order, entry), entry.username]
        await self._run("apply_many", key, order, *args)

    @guarded
    async def rank(self, key: str, order: str, user_id: int) -> tuple[int, int] | None:
        reply = await self._run("rank", key, order, user_id)
        return None if reply is None else (int(reply[0]), int(float(reply[1])))

    @guarded
    async def page(self, key: str, order: str, offset: int, limit: int) -> list[Ranked]:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        if limit <= 0:
            return []
        return _ranked(await self._run("page", key, order, offset, limit))

    @guarded
    async def around(self, key: str, order: str, user_id: int, radius: int) -> list[Ranked]:
        return _ranked(await self._run("around", key, order, user_id, max(0, radius)))

    @guarded
    async def total(self, key: str) -> int:
        return int(await self._client.zcard(self.keys(key)[0]))

    @guarded
    async def remove(self, key: str, user_id: int) -> None:
        await self._run("remove", key, "asc", user_id)

    @guarded
    async def rebuild(self, key: str, order: str, entries: Iterable[Entry]) -> int:
        base = f"{self._prefix}lb:{{{key}}}:tmp:{uuid.uuid4().hex}"
        tmp = [f"{base}:z", f"{base}:h"]
        try:
            await self._fill(tmp, order, entries)
            return int(await self._swap(keys=tmp + self.keys(key)))
        except BaseException:
            await self._client.delete(*tmp)
            raise

    async def _fill(self, tmp: list[str], order: str, entries: Iterable[Entry]) -> None:
        seen: set[int] = set()
        scores: dict[bytes, int] = {}
        metas: dict[bytes, bytes] = {}
        for entry in entries:
            if entry.user_id in seen:
                # Two rows for one user means the caller's query is wrong; picking one would hide that.
                raise ValueError(f"user {entry.user_id} appears twice in a rebuild")
            seen.add(entry.user_id)
            _add_encoded(scores, metas, member(order, entry), entry)
            if len(scores) >= REBUILD_CHUNK:
                await self._write_chunk(tmp, scores, metas)
                scores, metas = {}, {}
        await self._write_chunk(tmp, scores, metas)

    async def _write_chunk(self, tmp: list[str], scores: dict[bytes, int], metas: dict[bytes, bytes]) -> None:
        if not scores:
            return
        pipe = self._client.pipeline(transaction=False)
        pipe.zadd(tmp[0], scores)
        pipe.hset(tmp[1], mapping=metas)
        pipe.expire(tmp[0], TMP_TTL_S)
        pipe.expire(tmp[1], TMP_TTL_S)
        await pipe.execute()

    async def close(self) -> None:
        """Nothing to release: the client is the caller's."""
