"""The Redis bus: any number of processes share a channel's epoch, offsets and history.

Per channel (`{c}` is the channel name, in a hash tag so one channel's keys share a cluster slot):

- `{prefix}bus:{{c}}:meta`  hash with `epoch` and `offset`. One key, so they are lost together: a
  flushed or restarted Redis yields a new epoch, never old offsets under the old epoch.
- `{prefix}bus:{{c}}:log`   stream of the last `history_size` events, entry ID `{offset}-0`, field `p`.
- `{prefix}bus:{c}`         pub/sub channel; frame = epoch + "\\n" + offset + "\\n" + payload.

One Lua script assigns the offset, appends to the stream and publishes (for several channels in one
call), so offsets, history and the pub/sub order agree across processes. Listeners get the semantics
documented in `bus.local`, called from one reader task per bus that owns the single pub/sub connection.

Delivery is at most once: if the pub/sub connection drops, the reader reconnects with backoff and
resubscribes, but events published meanwhile are not delivered. A listener sees that as an offset that
skips ahead (same epoch) or a new epoch, and resyncs with `history()` (or a snapshot when that is None).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Iterator, Sequence

import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

from ..errors import Unavailable
from . import Event, Listener
from .local import Fanout, new_epoch

log = logging.getLogger(__name__)

SUBSCRIBE_TIMEOUT_S = 10.0
BACKOFF_START_S, BACKOFF_CAP_S = 0.1, 5.0

# Creates the epoch (and drops any orphaned stream) when the meta hash is missing. A channel silent for
# its time-to-live (ms, 0 = never) loses both keys: a resubscribe then gets a new epoch and a snapshot.
_ENSURE = """
local function ensure(meta, stream, fresh)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    redis.call('DEL', stream)
    redis.call('HSET', meta, 'epoch', fresh, 'offset', 0)
    epoch = fresh
  end
  return epoch
end

local function keep_for(ttl, meta, stream)
  if tonumber(ttl) > 0 then
    redis.call('PEXPIRE', meta, ttl)
    redis.call('PEXPIRE', stream, ttl)
  end
end
"""

_POSITION = (
    _ENSURE
    + """
local epoch = ensure(KEYS[1], KEYS[2], ARGV[1])
keep_for(ARGV[2], KEYS[1], KEYS[2])
return {epoch, redis.call('HGET', KEYS[1], 'offset')}
"""
)

# KEYS: meta and log of each channel in turn. ARGV: history size, ttl ms, then each channel's fresh epoch,
# pub/sub channel and payload -> epoch and offset of each. Exact MAXLEN keeps history bounds exact.
_PUBLISH = (
    _ENSURE
    + """
local out = {}
for i = 1, #KEYS / 2 do
  local meta, stream, a = KEYS[2 * i - 1], KEYS[2 * i], 3 * i
  local epoch = ensure(meta, stream, ARGV[a])
  local offset = string.format('%d', redis.call('HINCRBY', meta, 'offset', 1))
  redis.call('XADD', stream, 'MAXLEN', ARGV[1], offset .. '-0', 'p', ARGV[a + 2])
  redis.call('PUBLISH', ARGV[a + 1], epoch .. '\\n' .. offset .. '\\n' .. ARGV[a + 2])
  keep_for(ARGV[2], meta, stream)
  out[#out + 1] = epoch
  out[#out + 1] = offset
end
return out
"""
)


@contextlib.contextmanager
def _unavailable(what: str) -> Iterator[None]:
    try:
        yield
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise Unavailable(f"event bus: {what}: {exc}") from exc


class _Subscription:
    """This process's listeners on one channel, and whether Redis confirmed the SUBSCRIBE."""

    def __init__(self) -> None:
        self.fanout = Fanout()
        self.ready: asyncio.Future[None] = asyncio.get_running_loop().create_future()


class RedisBus:
    shared = True

    def __init__(self, client: aioredis.Redis, prefix: str, history_size: int = 1000,
                 history_ttl_ms: int = 0) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        if client.connection_pool.connection_kwargs.get("decode_responses"):
            raise ValueError("RedisBus needs a client with decode_responses=False: payloads are bytes")
        self._client = client
        self._prefix = prefix
        self._history_size = history_size
        self._history_ttl_ms = history_ttl_ms  # 0: a channel's keys never expire
        self._publish = client.register_script(_PUBLISH)
        self._position = client.register_script(_POSITION)
        self._pubsub = client.pubsub()
        self._subs: dict[bytes, _Subscription] = {}
        # SUBSCRIBE confirmations come back in the order sent, so FIFO matches them to their waiters.
        self._confirming: dict[bytes, deque[asyncio.Future[None]]] = {}
        self._reader: asyncio.Task | None = None
        self._send_lock = asyncio.Lock()

    # --- names

    def _keys(self, channel: str) -> list[str]:
        base = f"{self._prefix}bus:{{{channel}}}"
        return [f"{base}:meta", f"{base}:log"]

    def _pubsub_name(self, channel: str) -> bytes:
        return f"{self._prefix}bus:{channel}".encode()

    def _channel_of(self, pubsub_name: bytes) -> str:
        return pubsub_name.decode()[len(self._prefix) + len("bus:") :]

    # --- Bus

    async def publish(self, channel: str, payload: bytes) -> Event:
        return (await self.publish_many([(channel, payload)]))[0]

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Event]:
        if not messages:
            return []
        messages = [(channel, bytes(payload)) for channel, payload in messages]
        keys, args = [], [self._history_size, self._history_ttl_ms]
        for channel, data in messages:
            keys += self._keys(channel)
            args += [new_epoch(), self._pubsub_name(channel), data]
        with _unavailable("publish"):
            reply = await self._publish(keys=keys, args=args)
        return [Event(channel, reply[2 * i].decode(), int(reply[2 * i + 1]), data)
                for i, (channel, data) in enumerate(messages)]

    async def position(self, channel: str) -> tuple[str, int]:
        with _unavailable("position"):
            epoch, offset = await self._position(keys=self._keys(channel), args=[new_epoch(), self._history_ttl_ms])
        return epoch.decode(), int(offset)

    async def history(self, channel: str, epoch: str, after: int) -> list[Event] | None:
        meta, stream = self._keys(channel)
        with _unavailable("history"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hmget(meta, "epoch", "offset")
                pipe.xrange(stream, f"{max(after, 0) + 1}-0", "+")
                (current, offset), entries = await pipe.execute()
        if current is None or current.decode() != epoch:
            return None
        events = [Event(channel, epoch, int(eid.split(b"-")[0]), fields[b"p"]) for eid, fields in entries]
        return events if _complete(events, after, int(offset)) else None

    async def subscribe(self, channel: str, listener: Listener) -> None:
        name = self._pubsub_name(channel)
        sub = self._subs.get(name)
        if sub is None:
            sub = self._subs[name] = _Subscription()
            sub.fanout.add(listener)
            await self._send_subscribe(name, sub)
        else:
            sub.fanout.add(listener)
        await self._confirmed(name, sub, listener)

    async def unsubscribe(self, channel: str, listener: Listener) -> None:
        name = self._pubsub_name(channel)
        sub = self._subs.get(name)
        if sub is not None:
            await self._leave(name, sub, listener)

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        for sub in self._subs.values():
            sub.fanout.close()
        self._subs.clear()
        await self._pubsub.aclose()

    # --- subscribing
    # SUBSCRIBE/UNSUBSCRIBE go out under one lock, so Redis applies them in the order our state changed.

    async def _send_subscribe(self, name: bytes, sub: _Subscription) -> None:
        waiters = self._confirming.setdefault(name, deque())
        waiters.append(sub.ready)
        try:
            async with self._send_lock:
                with _unavailable("subscribe"):
                    await self._pubsub.subscribe(name)
        except Unavailable as exc:
            waiters.remove(sub.ready)
            self._forget(name, sub)
            sub.ready.set_exception(exc)  # also fails concurrent subscribers waiting on this channel
            return
        self._start_reader()

    async def _confirmed(self, name: bytes, sub: _Subscription, listener: Listener) -> None:
        """Return once Redis delivers the channel to us, so a history() read after it leaves no gap."""
        try:
            await asyncio.wait_for(asyncio.shield(sub.ready), SUBSCRIBE_TIMEOUT_S)
        except TimeoutError as exc:
            await self._leave(name, sub, listener)
            raise Unavailable(f"event bus: subscribe {name.decode()}: not confirmed") from exc

    async def _leave(self, name: bytes, sub: _Subscription, listener: Listener) -> None:
        sub.fanout.remove(listener)
        if sub.fanout or self._subs.get(name) is not sub:
            return
        del self._subs[name]
        # Best effort: if it fails, the channel's frames still arrive and _dispatch drops them.
        with contextlib.suppress(RedisConnectionError, RedisTimeoutError):
            async with self._send_lock:
                await self._pubsub.unsubscribe(name)

    def _forget(self, name: bytes, sub: _Subscription) -> None:
        if self._subs.get(name) is sub:
            del self._subs[name]
        sub.fanout.close()

    # --- reading

    def _start_reader(self) -> None:
        if self._reader is None or self._reader.done():
            self._reader = asyncio.get_running_loop().create_task(self._read_forever())

    async def _read_forever(self) -> None:
        delay = BACKOFF_START_S
        while True:
            try:
                # redis-py reconnects this connection and resubscribes its channels on the next read.
                message = await self._pubsub.get_message(timeout=None)
            except (RedisConnectionError, RedisTimeoutError, OSError) as exc:
                log.warning("event bus: pub/sub connection lost (%s); retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, BACKOFF_CAP_S)
                continue
            delay = BACKOFF_START_S
            if message is not None:
                self._handle(message)

    def _handle(self, message: dict) -> None:
        kind, name = message["type"], message["channel"]
        if kind == "subscribe":
            self._confirm(name)
        elif kind == "message":
            try:
                self._dispatch(name, message["data"])
            except Exception:  # a bad frame must not stop the reader for every other channel
                log.exception("event bus: undeliverable frame on %r", name)

    def _confirm(self, name: bytes) -> None:
        # Extra confirmations (resubscribes after a reconnect) find no waiter and are ignored.
        waiters = self._confirming.get(name)
        if waiters:
            ready = waiters.popleft()
            if not ready.done():
                ready.set_result(None)
        if not waiters:
            self._confirming.pop(name, None)

    def _dispatch(self, name: bytes, frame: bytes) -> None:
        sub = self._subs.get(name)
        if sub is None:
            return
        epoch, offset, payload = frame.split(b"\n", 2)
        sub.fanout.deliver(Event(self._channel_of(name), epoch.decode(), int(offset), payload))


def _complete(events: list[Event], after: int, offset: int) -> bool:
    """True when `events` are exactly offsets after+1..offset: nothing trimmed, evicted or ahead."""
    if after < 0 or after > offset:
        return False
    return len(events) == offset - after and (not events or events[0].offset == after + 1)
