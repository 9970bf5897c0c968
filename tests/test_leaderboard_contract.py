"""One contract, run against every leaderboard index; the reference is a plain SQL ORDER BY in SQLite."""

from __future__ import annotations

import asyncio
import random
import socket
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import pytest
import redis.asyncio
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from scoreboard.errors import Unavailable
from scoreboard.leaderboard import Entry, Index, Ranked
from scoreboard.leaderboard.memory import MemoryIndex
from scoreboard.leaderboard.redis import RedisIndex

from conftest import require_redis

MAX_EXACT = 2**53 - 1
ORDERS = ["desc", "asc"]


@dataclass
class Harness:
    index: Index
    runner: Callable[[Awaitable], object]

    def run(self, scenario: Callable[[Index], Awaitable]) -> object:
        return self.runner(scenario(self.index))


async def _connect(url: str) -> redis.asyncio.Redis:
    # Created inside the running loop: the client's connections belong to the loop that opens them.
    return redis.asyncio.Redis.from_url(url)


async def _drop_prefix(client: redis.asyncio.Redis, prefix: str) -> None:
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        await client.delete(key)
    await client.aclose()


@pytest.fixture(params=["memory", "redis"])
def board(request, event_loop_runner, redis_prefix) -> Harness:
    if request.param == "memory":
        yield Harness(MemoryIndex(), event_loop_runner)
        return
    client = event_loop_runner(_connect(require_redis()))
    yield Harness(RedisIndex(client, redis_prefix), event_loop_runner)
    event_loop_runner(_drop_prefix(client, redis_prefix))


def rows(ranked: list[Ranked]) -> list[tuple[int, int, int, str]]:
    return [(r.rank, r.user_id, r.score, r.username) for r in ranked]


# --- the basics ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("order", ORDERS)
def test_apply_returns_rank_previous_rank_and_total(board, order):
    better, worse = (500, 100) if order == "desc" else (100, 500)

    async def scenario(index):
        assert await index.apply("b", order, Entry(1, worse, 1, "ann")) == (1, None, 1)
        assert await index.apply("b", order, Entry(2, better, 2, "bob")) == (1, None, 2)
        assert await index.rank("b", order, 1) == (2, worse)
        assert await index.apply("b", order, Entry(1, better * 2 if order == "desc" else 1, 3)) == (1, 2, 2)
        assert rows(await index.page("b", order, 0, 10))[0][1] == 1
        assert await index.total("b") == 2

    board.run(scenario)


@pytest.mark.parametrize("order", ORDERS)
def test_ties_are_ordered_by_who_reached_the_score_first(board, order):
    # user ids run against reached_seq so an accidental user_id tie-break shows up
    entries = [Entry(10, 7, 30, "c"), Entry(20, 7, 10, "a"), Entry(30, 7, 20, "b"), Entry(40, 1, 5, "z")]

    async def scenario(index):
        for entry in entries:
            await index.apply("t", order, entry)
        return rows(await index.page("t", order, 0, 10))

    ties = [(20, 7, "a"), (30, 7, "b"), (10, 7, "c")]
    last = [(40, 1, "z")]
    expected = ties + last if order == "desc" else last + ties
    assert board.run(scenario) == [(rank, *row) for rank, row in enumerate(expected, 1)]


@pytest.mark.parametrize("order", ORDERS)
def test_reapplying_moves_the_user_and_keeps_their_name(board, order):
    async def scenario(index):
        await index.apply("m", order, Entry(1, 10, 1, "ann"))
        await index.apply("m", order, Entry(2, 20, 2, "bob"))
        await index.apply("m", order, Entry(1, 30, 3))
        return rows(await index.page("m", order, 0, 10)), await index.total("m")

    ann, bob = (1, 30, "ann"), (2, 20, "bob")
    expected = [ann, bob] if order == "desc" else [bob, ann]
    assert board.run(scenario) == ([(rank, *row) for rank, row in enumerate(expected, 1)], 2)


def test_usernames_with_spaces_and_unicode_survive(board):
    name = "Zoë the 2nd ✓"

    async def scenario(index):
        await index.apply("n", "desc", Entry(1, 5, 1, name))
        await index.rebuild("n2", "asc", [Entry(2, 5, 1, name)])
        return (await index.page("n", "desc", 0, 1))[0].username, (await index.around("n2", "asc", 2, 1))[0].username

    assert board.run(scenario) == (name, name)


def test_apply_many_last_entry_for_a_user_wins(board):
    async def scenario(index):
        await index.apply_many("am", "desc", [Entry(1, 5, 1, "a"), Entry(2, 9, 2, "b"), Entry(1, 50, 3, "a")])
        await index.apply_many("am", "desc", [])
        return rows(await index.page("am", "desc", 0, 10))

    assert board.run(scenario) == [(1, 1, 50, "a"), (2, 2, 9, "b")]


def test_remove(board):
    async def scenario(index):
        await index.apply_many("r", "desc", [Entry(1, 5, 1, "a"), Entry(2, 9, 2, "b"), Entry(3, 7, 3, "c")])
        await index.remove("r", 2)
        await index.remove("r", 99)
        await index.remove("nope", 1)
        return await index.rank("r", "desc", 2), rows(await index.page("r", "desc", 0, 10))

    gone, page = board.run(scenario)
    assert gone is None
    assert page == [(1, 3, 7, "c"), (2, 1, 5, "a")]


def test_absent_user_and_board(board):
    async def scenario(index):
        await index.apply("a", "desc", Entry(1, 5, 1, "a"))
        return (
            await index.around("a", "desc", 2, 5),
            await index.rank("a", "desc", 2),
            await index.around("none", "desc", 1, 5),
            await index.page("none", "desc", 0, 10),
            await index.total("none"),
        )

    assert board.run(scenario) == ([], None, [], [], 0)


@pytest.mark.parametrize("order", ORDERS)
def test_scores_at_the_edge_of_double_precision_stay_exact(board, order):
    scores = [MAX_EXACT, MAX_EXACT - 1, -MAX_EXACT, -MAX_EXACT + 1, 0]

    async def scenario(index):
        for user_id, score in enumerate(scores, 1):
            await index.apply("x", order, Entry(user_id, score, user_id, f"u{user_id}"))
        ranks = [await index.rank("x", order, user_id) for user_id in range(1, 6)]
        return ranks, [r.score for r in await index.page("x", order, 0, 10)]

    ranks, page = board.run(scenario)
    expected = sorted(scores, reverse=order == "desc")
    assert page == expected
    assert ranks == [(expected.index(score) + 1, score) for score in scores]


def test_rebuild_replaces_the_board(board):
    async def scenario(index):
        await index.apply_many("rb", "desc", [Entry(1, 5, 1, "a"), Entry(2, 9, 2, "b")])
        count = await index.rebuild("rb", "desc", (Entry(u, u % 7, u, f"n{u}") for u in range(10, 40)))
        top = await index.page("rb", "desc", 0, 1)
        return count, await index.total("rb"), await index.rank("rb", "desc", 1), top

    count, total, gone, top = board.run(scenario)
    assert (count, total, gone) == (30, 30, None)
    assert rows(top) == [(1, 13, 6, "n13")]


def test_rebuild_with_nothing_empties_the_board(board):
    async def scenario(index):
        await index.apply("e", "asc", Entry(1, 5, 1, "a"))
        return await index.rebuild("e", "asc", []), await index.total("e"), await index.rank("e", "asc", 1)

    assert board.run(scenario) == (0, 0, None)


def test_rebuild_rejects_a_user_twice_and_keeps_the_old_board(board):
    async def scenario(index):
        await index.apply("d", "desc", Entry(1, 5, 1, "a"))
        with pytest.raises(ValueError):
            await index.rebuild("d", "desc", [Entry(2, 1, 2), Entry(2, 3, 3)])
        return await index.rank("d", "desc", 1), await index.total("d")

    assert board.run(scenario) == ((1, 5), 1)


def test_readers_see_the_old_or_the_new_board_never_half(board):
    old, new = 100, 30_000

    async def scenario(index):
        await index.rebuild("atomic", "desc", [Entry(u, u, u) for u in range(old)])
        done = asyncio.Event()
        totals: set[int] = set()
        tops: set[int] = set()

        async def reader():
            while not done.is_set():
                totals.add(await index.total("atomic"))
                tops.update(r.user_id for r in await index.page("atomic", "desc", 0, 1))
                await asyncio.sleep(0)

        task = asyncio.ensure_future(reader())
        await asyncio.sleep(0)
        await index.rebuild("atomic", "desc", [Entry(u, -u, u) for u in range(new)])
        done.set()
        await task
        return totals, tops

    totals, tops = board.run(scenario)
    assert old in totals and totals <= {old, new}
    assert 99 in tops and tops <= {99, 0}


# --- agreement with SQL -------------------------------------------------------------------------------


def _random_board(seed: int, users: int = 2000) -> tuple[list[Entry], list[Entry]]:
    """(initial rows, later updates): scores from a small range so ties are everywhere."""
    rng = random.Random(seed)
    seqs = rng.sample(range(1, 10**9), users)
    initial = [Entry(u, rng.randint(-20, 40), seqs[u - 1], f"user{u}") for u in range(1, users + 1)]
    movers = rng.sample(range(1, users + 1), users // 4)
    # Updates were committed later than every initial row, so they carry higher reached_seq values.
    later = rng.sample(range(10**9, 2 * 10**9), len(movers))
    updates = [Entry(u, rng.randint(-20, 40), later[i], f"user{u}") for i, u in enumerate(movers)]
    return initial, updates


class SqlBoard:
    """The reference: what `ORDER BY score, reached_seq` says the ranks are."""

    def __init__(self, order: str, entries: list[Entry]) -> None:
        self.db = sqlite3.connect(":memory:")
        self.db.execute("CREATE TABLE e (user_id INTEGER PRIMARY KEY, score INT, reached_seq INT, name TEXT)")
        self.db.executemany(
            "INSERT OR REPLACE INTO e VALUES (?, ?, ?, ?)",
            [(e.user_id, e.score, e.reached_seq, e.username) for e in entries],
        )
        direction = "DESC" if order == "desc" else "ASC"
        self.ranked = (
            f"SELECT ROW_NUMBER() OVER (ORDER BY score {direction}, reached_seq ASC) AS rank,"
            f" user_id, score, name FROM e"
        )

    def page(self, offset: int, limit: int) -> list[tuple]:
        sql = f"SELECT * FROM ({self.ranked}) ORDER BY rank LIMIT ? OFFSET ?"
        return self.db.execute(sql, (limit, offset)).fetchall()

    def rank(self, user_id: int) -> tuple[int, int] | None:
        sql = f"SELECT rank, score FROM ({self.ranked}) WHERE user_id = ?"
        return self.db.execute(sql, (user_id,)).fetchone()

    def ranks(self) -> dict[int, tuple[int, int]]:
        sql = f"SELECT user_id, rank, score FROM ({self.ranked})"
        return {user_id: (rank, score) for user_id, rank, score in self.db.execute(sql)}

    def around(self, user_id: int, radius: int) -> list[tuple]:
        total = self.db.execute("SELECT COUNT(*) FROM e").fetchone()[0]
        rank = self.rank(user_id)[0]
        width = min(2 * radius + 1, total)
        start = max(1, min(rank - radius, total - width + 1))
        return self.page(start - 1, width)


@pytest.mark.parametrize("order", ORDERS)
def test_agreement_with_sql_on_random_data_with_many_ties(board, order):
    initial, updates = _random_board(seed=20261127 + len(order))
    sql = SqlBoard(order, initial + updates)
    key = f"agree:{order}"

    async def load(index):
        await index.rebuild(key, order, initial)
        await index.apply_many(key, order, updates[:-50])
        for entry in updates[-50:]:
            await index.apply(key, order, entry)

    board.run(load)
    total = board.runner(board.index.total(key))
    assert total == len(initial)

    def page(offset, limit):
        return rows(board.runner(board.index.page(key, order, offset, limit)))

    for offset, limit in [(0, 10), (0, 100), (37, 25), (total - 100, 100), (total - 7, 10), (total - 1, 5)]:
        assert page(offset, limit) == sql.page(offset, limit), (offset, limit)
    assert page(total, 10) == [] and page(total + 100, 10) == []

    first, middle, last = (sql.page(at, 1)[0][1] for at in (0, total // 2, total - 1))
    for user_id in (first, middle, last):
        got = rows(board.runner(board.index.around(key, order, user_id, 5)))
        assert got == sql.around(user_id, 5), user_id
        assert user_id in [row[1] for row in got]

    async def all_ranks(index):
        return [await index.rank(key, order, user_id) for user_id in range(1, len(initial) + 1)]

    expected = sql.ranks()
    assert board.run(all_ranks) == [expected[user_id] for user_id in range(1, len(initial) + 1)]


# --- Redis specifics ----------------------------------------------------------------------------------


def test_redis_keys_start_with_the_prefix_and_rebuild_leaves_no_temporaries(event_loop_runner, redis_prefix):
    url = require_redis()

    async def scenario():
        client = await _connect(url)
        try:
            index = RedisIndex(client, redis_prefix)
            await index.apply("k", "desc", Entry(1, 1, 1, "a"))
            await index.rebuild("k", "desc", [Entry(u, u, u) for u in range(25_000)])
            keys = sorted([_text(k) async for k in client.scan_iter(match=f"{redis_prefix}*")])
            ttls = [await client.ttl(k) for k in keys]
            return keys, ttls
        finally:
            await _drop_prefix(client, redis_prefix)

    keys, ttls = event_loop_runner(scenario())
    assert keys == [f"{redis_prefix}lb:{{k}}:h", f"{redis_prefix}lb:{{k}}:z"]
    assert ttls == [-1, -1]


def test_redis_unreachable_is_unavailable(event_loop_runner):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def scenario():
        # No retries: the point is how the first failure surfaces, not redis-py's backoff.
        client = redis.asyncio.Redis(
            host="127.0.0.1", port=port, socket_connect_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        try:
            with pytest.raises(Unavailable):
                await RedisIndex(client, "sbtest:down:").apply("b", "desc", Entry(1, 1, 1))
            with pytest.raises(Unavailable):
                await RedisIndex(client, "sbtest:down:").total("b")
        finally:
            await client.aclose()

    event_loop_runner(scenario())


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value



@pytest.mark.parametrize("order", ORDERS)
def test_an_older_entry_arriving_late_does_not_replace_a_newer_one(board, order):
    async def scenario(index):
        await index.apply("late", order, Entry(1, 50, 20, "a"))
        assert await index.apply("late", order, Entry(1, 10, 7, "a")) == (1, 1, 1)
        await index.apply_many("late", order, [Entry(1, 30, 9, "a")])
        assert await index.rank("late", order, 1) == (1, 50)

    board.run(scenario)
