"""A redis.asyncio client that sends the commands issued in one event-loop turn as one pipeline.

Each command through redis-py costs its caller about 0.1 ms of CPU (a pooled connection taken and given
back, a send, a parse, the futures between them); a submission makes several, and many submissions are in
flight at once. Commands issued by any coroutine before the loop's next turn go out together, in issue
order, and each caller gets its own reply or its own error, as if it had sent the command alone: a
script's NOSCRIPT, a wrong type, a connection error for all of that batch. Blocking and subscribing
commands go out alone through redis-py's pool, and so do transactions (`pipeline()`).

The batches share one connection (a `_Line`), sent back to back without waiting for earlier replies. One
reader task feeds whatever arrives to hiredis and hands each reply to the next caller in line, so a
reply costs a parse and a future, not a read call, a pool round and a timer of its own. redis-py's own
Connection opens the line, so TLS, AUTH, SELECT and CLIENT SETNAME follow the URL exactly as elsewhere.

Failure: a line whose oldest batch waits longer than the client's socket_timeout is dropped, and every
caller still waiting on it gets a TimeoutError. A line that breaks (Redis closed it, restarted, a reset)
fails its callers with a ConnectionError, except that a batch with no reply yet is sent once more on a
fresh line, as redis-py's own retry would (most often a connection Redis closed while it sat idle).
"""

from __future__ import annotations

import asyncio
import hashlib
import inspect
from collections import deque
from collections.abc import Sequence
from typing import Any

import hiredis
import redis.asyncio
from redis._parsers.base import BaseParser
from redis.client import EMPTY_RESPONSE, NEVER_DECODE
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

ALONE = frozenset({"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP", "XREAD",
                   "XREADGROUP", "WAIT", "WAITAOF", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"})
_INCOMPLETE = object()  # hiredis's answer while the next reply has not fully arrived
_READ_SIZE = 65536


class AutoPipelineRedis(redis.asyncio.Redis):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        settings = self.connection_pool.connection_kwargs
        if settings.get("decode_responses"):
            raise ValueError("AutoPipelineRedis hands back bytes: decode_responses is not supported")
        self._timeout: float | None = settings.get("socket_timeout")
        self._queued: list[tuple[bytes, asyncio.Future]] = []
        self._flush_scheduled = False
        self._line: _Line | None = None
        self._unsent: deque[_Batch] = deque()  # waiting for a line
        self._connecting: asyncio.Task | None = None
        self._closing: set[asyncio.Task] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        name = args[0]
        if str(name).upper() in ALONE:
            return await super().execute_command(*args, **options)
        packed = _pack(args)  # an argument Redis cannot take fails here, before anything is sent
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((packed, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await self._parsed(name, await future, options)

    def register_script(self, script: str | bytes) -> _Script:
        return _Script(self, script)

    async def aclose(self, close_connection_pool: bool | None = None) -> None:
        if self._connecting is not None:
            self._connecting.cancel()
        if self._line is not None:
            self._lost(self._line, RedisConnectionError("the client was closed"), again=False)
        if self._closing:
            await asyncio.gather(*self._closing, return_exceptions=True)
        await super().aclose(close_connection_pool)

    async def _parsed(self, name: Any, reply: Any, options: dict) -> Any:
        """The reply as redis-py's own parse_response would hand it back (its response callbacks)."""
        if isinstance(reply, ResponseError):
            if EMPTY_RESPONSE in options:
                return options[EMPTY_RESPONSE]
            raise reply
        callback = self.response_callbacks.get(name)
        if callback is None:
            return reply
        extra = {key: value for key, value in options.items() if key not in (EMPTY_RESPONSE, NEVER_DECODE, "keys")}
        value = callback(reply, **extra)
        return await value if inspect.isawaitable(value) else value

    def _flush(self) -> None:
        self._flush_scheduled = False
        queued, self._queued = self._queued, []
        batch = _Batch(b"".join(packed for packed, _ in queued), [future for _, future in queued])
        if self._line is not None:
            self._line.send(batch)
        else:
            self._unsent.append(batch)
            self._connect_soon()

    def _connect_soon(self) -> None:
        if self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        pool = self.connection_pool
        connection = pool.connection_class(**pool.connection_kwargs)
        try:
            await connection.connect()
        except BaseException as exc:
            self._connecting = None
            failed, self._unsent = self._unsent, deque()
            for batch in failed:
                batch.fail(exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        self._connecting = None
        self._line = _Line(self, connection, self._timeout)
        while self._unsent:
            self._line.send(self._unsent.popleft())

    def _lost(self, line: _Line, error: Exception, again: bool) -> None:
        """The line is gone: its waiting callers fail, or (`again`) an unanswered batch goes out once more."""
        if self._line is line:
            self._line = None
        closing = line.close()
        self._closing.add(closing)
        closing.add_done_callback(self._closing.discard)
        resend = []
        for batch in line.sent:
            if again and batch.replied == 0 and not batch.resent:
                batch.resent = True
                resend.append(batch)
            else:
                batch.fail(error)
        if resend:
            self._unsent.extendleft(reversed(resend))
            self._connect_soon()


class _Batch:
    """One loop turn's commands, packed; `replied` counts the replies handed out so far."""

    __slots__ = ("packed", "futures", "replied", "resent", "deadline")

    def __init__(self, packed: bytes, futures: list[asyncio.Future]) -> None:
        self.packed, self.futures = packed, futures
        self.replied, self.resent, self.deadline = 0, False, 0.0

    def fail(self, error: BaseException) -> None:
        for future in self.futures[self.replied:]:
            _fail(future, error)
        self.replied = len(self.futures)


class _Line:
    """One connection carrying batches back to back; replies go to the callers in the order they were sent."""

    def __init__(self, owner: AutoPipelineRedis, connection: Any, timeout: float | None) -> None:
        self.owner, self.connection, self.timeout = owner, connection, timeout
        # redis-py's Connection has opened and set up the stream; from here on only this line uses it.
        self.reader, self.writer = connection._reader, connection._writer
        self.parser = hiredis.Reader(replyError=BaseParser.parse_error, notEnoughData=_INCOMPLETE)
        self.sent: deque[_Batch] = deque()
        self.open = True
        self.loop = asyncio.get_running_loop()
        self.timer: asyncio.TimerHandle | None = None
        self.reading = asyncio.ensure_future(self._read())

    def send(self, batch: _Batch) -> None:
        self.sent.append(batch)
        self.writer.write(batch.packed)
        if self.timeout is not None:
            batch.deadline = self.loop.time() + self.timeout
            if self.timer is None:
                self.timer = self.loop.call_at(batch.deadline, self._check_deadline)

    def close(self) -> asyncio.Task:
        self.open = False
        if self.timer is not None:
            self.timer.cancel()
        return asyncio.ensure_future(self.connection.disconnect(nowait=True))

    async def _read(self) -> None:
        try:
            while True:
                data = await self.reader.read(_READ_SIZE)
                if not data:
                    raise RedisConnectionError("Redis closed the connection")
                self.parser.feed(data)
                self._hand_out()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if self.open:
                lost = exc if isinstance(exc, RedisConnectionError) else RedisConnectionError(str(exc))
                self.owner._lost(self, lost, again=isinstance(exc, (RedisConnectionError, OSError)))

    def _hand_out(self) -> None:
        while (reply := self.parser.gets()) is not _INCOMPLETE:
            batch = self.sent[0]
            future = batch.futures[batch.replied]
            if not future.done():  # an error reply is a reply too: its caller raises it (_parsed)
                future.set_result(reply)
            batch.replied += 1
            if batch.replied == len(batch.futures):
                self.sent.popleft()

    def _check_deadline(self) -> None:
        self.timer = None
        if not self.sent or not self.open:
            return
        oldest = self.sent[0].deadline
        if oldest - self.loop.time() > 0.001:
            self.timer = self.loop.call_at(oldest, self._check_deadline)
            return
        self.owner._lost(self, RedisTimeoutError("redis did not answer in time"), again=False)


class _Script:
    """`register_script`'s callable: EVALSHA, and on NOSCRIPT the script loaded and run once more."""

    def __init__(self, client: AutoPipelineRedis, script: str | bytes) -> None:
        self.client, self.script = client, script
        self.sha = hashlib.sha1(script.encode() if isinstance(script, str) else script).hexdigest()

    async def __call__(self, keys: Sequence[Any] | None = None, args: Sequence[Any] | None = None) -> Any:
        keys, args = keys or (), args or ()
        try:
            return await self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)
        except NoScriptError:
            self.sha = await self.client.execute_command("SCRIPT LOAD", self.script)
            return await self.client.execute_command("EVALSHA", self.sha, len(keys), *keys, *args)


def _fail(future: asyncio.Future, error: BaseException) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(error, asyncio.CancelledError):
        future.cancel()
    else:
        future.set_exception(error)


def _pack(args: tuple) -> bytes:
    """The command in Redis's wire format, packed by hiredis (C): in Python this was about a tenth of the
    event loop's time on the submission path."""
    words = _command_words(args[0])
    try:
        return hiredis.pack_command((*words, *args[1:]))
    except TypeError:
        pass
    args = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg for arg in args[1:])
    try:
        return hiredis.pack_command((*words, *args))
    except TypeError as exc:
        raise DataError(str(exc)) from exc


_WORDS: dict[str | bytes, tuple[bytes, ...]] = {}


def _command_words(name: str | bytes) -> tuple[bytes, ...]:
    """'CONFIG GET' and the like go out as separate words; a name is split once (the code has a few dozen)."""
    words = _WORDS.get(name)
    if words is None:
        words = tuple((name.encode() if isinstance(name, str) else bytes(name)).split())
        if len(_WORDS) < 1024:
            _WORDS[name] = words
    return words
