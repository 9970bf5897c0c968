"""A redis.asyncio client that sends the commands issued in one event-loop turn as one pipeline.

Each command through redis-py costs its caller about 0.1 ms of CPU (a pooled connection taken and given
back, a send, a parse, the futures between them); a submission makes several, and many submissions are in
flight at once. Commands issued by any coroutine before the loop's next turn go out together on one
connection, in issue order, and each caller gets its own reply or its own error, as if it had sent the
command alone: a script's NOSCRIPT, a wrong type, a connection error for all of that batch. Blocking and
subscribing commands go out alone. Transactions (`pipeline(transaction=True)`) are unchanged.

A batch is written and its replies read directly on a pooled connection (`Redis.parse_response` applies
redis-py's reply callbacks), under one deadline of the client's socket_timeout for the whole batch instead
of a timer per reply: redis-py's Pipeline spent about as much of the event loop as the commands' own work.
A batch whose connection fails before its first reply arrives is sent once more on a fresh connection (as
redis-py's own retry does); once a reply has been read nothing is sent again.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import DataError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

try:  # redis-py parses replies with hiredis when it is installed, but packs asyncio commands in Python
    import hiredis
except ImportError:  # pragma: no cover - hiredis is a dependency; without it commands are packed by redis-py
    hiredis = None

ALONE = frozenset({"BLPOP", "BRPOP", "BLMOVE", "BRPOPLPUSH", "BZPOPMIN", "BZPOPMAX", "BLMPOP", "BZMPOP", "XREAD",
                   "XREADGROUP", "WAIT", "WAITAOF", "SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"})

_Queued = tuple[tuple, dict, asyncio.Future]


class AutoPipelineRedis(redis.asyncio.Redis):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        pool = self.connection_pool
        if hiredis is not None and not issubclass(pool.connection_class, _PackedByHiredis):
            pool.connection_class = type(f"Hiredis{pool.connection_class.__name__}",
                                         (_PackedByHiredis, pool.connection_class), {})
        self._queued: list[_Queued] = []
        self._flush_scheduled = False
        self._flushes: set[asyncio.Task] = set()

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        if str(args[0]).upper() in ALONE:
            return await super().execute_command(*args, **options)
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._queued.append((args, options, future))
        if not self._flush_scheduled:
            self._flush_scheduled = True
            loop.call_soon(self._flush)
        return await future

    def _flush(self) -> None:
        self._flush_scheduled = False
        batch, self._queued = self._queued, []
        task = asyncio.ensure_future(self._send(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[_Queued]) -> None:
        pool = self.connection_pool
        try:
            connection = await pool.get_connection()
        except BaseException as exc:
            _settle_all(batch, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        deadline, connection.socket_timeout = connection.socket_timeout, None  # one deadline, not one per reply
        try:
            async with asyncio.timeout(deadline):
                await self._exchange(connection, batch)
        except BaseException as exc:
            await connection.disconnect(nowait=True)  # replies may be left unread on it
            _settle_all(batch, RedisTimeoutError("redis did not answer in time")
                        if isinstance(exc, TimeoutError) else exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        finally:
            connection.socket_timeout = deadline
            await pool.release(connection)

    async def _exchange(self, connection: Any, batch: list[_Queued]) -> None:
        packed = connection.pack_commands([args for args, _, _ in batch])
        try:
            await connection.send_packed_command(packed)
            _settle(batch[0][2], await self._reply(connection, batch[0]))
        except (RedisConnectionError, OSError):
            # Lost before any reply (most often a connection Redis closed while it sat in the pool): sent
            # once more on a fresh connection, as redis-py's own retry would.
            await connection.disconnect(nowait=True)
            await connection.send_packed_command(packed)
            _settle(batch[0][2], await self._reply(connection, batch[0]))
        for queued in batch[1:]:
            _settle(queued[2], await self._reply(connection, queued))

    async def _reply(self, connection: Any, queued: _Queued) -> Any:
        args, options, _ = queued
        try:
            return await self.parse_response(connection, args[0], **options)
        except ResponseError as exc:  # this command's own error; the connection is fine
            return exc


def _settle_all(batch: list[_Queued], outcome: BaseException) -> None:
    for _, _, future in batch:
        _settle(future, outcome)


def _settle(future: asyncio.Future, outcome: Any) -> None:
    if future.done():  # the caller was cancelled meanwhile
        return
    if isinstance(outcome, asyncio.CancelledError):
        future.cancel()
    elif isinstance(outcome, BaseException):
        future.set_exception(outcome)
    else:
        future.set_result(outcome)


class _PackedByHiredis:
    """A connection mixin packing commands with hiredis (C), as redis-py's synchronous client does:
    packing in Python was about a tenth of the event loop's time on the submission path."""

    def pack_command(self, *args: Any) -> list[bytes]:
        if isinstance(args[0], str):  # 'CONFIG GET' and the like go out as separate words
            args = (*args[0].encode().split(), *args[1:])
        elif b" " in args[0]:
            args = (*args[0].split(), *args[1:])
        try:
            return [hiredis.pack_command(args)]
        except TypeError:
            pass
        args = tuple(bytes(arg) if isinstance(arg, (bytearray, memoryview)) else arg for arg in args)
        try:
            return [hiredis.pack_command(args)]
        except TypeError as exc:
            raise DataError(str(exc)) from exc
