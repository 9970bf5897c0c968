"""The leaderboard index: a cache of ranks rebuilt from the database, never the truth.

One contract, two implementations: `memory.MemoryIndex` (sortedcontainers, O(log n)) and
`redis.RedisIndex` (a sorted set plus a hash kept consistent by Lua). tests/test_leaderboard_contract.py
checks that both agree with a plain SQL `ORDER BY score, reached_seq` on random data with many ties.

Ordering: for `desc` boards higher scores rank first, for `asc` lower first; equal scores are ordered by
`reached_seq` ascending (who reached that score first; the database assigns it in commit order, unique).
Ranks are 1-based and unique. `key` names a board in one period, e.g. "global:all" or "daily:2026-11-27".
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple, Protocol


class Entry(NamedTuple):
    user_id: int
    score: int
    reached_seq: int
    username: str = ""


class Ranked(NamedTuple):
    rank: int
    user_id: int
    score: int
    username: str


class Index(Protocol):
    async def apply(self, key: str, order: str, entry: Entry) -> tuple[int, int | None, int]:
        """Put `entry` (the user's new score, as committed) in the board.
        Returns (rank, previous_rank or None, total)."""

    async def apply_many(self, key: str, order: str, entries: list[Entry]) -> None:
        """Put many entries at once (one round trip); used after a group commit."""

    async def rank(self, key: str, order: str, user_id: int) -> tuple[int, int] | None:
        """(rank, score) of the user, or None."""

    async def page(self, key: str, order: str, offset: int, limit: int) -> list[Ranked]: ...

    async def around(self, key: str, order: str, user_id: int, radius: int) -> list[Ranked]:
        """Up to 2*radius+1 entries with the user in the middle where possible; [] if the user is absent."""

    async def total(self, key: str) -> int: ...

    async def remove(self, key: str, user_id: int) -> None: ...

    async def rebuild(self, key: str, order: str, entries: Iterable[Entry]) -> int:
        """Replace the board's content atomically (readers see old or new, never half). Returns the count."""

    async def close(self) -> None: ...
