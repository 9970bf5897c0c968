"""The embedded leaderboard index: one SortedList of sort keys per board, O(log n) rank, page and around.

A sort key is (-score, reached_seq, user_id) on `desc` boards and (score, reached_seq, user_id) on `asc`
boards, so plain tuple order is rank order and the score is recoverable from the key.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable

from sortedcontainers import SortedList

from . import Entry, Ranked

SortKey = tuple[int, int, int]

# Building a big board yields to the event loop this often, so readers keep being served.
_YIELD_EVERY = 10_000


def sort_key(order: str, entry: Entry) -> SortKey:
    if order == "desc":
        return (-entry.score, entry.reached_seq, entry.user_id)
    if order == "asc":
        return (entry.score, entry.reached_seq, entry.user_id)
    raise ValueError(f"order must be 'asc' or 'desc', not {order!r}")


def window(index: int, radius: int, total: int) -> tuple[int, int]:
    """[start, stop) of up to 2*radius+1 positions around `index`, shifted inward at either end."""
    width = min(2 * radius + 1, total)
    start = max(0, min(index - radius, total - width))
    return start, start + width


class _Board:
    __slots__ = ("order", "keys", "by_user", "names")

    def __init__(self, order: str) -> None:
        sort_key(order, Entry(0, 0, 0))  # validates the order once per board
        self.order = order
        self.keys: SortedList = SortedList()
        self.by_user: dict[int, SortKey] = {}
        self.names: dict[int, str] = {}

    def put(self, entry: Entry) -> int | None:
        """Insert or move the user; returns the 1-based rank they held before, or None.

        An entry older (lower reached_seq) than the one held arrived late and is ignored."""
        held = self.by_user.get(entry.user_id)
        if held is not None and held[1] > entry.reached_seq:
            return self.keys.index(held) + 1
        previous = self.pop(entry.user_id)
        key = sort_key(self.order, entry)
        self.keys.add(key)
        self.by_user[entry.user_id] = key
        if entry.username or entry.user_id not in self.names:
            # An empty username means "not known here", not "renamed to nothing".
            self.names[entry.user_id] = entry.username
        return previous

    def pop(self, user_id: int) -> int | None:
        key = self.by_user.pop(user_id, None)
        if key is None:
            return None
        position = self.keys.index(key)
        del self.keys[position]
        return position + 1

    def position(self, user_id: int) -> int | None:
        key = self.by_user.get(user_id)
        return None if key is None else self.keys.bisect_left(key)

    def ranked(self, start: int, stop: int) -> list[Ranked]:
        sign = -1 if self.order == "desc" else 1
        return [
            Ranked(rank, key[2], sign * key[0], self.names.get(key[2], ""))
            for rank, key in enumerate(self.keys.islice(start, stop), start + 1)
        ]


class MemoryIndex:
    """The Index contract in one process's memory. A board's order is fixed when it is first written."""

    def __init__(self) -> None:
        self._boards: dict[str, _Board] = {}

    def _board(self, key: str, order: str) -> _Board:
        board = self._boards.get(key)
        if board is None:
            board = self._boards[key] = _Board(order)
        elif board.order != order:
            raise ValueError(f"board {key!r} is {board.order}, not {order}")
        return board

    async def apply(self, key: str, order: str, entry: Entry) -> tuple[int, int | None, int]:
        board = self._board(key, order)
        previous = board.put(entry)
        return board.position(entry.user_id) + 1, previous, len(board.keys)

    async def apply_many(self, key: str, order: str, entries: list[Entry]) -> None:
        board = self._board(key, order)
        for entry in entries:
            board.put(entry)

    async def rank(self, key: str, order: str, user_id: int) -> tuple[int, int] | None:
        board = self._boards.get(key)
        position = None if board is None else board.position(user_id)
        if position is None:
            return None
        return position + 1, board.ranked(position, position + 1)[0].score

    async def page(self, key: str, order: str, offset: int, limit: int) -> list[Ranked]:
        if offset < 0:
            raise ValueError("offset must be >= 0")
        board = self._boards.get(key)
        if board is None or limit <= 0:
            return []
        return board.ranked(offset, offset + limit)

    async def around(self, key: str, order: str, user_id: int, radius: int) -> list[Ranked]:
        board = self._boards.get(key)
        position = None if board is None else board.position(user_id)
        if position is None:
            return []
        return board.ranked(*window(position, max(0, radius), len(board.keys)))

    async def total(self, key: str) -> int:
        board = self._boards.get(key)
        return 0 if board is None else len(board.keys)

    async def remove(self, key: str, user_id: int) -> None:
        board = self._boards.get(key)
        if board is not None:
            board.pop(user_id)
            board.names.pop(user_id, None)

    async def rebuild(self, key: str, order: str, entries: Iterable[Entry]) -> int:
        # The new board stays private until the final assignment, so readers see old or new, never half.
        board = _Board(order)
        keys: list[SortKey] = []
        for count, entry in enumerate(entries, 1):
            _collect(board, keys, entry)
            if count % _YIELD_EVERY == 0:
                await asyncio.sleep(0)
        board.keys = SortedList(keys)
        self._boards[key] = board
        return len(keys)

    async def close(self) -> None:
        self._boards.clear()


def _collect(board: _Board, keys: list[SortKey], entry: Entry) -> None:
    if entry.user_id in board.by_user:
        # Two rows for one user means the caller's query is wrong; guessing which wins would hide that.
        raise ValueError(f"user {entry.user_id} appears twice in a rebuild")
    key = sort_key(board.order, entry)
    keys.append(key)
    board.by_user[entry.user_id] = key
    board.names[entry.user_id] = entry.username
