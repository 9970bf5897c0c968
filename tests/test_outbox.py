"""Outbox: what is queued while one send is in flight goes out together in the next send; a failed send
is logged, never raised; flush() returns once everything queued before it went out."""

from __future__ import annotations

import asyncio
import logging

import pytest

from scoreboard.errors import Unavailable
from scoreboard.outbox import Outbox


class Recipient:
    """Records each send; a send can be held open until released."""

    def __init__(self) -> None:
        self.sends: list[list[int]] = []
        self.started = asyncio.Event()
        self.release = asyncio.Event()
        self.release.set()
        self.failures: list[Exception] = []

    async def send(self, items: list[int]) -> None:
        self.sends.append(list(items))
        self.started.set()
        await self.release.wait()
        if self.failures:
            raise self.failures.pop(0)


def _named(items: list[int]) -> str:
    return "items " + ", ".join(map(str, items))


def test_items_queued_in_one_loop_turn_go_out_in_one_send():
    async def scenario() -> list[list[int]]:
        recipient = Recipient()
        outbox = Outbox(recipient.send, _named)
        for item in range(5):
            outbox.put(item)
        await outbox.flush()
        return recipient.sends

    assert asyncio.run(scenario()) == [[0, 1, 2, 3, 4]]


def test_items_queued_while_a_send_is_in_flight_go_out_together_in_the_next():
    async def scenario() -> list[list[int]]:
        recipient = Recipient()
        recipient.release.clear()
        outbox = Outbox(recipient.send, _named)
        outbox.put(0)
        await recipient.started.wait()
        for item in (1, 2, 3):
            outbox.put(item)
        recipient.release.set()
        await outbox.flush()
        return recipient.sends

    assert asyncio.run(scenario()) == [[0], [1, 2, 3]]


@pytest.mark.parametrize("failure", [Unavailable("bus down"), RuntimeError("a bug")])
def test_a_failed_send_is_logged_by_name_and_the_next_items_still_go_out(failure, caplog):
    async def scenario() -> list[list[int]]:
        recipient = Recipient()
        recipient.failures.append(failure)
        recipient.release.clear()
        outbox = Outbox(recipient.send, _named)
        outbox.put(0)
        outbox.put(7)
        await recipient.started.wait()
        outbox.put(1)
        recipient.release.set()
        await outbox.flush()  # does not raise
        return recipient.sends

    with caplog.at_level(logging.WARNING, logger="scoreboard.outbox"):
        assert asyncio.run(scenario()) == [[0, 7], [1]]
    assert [record.getMessage().split(":")[0] for record in caplog.records] == ["items 0, 7 not sent"]


def test_flush_returns_only_once_everything_queued_before_it_was_sent():
    async def scenario() -> tuple[bool, list[list[int]]]:
        recipient = Recipient()
        recipient.release.clear()
        outbox = Outbox(recipient.send, _named)
        outbox.put(0)
        await recipient.started.wait()
        outbox.put(1)
        flushing = asyncio.ensure_future(outbox.flush())
        await asyncio.sleep(0)
        held = not flushing.done()
        recipient.release.set()
        await flushing
        return held, recipient.sends

    held, sends = asyncio.run(scenario())
    assert held
    assert sends == [[0], [1]]


def test_flush_with_nothing_queued_returns_at_once():
    async def scenario() -> None:
        await asyncio.wait_for(Outbox(Recipient().send, _named).flush(), 1)

    asyncio.run(scenario())
