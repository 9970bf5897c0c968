"""The event bus: publish to a channel, subscribe to channels, and replay a channel's recent history.

Every channel has a stream identified by an `epoch` (a string that changes when history is lost, e.g.
when the bus restarts) and offsets that rise by one per event, starting at 1. Two implementations:
`local.LocalBus` (one process; a bounded ring per channel) and `redis.RedisBus` (offset assignment,
history append and publish in one Lua script, so any process can serve a resubscribe).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from typing import NamedTuple, Protocol


class Event(NamedTuple):
    channel: str
    epoch: str
    offset: int
    payload: bytes  # serialised once by the publisher; the same bytes reach every subscriber


Listener = Callable[[Event], Awaitable[None] | None]


class Bus(Protocol):
    # Whether other processes publish on this bus too (False: every event was published right here).
    shared: bool

    async def publish(self, channel: str, payload: bytes) -> Event:
        """Append to the channel's history and deliver to every subscriber on every process."""

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Event]:
        """`publish` of each (channel, payload) in turn, as one step: one round trip on a shared bus."""

    async def subscribe(self, channel: str, listener: Listener) -> None:
        """Deliver this process's share of the channel to `listener`, in offset order."""

    async def unsubscribe(self, channel: str, listener: Listener) -> None: ...

    async def position(self, channel: str) -> tuple[str, int]:
        """(epoch, last offset) of the channel; offset 0 when nothing was published yet."""

    async def history(self, channel: str, epoch: str, after: int) -> list[Event] | None:
        """Events with offset > `after`, in order, or None when they cannot all be replayed
        (other epoch, or `after` older than the history kept)."""

    async def close(self) -> None: ...
