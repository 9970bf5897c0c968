"""Leaderboard reads (PROTOCOL "Leaderboards (read)") and the index's life: rebuilt from the database.

The database is never read per request for a rank: the index answers. It is rebuilt from the database
on start (current periods) and on first use of a past period in this process. Hot pages are cached in
this process for `cache.page_ttl_ms` and dropped as soon as the board changes: at once for this process's
own submissions, and through a notice on a shared bus for the other processes' (`share`).

A notice names the board periods changed during one loop turn, so under load one notice stands for a
whole group commit's acknowledgements rather than one message per submission reaching every process.
"""

from __future__ import annotations

import hashlib
import logging
import time
from dataclasses import dataclass

import orjson

from . import periods, wire
from .clock import Clock
from .config import BoardConfig, Config
from .errors import InvalidRequest, NotFound
from .leaderboard import Entry, Index, Ranked
from .outbox import Outbox
from .store.db import Store
from .store.models import Score, User

log = logging.getLogger("scoreboard.boards")
NOTICES_CHANNEL = "_boards"  # internal: the board periods some process changed, as a JSON list


@dataclass(frozen=True)
class Page:
    body: bytes
    etag: str


class Boards:
    def __init__(self, config: Config, store: Store, index: Index, clock: Clock) -> None:
        self.config, self.store, self.index, self.clock = config, store, index, clock
        self.loaded: set[str] = set()
        self.stale: set[str] = set()  # keys whose index missed a committed change; shared with Scores
        self.versions: dict[str, int] = {}
        self.pages: dict[tuple, tuple[int, float, Page]] = {}
        self.bus = None  # set by share(): where this process's changes are announced
        # A lost notice costs other processes a page TTL of staleness: logged, never raised.
        self.notices = Outbox(self._announce, lambda keys: f"board change notice for {', '.join(sorted(set(keys)))}")

    # ---- naming ---------------------------------------------------------------------------------

    def board(self, name: str) -> BoardConfig:
        board = self.config.board(name)
        if board is None:
            raise NotFound(f"unknown board: {name}")
        return board

    def period(self, board: BoardConfig, requested: str | None) -> str:
        if not requested:
            return periods.period_of(board.reset, self.clock.now_ms())
        if not periods.is_valid(board.reset, requested):
            raise InvalidRequest(f"period {requested!r} is not a {board.reset} period of board {board.name}",
                                 field="period")
        return requested

    # ---- index life -----------------------------------------------------------------------------

    async def rebuild_current(self) -> None:
        for board in self.config.boards:
            await self.rebuild(board, periods.period_of(board.reset, self.clock.now_ms()))

    async def rebuild(self, board: BoardConfig, period: str) -> int:
        """Replace the index of one board period with the database's rows; returns the count."""
        started = time.perf_counter()
        key = f"{board.name}:{period}"
        rows, high_water = await self.store.read(_score_rows, board.name, period, 0)
        count = await self.index.rebuild(key, board.order, rows)
        # Actions committed while we read were applied to the old index and lost by the swap: apply again.
        later, _ = await self.store.read(_score_rows, board.name, period, high_water)
        if later:
            await self.index.apply_many(key, board.order, later)
        self.loaded.add(key)
        self.changed(key)
        log.info("rebuilt %s: %d entries in %.2f s", key, count, time.perf_counter() - started)
        return count

    async def ensure_loaded(self, board: BoardConfig, period: str) -> str:
        key = f"{board.name}:{period}"
        if key in self.stale:
            await self.rebuild(board, period)
            self.stale.discard(key)
        elif key not in self.loaded:
            if await self.index.total(key) == 0:
                await self.rebuild(board, period)
            self.loaded.add(key)
        return key

    def changed(self, key: str) -> None:
        self.versions[key] = self.versions.get(key, 0) + 1

    async def on_accepted(self, event: dict) -> None:
        """Accepted in this process: drop cached pages now; the other processes hear of it in a notice."""
        key = f"{event['board']}:{event['period']}"
        self.changed(key)
        if self.bus is not None:
            self.notices.put(key)

    async def share(self, bus) -> None:
        """Announce this process's board changes on `bus`, and drop pages on the other processes' notices."""
        await bus.subscribe(NOTICES_CHANNEL, self.on_notice)
        self.bus = bus

    def on_notice(self, event) -> None:
        """Bus listener: some process (this one too) changed these board periods."""
        for key in orjson.loads(event.payload):
            self.changed(key)

    async def _announce(self, keys: list[str]) -> None:
        """One notice for the board periods changed while the previous notice was going out."""
        await self.bus.publish(NOTICES_CHANNEL, orjson.dumps(sorted(set(keys))))

    async def close(self) -> None:
        """Let the last notice go out (the other processes would keep stale pages until their TTL)."""
        await self.notices.flush()

    # ---- reads ----------------------------------------------------------------------------------

    async def listing(self) -> dict:
        boards = []
        for board in self.config.boards:
            period = self.period(board, None)
            key = await self.ensure_loaded(board, period)
            boards.append({"name": board.name, "operator": board.operator, "order": board.order,
                           "reset": board.reset, "period": period, "total": await self.index.total(key)})
        return {"boards": boards}

    async def page(self, name: str, offset: int, limit: int, period: str | None) -> Page:
        board = self.board(name)
        period = self.period(board, period)
        key = await self.ensure_loaded(board, period)
        cache_key = (key, offset, limit)
        version = self.versions.get(key, 0)
        cached = self.pages.get(cache_key)
        now = time.monotonic()
        if cached and cached[0] == version and cached[1] > now:
            return cached[2]
        entries = await self.index.page(key, board.order, offset, limit)
        page = _page(await self._body(board, period, key, entries))
        if len(self.pages) > 10_000:
            self.pages.clear()
        self.pages[cache_key] = (version, now + self.config.cache.page_ttl_ms / 1000, page)
        return page

    async def around(self, name: str, user_id: int, radius: int, period: str | None) -> Page:
        board = self.board(name)
        period = self.period(board, period)
        key = await self.ensure_loaded(board, period)
        entries = await self.index.around(key, board.order, user_id, radius)
        if not entries:
            raise NotFound(f"user {user_id} has no entry on {name} ({period})")
        return _page(await self._body(board, period, key, entries))

    async def standing(self, name: str, user_id: int, period: str | None) -> dict:
        board = self.board(name)
        period = self.period(board, period)
        key = await self.ensure_loaded(board, period)
        found = await self.index.rank(key, board.order, user_id)
        if found is None:
            raise NotFound(f"user {user_id} has no entry on {name} ({period})")
        rank, score = found
        total = await self.index.total(key)
        # Share of the board ranked at or below this user: 100 for the leader, 100/total for the last.
        percentile = round(100.0 * (total - rank + 1) / total, 2)
        return {"rank": rank, "score": score, "total": total, "percentile": percentile}

    async def standings_of(self, user_id: int) -> dict:
        """{board: {score, rank}} for every board the user is on in its current period (GET /users/me)."""
        out = {}
        for board in self.config.boards:
            key = await self.ensure_loaded(board, self.period(board, None))
            found = await self.index.rank(key, board.order, user_id)
            if found:
                out[board.name] = {"score": found[1], "rank": found[0]}
        return out

    async def _body(self, board: BoardConfig, period: str, key: str, entries: list[Ranked]) -> dict:
        return {"board": board.name, "period": period, "total": await self.index.total(key),
                "entries": [{"rank": e.rank, "user_id": e.user_id, "username": e.username, "score": e.score}
                            for e in entries]}


def _page(body: dict) -> Page:
    raw = wire.dumps(body)
    return Page(raw, '"' + hashlib.blake2b(raw, digest_size=12).hexdigest() + '"')


def _score_rows(board: str, period: str, after_seq: int) -> tuple[list[Entry], int]:
    """Every score row of a board period with reached_seq > after_seq, and the highest reached_seq seen.

    A plain cursor rather than model instances: a million rows is the case that matters here.
    """
    query = (Score.select(Score.user, Score.score, Score.reached_seq, User.username)
             .join(User).where((Score.board == board) & (Score.period == period) & (Score.reached_seq > after_seq)))
    sql, params = query.sql()
    cursor = Score._meta.database.execute_sql(sql, params)
    rows = [Entry(user_id, score, seq, username) for user_id, score, seq, username in cursor]
    return rows, max((row.reached_seq for row in rows), default=after_seq)
