"""Time a full leaderboard rebuild into each index: `python -m bench.rebuild --entries 1000000`.

A rebuild runs at start-up and after a period rolls over, so its speed bounds how long a fresh process
serves an empty board. The entries are generated before timing; only the rebuild itself is measured.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from urllib.parse import urlparse

import redis.asyncio

from scoreboard.leaderboard import Entry, Index
from scoreboard.leaderboard.memory import MemoryIndex
from scoreboard.leaderboard.redis import RedisIndex

LOOPBACK = {"127.0.0.1", "localhost", "::1"}
TARGET_S = 20.0
BOARD = "bench:all"


def make_entries(count: int, seed: int = 7) -> list[Entry]:
    # Scores from a narrow range so most of the ordering work is tie-breaking, as on real boards.
    rng = random.Random(seed)
    seqs = rng.sample(range(1, 10 * count + 1), count)
    return [Entry(u, rng.randint(0, 10_000), seqs[u - 1], f"player{u}") for u in range(1, count + 1)]


async def timed(index: Index, entries: list[Entry]) -> float:
    started = time.perf_counter()
    count = await index.rebuild(BOARD, "desc", entries)
    elapsed = time.perf_counter() - started
    assert count == len(entries) == await index.total(BOARD), "rebuild lost entries"
    return elapsed


async def bench_memory(entries: list[Entry], _url: str) -> float:
    return await timed(MemoryIndex(), entries)


async def bench_redis(entries: list[Entry], url: str) -> float:
    client = redis.asyncio.Redis.from_url(url)
    index = RedisIndex(client, f"sbbench:{uuid.uuid4().hex[:12]}:")
    try:
        return await timed(index, entries)
    finally:
        await client.delete(*index.keys(BOARD))
        await client.aclose()


def report(name: str, count: int, seconds: float) -> None:
    verdict = "ok" if seconds < TARGET_S else f"SLOW (target {TARGET_S:.0f} s)"
    print(f"{name:<8} {count:>10,} entries  {seconds:8.2f} s  {count / seconds:>12,.0f} entries/s  {verdict}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--redis-url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--only", choices=["memory", "redis"])
    args = parser.parse_args(argv)
    if urlparse(args.redis_url).hostname not in LOOPBACK:
        parser.error("--redis-url must point at a loopback address")
    entries = make_entries(args.entries)
    runs: dict[str, Callable[[list[Entry], str], Awaitable[float]]] = {
        "memory": bench_memory,
        "redis": bench_redis,
    }
    for name, run in runs.items():
        if args.only in (None, name):
            report(name, len(entries), asyncio.run(run(entries, args.redis_url)))


if __name__ == "__main__":
    main()
