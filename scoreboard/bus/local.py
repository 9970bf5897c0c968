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
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from itertools import islice

from ..ids import random_hex
from . import Event, Listener

log = logging.getLogger(__name__)


def new_epoch() -> str:
    return random_hex(48)  # RedisBus sends a candidate with every publish: no system call per id


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
    epoch: str
    ring: deque[Event]
    touched: float  # when it last published or was asked its position (monotonic seconds)
    offset: int = 0
    fanout: Fanout = field(default_factory=Fanout)


class LocalBus:
    """Bus for a single process. History lives in memory, so a new bus means new epochs.

    Each channel has its own epoch. A channel nobody here listens to that has been silent for
    `history_ttl_ms` (0 = never) is forgotten, as RedisBus forgets one: per-user channels would otherwise
    keep their history for as long as the process runs. Coming back, it starts over under a new epoch,
    so a resubscribe gets a snapshot, never offsets of the old history read as the new one's."""

    shared = False

    def __init__(self, history_size: int = 1000, history_ttl_ms: int = 0,
                 monotonic: Callable[[], float] = time.monotonic) -> None:
        if history_size < 1:
            raise ValueError("history_size must be at least 1")
        self._history_size = history_size
        self._ttl_s = history_ttl_ms / 1000
        self._monotonic = monotonic
        self._swept = monotonic()
        self._channels: dict[str, _Channel] = {}

    def _channel(self, name: str) -> _Channel:
        now = self._monotonic()
        channel = self._channels.get(name)
        if channel is None:
            channel = self._channels[name] = _Channel(new_epoch(), deque(maxlen=self._history_size), now)
        channel.touched = now
        return channel

    async def publish(self, channel: str, payload: bytes) -> Event:
        return self._publish(channel, payload)

    async def publish_many(self, messages: Sequence[tuple[str, bytes]]) -> list[Event]:
        return [self._publish(channel, payload) for channel, payload in messages]

    def _publish(self, channel: str, payload: bytes) -> Event:
        state = self._channel(channel)
        state.offset += 1
        event = Event(channel, state.epoch, state.offset, bytes(payload))
        state.ring.append(event)
        state.fanout.deliver(event)
        self._sweep(state.touched)
        return event

    async def subscribe(self, channel: str, listener: Listener) -> None:
        self._channel(channel).fanout.add(listener)

    async def unsubscribe(self, channel: str, listener: Listener) -> None:
        state = self._channels.get(channel)
        if state is not None:
            state.fanout.remove(listener)

    async def position(self, channel: str) -> tuple[str, int]:
        state = self._channel(channel)  # created, so the epoch a subscriber is given stays the channel's
        return state.epoch, state.offset

    async def history(self, channel: str, epoch: str, after: int) -> list[Event] | None:
        state = self._channels.get(channel)
        if state is None or epoch != state.epoch:
            return None
        ring, missed = state.ring, state.offset - after
        # after > offset: a position this epoch never reached; missed > len: already dropped from the ring.
        if missed < 0 or missed > len(ring):
            return None
        return list(islice(ring, len(ring) - missed, None))

    def _sweep(self, now: float) -> None:
        """Forget silent channels without listeners; at most once per tenth of the time-to-live."""
        if not self._ttl_s or now - self._swept < self._ttl_s / 10:
            return
        self._swept = now
        silent = [name for name, state in self._channels.items()
                  if not state.fanout and now - state.touched > self._ttl_s]
        for name in silent:
            del self._channels[name]

    async def close(self) -> None:
        for state in self._channels.values():
            state.fanout.close()
