"""Time the whole rebuild the server does on start: database rows -> leaderboard index.

`python -m bench.rebuild_db --entries 1000000 [--backend embedded|services|both]`

Seeds a fresh database (a temporary SQLite file, or a fresh PostgreSQL schema) with N users and N score
rows, then times `Boards.rebuild` (read every row of the board period on a database thread, load the
index atomically, apply what changed meanwhile). The baseline, measured in the same run, is the bare
index load of the same entries (`bench.rebuild`'s measurement), so the ratio shows what reading the
database adds. Target from the issue: 1M entries in under 20 s.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import random
import sqlite3
import tempfile
import time
import uuid
from pathlib import Path

import psycopg2
import redis.asyncio

from scoreboard.boards import Boards
from scoreboard.clock import Clock
from scoreboard.config import Config
from scoreboard.leaderboard import Entry
from scoreboard.leaderboard.memory import MemoryIndex
from scoreboard.leaderboard.redis import RedisIndex
from scoreboard.store import migrations
from scoreboard.store.db import Store, open_database

POSTGRES = "postgresql://postgres@127.0.0.1:5432/test"
REDIS = "redis://127.0.0.1:6379/0"
TARGET_S = 20.0


def rows(count: int, seed: int = 11) -> list[tuple[int, int, int]]:
    rng = random.Random(seed)
    seqs = rng.sample(range(1, 10 * count + 1), count)
    return [(user, rng.randint(0, 10_000), seqs[user - 1]) for user in range(1, count + 1)]


def seed_sqlite(path: Path, data: list[tuple[int, int, int]]) -> str:
    url = f"sqlite:///{path}"
    db = open_database(url)
    migrations.migrate(db)
    db.close()
    conn = sqlite3.connect(path)
    conn.executemany("INSERT INTO users (id, username, username_key, password_hash, created_at) VALUES (?,?,?,'x',0)",
                     ((u, f"player{u}", f"player{u}") for u, _, _ in data))
    conn.executemany("INSERT INTO scores VALUES ('global', 'all', ?, ?, ?, 0)", data)
    conn.commit()
    conn.close()
    return url


def seed_postgres(data: list[tuple[int, int, int]]) -> tuple[str, str]:
    schema = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg2.connect(POSTGRES) as conn, conn.cursor() as cur:
        cur.execute(f"CREATE SCHEMA {schema}")
    url = f"{POSTGRES}?options=-csearch_path%3D{schema}"
    db = open_database(url)
    migrations.migrate(db)
    db.close()
    with psycopg2.connect(POSTGRES, options=f"-csearch_path={schema}") as conn, conn.cursor() as cur:
        users = io.StringIO("".join(f"{u}\tplayer{u}\tplayer{u}\tx\t0\n" for u, _, _ in data))
        cur.copy_from(users, "users", columns=("id", "username", "username_key", "password_hash", "created_at"))
        scores = io.StringIO("".join(f"global\tall\t{u}\t{s}\t{q}\t0\n" for u, s, q in data))
        cur.copy_from(scores, "scores")
    return url, schema


async def time_rebuild(url: str, index) -> float:
    store = Store(open_database(url))
    boards = Boards(Config(), store, index, Clock())
    try:
        started = time.perf_counter()
        count = await boards.rebuild(Config().boards[0], "all")
        elapsed = time.perf_counter() - started
        assert count == await index.total("global:all")
        return elapsed
    finally:
        store.close()


async def time_bare(index, data: list[tuple[int, int, int]]) -> float:
    entries = [Entry(u, s, q, f"player{u}") for u, s, q in data]
    started = time.perf_counter()
    await index.rebuild("bare:all", "desc", entries)
    return time.perf_counter() - started


async def run_embedded(data, workdir: Path) -> tuple[float, float]:
    url = seed_sqlite(workdir / "bench.db", data)
    return await time_rebuild(url, MemoryIndex()), await time_bare(MemoryIndex(), data)


async def run_services(data) -> tuple[float, float]:
    url, schema = seed_postgres(data)
    client = redis.asyncio.Redis.from_url(REDIS)
    prefix = f"sbbench:{uuid.uuid4().hex[:10]}:"
    try:
        return (await time_rebuild(url, RedisIndex(client, prefix)),
                await time_bare(RedisIndex(client, prefix), data))
    finally:
        keys = [key async for key in client.scan_iter(match=f"{prefix}*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
        with psycopg2.connect(POSTGRES) as conn, conn.cursor() as cur:
            cur.execute(f"DROP SCHEMA {schema} CASCADE")


def report(name: str, count: int, full: float, bare: float) -> None:
    verdict = "ok" if full < TARGET_S else f"SLOW (target {TARGET_S:.0f} s)"
    print(f"{name:<28} {count:>10,}  {full:7.2f} s  {count / full:>10,.0f}/s  bare index {bare:6.2f} s"
          f"  ratio {full / bare:4.2f}x  {verdict}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--entries", type=int, default=1_000_000)
    parser.add_argument("--backend", choices=["embedded", "services", "both"], default="both")
    args = parser.parse_args()
    data = rows(args.entries)
    print(f"rebuild from the database, {args.entries:,} entries (full = DB read + index load)")
    if args.backend in ("embedded", "both"):
        with tempfile.TemporaryDirectory() as workdir:
            full, bare = asyncio.run(run_embedded(data, Path(workdir)))
        report("SQLite -> memory index", args.entries, full, bare)
    if args.backend in ("services", "both"):
        full, bare = asyncio.run(run_services(data))
        report("PostgreSQL -> Redis index", args.entries, full, bare)


if __name__ == "__main__":
    main()
