"""The in-process bus: one epoch per bus instance, one offset counter and bounded ring per channel.

Listener call semantics (RedisBus delivers through the same `Fanout`, so they hold for both):

- A listener receives the events of a channel one at a time, in offset order, each exactly once while
  it is subscribed. Subscribing the same listener twice to a channel is a no-op.
- A plain function runs inline: `LocalBus.publish` has called it before it returns (RedisBus calls it
  from its reader task). It must not block.
- A coroutine function (anything returning an awaitable) is awaited in a background task owned by that
  listener; events that arrive meanwhile wait in that listener's unbounded backlog. So publish never
  waits on a slow listener, and the listener itself must keep up (conflate, or cut off slow clients).
- An exception from a listener is logged and dropped; delivery to it and to the others continues.
- After `unsubscribe` the listener gets nothing more: its backlog is dropped (a call already running
  finishes). A publish made from inside a listener is delivered after the current event reached every
  listener of the channel, so order holds for re-entrant publishes too.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import uuid
from collections import deque
from collections.abc import Awaitable
from dataclasses import dataclass, field
from itertools import islice

from . import Event, Listener

log = logging.getLogger(__name__)


def new_epoch() -> str:
    return uuid.uuid4().hex[:12]


class _Mailbox:
    """One listener's delivery: inline while it keeps up, a backlog and a task while it is busy."""

    def __init__(self, listener: Listener) -> None:
        self.listener = listener
        self.backlog: deque[Event] = deque()
        self.task: asyncio.Task | None = None
        self.closed = False

    def deliver(self, event: Event) -> None:
        if self.closed:
            return
        if self.task is not None:  # an earlier event is still being awaited: keep the order
            self.backlog.append(event)
            return
        pending = self._call(event)
        if pending is not None:
            self.task = asyncio.ensure_future(self._drain(pending))

    def close(self, cancel: bool = False) -> None:
        self.closed = True
        self.backlog.clear()
        if cancel and self.task is not None:
            self.task.cancel()

    def _call(self, event: Event) -> Awaitable[None] | None:
        try:
            result = self.listener(event)
        except Exception:
            log.exception("bus listener %r failed on %s@%d", self.listener, event.channel, event.offset)
            return None
        return result if inspect.isawaitable(result) else None

    async def _drain(self, pending: Awaitable[None] | None) -> None:
        try:
            while pending is not None:
                await self._settle(pending)
                pending = None
                while pending is None and self.backlog and not self.closed:
                    pending = self._call(self.backlog.popleft())
        finally:
            self.task = None

    async def _settle(self, pending: Awaitable[None]) -> None:
        try:
            await pending
        except Exception:
            log.exception("bus listener %r failed", self.listener)


class Fanout:
    """The listeners of one channel in this process."""

    def __init__(self) -> None:
        self._mailboxes: dict[Listener, _Mailbox] = {}
        self._queue: deque[Event] = deque()
        self._dispatching = False

    def __bool__(self) -> bool:
        return bool(self._mailboxes)

    def add(self, listener: Listener) -> None:
        if listener not in self._mailboxes:
            self._mailboxes[listener] = _Mailbox(listener)

    def remove(self, listener: Listener) -> None:
        mailbox = self._mailboxes.pop(listener, None)
        if mailbox is not None:
            mailbox.close()

    def deliver(self, event: Event) -> None:
        self._queue.append(event)
        if self._dispatching:  # re-entrant publish from a listener: the outer loop delivers it next
            return
        self._dispatching = True
        try:
            while self._queue:
                queued = self._queue.popleft()
                # A copy, because a listener may unsubscribe (itself or others) while we iterate.
                for mailbox in list(self._mailboxes.values()):
                    mailbox.deliver(queued)
        finally:
            self._dispatching = False

    def close(self) -> None:
        for mailbox in self._mailboxes.values():
            mailbox.close(cancel=True)
        self._mailboxes.clear()


@dataclass
class _Channel:
    ring: deque[Event]
    offset: int = 0
    fanout: Fanout = field(default_factory=Fanout)


class LocalBus:
    """Bus for a single process. History lives in memory, so a new bus means a new epoch."""

    shared = False

    def __init__(self, history_size: int = 1000) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self.epoch = new_epoch()
        self._history_size = history_size
        self._channels: dict[str, _Channel] = {}

    def _channel(self, name: str) -> _Channel:
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(deque(maxlen=self._history_size))
        return channel

    async def publish(self, channel: str, payload: bytes) -> Event:
        state = self._channel(channel)
        state.offset += 1
        event = Event(channel, self.epoch, state.offset, bytes(payload))
        state.ring.append(event)
        state.fanout.deliver(event)
        return event

    async def subscribe(self, channel: str, listener: Listener) -> None:
        self._channel(channel).fanout.add(listener)

    async def unsubscribe(self, channel: str, listener: Listener) -> None:
        state = self._channels.get(channel)
        if state is not None:
            state.fanout.remove(listener)

    async def position(self, channel: str) -> tuple[str, int]:
        state = self._channels.get(channel)
        return self.epoch, state.offset if state else 0

    async def history(self, channel: str, epoch: str, after: int) -> list[Event] | None:
        if epoch != self.epoch:
            return None
        state = self._channels.get(channel)
        ring, offset = (state.ring, state.offset) if state else ((), 0)
        missed = offset - after
        # after > offset: a position this epoch never reached; missed > len: already dropped from the ring.
        if missed < 0 or missed > len(ring):
            return None
        return list(islice(ring, len(ring) - missed, None))

    async def close(self) -> None:
        for state in self._channels.values():
            state.fanout.close()
