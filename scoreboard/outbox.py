"""An outbox: what is queued while one send is in flight goes out together in the next send.

Under load that is one call per loop turn (or per round trip) instead of one per item: the events of
every action acknowledged in a turn in one bus call, their results in one write job, one board change
notice. A send never raises into the code that queued: a failed one is logged, naming what it lost.
`flush` returns once everything queued before it has been sent or given up on (shutdown).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

from .errors import ScoreboardError

log = logging.getLogger("scoreboard.outbox")
T = TypeVar("T")


class Outbox(Generic[T]):
    def __init__(self, send: Callable[[list[T]], Awaitable[object]], describe: Callable[[list[T]], str]) -> None:
        """`describe` names a batch of items in the log line of a failed send."""
        self._send, self._describe = send, describe
        self._queued: list[T] = []
        self._sending: asyncio.Future | None = None

    def put(self, item: T) -> None:
        self._queued.append(item)
        if self._sending is None:
            # A task starts after the callbacks already queued: the rest of this turn's items join it.
            self._sending = asyncio.ensure_future(self._send_all())

    async def _send_all(self) -> None:
        try:
            while self._queued:
                items, self._queued = self._queued, []
                try:
                    await self._send(items)
                except ScoreboardError as exc:  # a service down: expected, and said in one line
                    log.warning("%s not sent: %s", self._describe(items), exc)
                except Exception:
                    log.exception("%s not sent", self._describe(items))
        finally:
            self._sending = None

    async def flush(self) -> None:
        while self._sending is not None:
            await self._sending
