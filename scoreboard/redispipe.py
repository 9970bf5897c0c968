"""A redis.asyncio client that sends the commands issued in one event-loop turn as one pipeline.

Each command through redis-py costs its caller about 0.1 ms of CPU (a pooled connection taken and given
back, a send, a parse, the futures between them); a submission makes several, and many submissions are in
flight at once. Commands issued by any coroutine before the loop's next turn go out together on one
connection, in issue order, and each caller gets its own reply or its own error, as if it had sent the
command alone: a script's NOSCRIPT, a wrong type, a connection error for all of that batch. Blocking and
subscribing commands go out alone. Transactions (`pipeline(transaction=True)`) are unchanged.
"""

from __future__ import annotations

import asyncio
from typing import Any

import redis.asyncio
from redis.exceptions import DataError

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
        task = asyncio.ensure_future(self._send_one(batch[0]) if len(batch) == 1 else self._send_many(batch))
        self._flushes.add(task)
        task.add_done_callback(self._flushes.discard)

    async def _send_one(self, queued: _Queued) -> None:
        args, options, future = queued
        try:
            result = await super().execute_command(*args, **options)
        except BaseException as exc:  # handed to the caller, who sees it as if it had sent the command
            _settle(future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
        else:
            _settle(future, result)

    async def _send_many(self, batch: list[_Queued]) -> None:
        pipe = self.pipeline(transaction=False)
        for args, options, _ in batch:
            pipe.execute_command(*args, **options)
        try:
            results = await pipe.execute(raise_on_error=False)
        except BaseException as exc:
            for _, _, future in batch:
                _settle(future, exc)
            if isinstance(exc, asyncio.CancelledError):
                raise
            return
        for (_, _, future), result in zip(batch, results, strict=True):
            _settle(future, result)


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
