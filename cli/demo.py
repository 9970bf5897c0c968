"""`scoreboard-admin demo`: bot players that log in and submit random signed scores over HTTP.

Each bot is a `scoreboard.client.ScoreboardClient` (its own session, key and seq). Bots log in first and
register on 401, join as soon as they are in (logins and registrations are rate limited per address, so a
big fleet trickles in), and one scheduler sends submissions at the total rate asked, each from a random
idle bot. A 429 puts that bot on hold for its Retry-After. The run is bounded: at most rate x duration
submissions, and it stops `duration` seconds after the first bot joined (plus a short drain), or after
`setup_timeout` seconds when no bot could log in. One bot sends at most every 1.2 s (50 a minute, under
the default per-action cap of 60): while few bots are in, the total rate is lower than asked.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import tornado.httpclient
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from scoreboard.client import ClientError, ScoreboardClient

DRAIN_S = 5.0
# One bot sends at most 50 actions a minute: under the default per-type cap (actions.*.max_per_minute = 60).
BOT_INTERVAL_S = 1.2
LOGIN_ATTEMPTS = 6


@dataclass(frozen=True)
class Settings:
    url: str
    players: int
    rate: float
    duration: float
    board: str = "global"
    prefix: str = "bot"
    password: str = "demo-bot-password"
    max_points: int = 500
    action: str = "level_complete"
    concurrency: int = 32
    setup_timeout: float = 120.0  # how long to wait for the first bot to log in


@dataclass
class Bot:
    name: str
    client: ScoreboardClient
    ready: bool = False
    busy: bool = False
    hold_until: float = 0.0  # time.monotonic() before which a 429 asked us to wait
    last_sent: float = -BOT_INTERVAL_S

    def can_send(self, now: float) -> bool:
        return self.ready and not self.busy and self.hold_until <= now and now - self.last_sent >= BOT_INTERVAL_S


@dataclass
class Stats:
    outcomes: Counter = field(default_factory=Counter)  # accepted, duplicate, rate_limited, score_rejected:...
    setup: Counter = field(default_factory=Counter)  # logged_in, registered, failed:<code>
    latencies_ms: list[float] = field(default_factory=list)
    sent: int = 0
    joined: int = 0

    def line(self, players: int) -> str:
        other = sum(n for key, n in self.outcomes.items()
                    if key not in ("accepted", "rate_limited") and not key.startswith("skipped"))
        p50 = percentile(self.latencies_ms, 50)
        return (f"bots {self.joined}/{players} · sent {self.sent} · accepted {self.outcomes['accepted']} · "
                f"429 {self.outcomes['rate_limited']} · other {other} · p50 {p50:.0f} ms")


def percentile(values: list[float], pct: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * pct / 100))]


async def join(bot: Bot, settings: Settings, stats: Stats, gate: asyncio.Semaphore, deadline: float) -> None:
    """Log in (registering on 401), waiting out 429s until the deadline."""
    registered = False
    for _ in range(LOGIN_ATTEMPTS):
        try:
            async with gate:
                await bot.client.login(bot.name, settings.password)
            bot.ready, stats.joined = True, stats.joined + 1
            stats.setup["logged_in"] += 1
            return
        except ClientError as exc:
            if exc.status == 401 and not registered:
                registered = await register(bot, settings, stats, gate, deadline)
                if not registered:
                    return
                continue
            if exc.status == 429 and not await hold(exc, deadline, stats.setup, "login"):
                return
            if exc.status != 429:
                stats.setup[f"failed:{exc.code}"] += 1
                return
    stats.setup["failed:attempts"] += 1


async def register(bot: Bot, settings: Settings, stats: Stats, gate: asyncio.Semaphore, deadline: float) -> bool:
    for _ in range(LOGIN_ATTEMPTS):
        try:
            async with gate:
                await bot.client.register(bot.name, settings.password)
            stats.setup["registered"] += 1
            return True
        except ClientError as exc:
            if exc.status != 429:
                stats.setup[f"failed:register:{exc.code}"] += 1
                return False
            if not await hold(exc, deadline, stats.setup, "register"):
                return False
    return False


async def hold(exc: ClientError, deadline: float, counter: Counter, what: str) -> bool:
    """Sleep for Retry-After if that ends before the deadline; False when it would not."""
    wait = max(1.0, exc.retry_after or 1.0)
    counter[f"429:{what}"] += 1
    if time.monotonic() + wait >= deadline:
        counter[f"failed:{what}:rate_limited"] += 1
        return False
    await asyncio.sleep(wait + random.random() * 0.5)
    return True


async def submit(bot: Bot, settings: Settings, stats: Stats) -> None:
    bot.busy = True
    started = time.perf_counter()
    try:
        await bot.client.submit(random.randint(1, settings.max_points), type=settings.action,
                                board=settings.board, duration_ms=random.randint(5_000, 120_000))
        stats.outcomes["accepted"] += 1
        stats.latencies_ms.append((time.perf_counter() - started) * 1000)
    except ClientError as exc:
        key = exc.code + (f":{exc.reason}" if exc.reason else "")
        stats.outcomes["rate_limited" if exc.status == 429 else key] += 1
        if exc.status == 429:
            bot.hold_until = time.monotonic() + max(1.0, exc.retry_after or 1.0)
        elif exc.status == 401:
            bot.ready = False  # session gone (logged out elsewhere, banned): this bot sits out
    finally:
        bot.busy = False


async def run(settings: Settings, console: Console) -> Stats:
    http = tornado.httpclient.AsyncHTTPClient(force_instance=True, max_clients=settings.concurrency)
    stats = Stats()
    bots = [Bot(f"{settings.prefix}{n:04d}", ScoreboardClient(settings.url, http_client=http))
            for n in range(settings.players)]
    gate = asyncio.Semaphore(4)  # password hashing is the server's most expensive call: a few at a time
    last_call = time.monotonic() + settings.setup_timeout + settings.duration
    joiners = [asyncio.ensure_future(join(bot, settings, stats, gate, last_call)) for bot in bots]
    try:
        with Progress(TextColumn("[bold]demo[/bold]"), BarColumn(), TimeElapsedColumn(),
                      TextColumn("{task.description}"), console=console) as progress:
            task = progress.add_task("logging in the first bot...", total=settings.duration)
            if await first_join(stats, joiners, settings.setup_timeout):
                await send(bots, settings, stats, progress, task)
    finally:
        for joiner in joiners:
            joiner.cancel()
        await asyncio.gather(*joiners, return_exceptions=True)
        http.close()
    return stats


async def first_join(stats: Stats, joiners: list[asyncio.Future], timeout: float) -> bool:
    """Wait until one bot is in (the run's clock starts then); False when none made it in time."""
    deadline = time.monotonic() + timeout
    while stats.joined == 0 and time.monotonic() < deadline and not all(j.done() for j in joiners):
        await asyncio.sleep(0.05)
    return stats.joined > 0


async def send(bots: list[Bot], settings: Settings, stats: Stats, progress: Progress, task) -> None:
    """Submissions at the total rate until the duration or the budget (rate x duration) is spent."""
    start = time.monotonic()
    deadline, budget = start + settings.duration, max(1, int(settings.rate * settings.duration))
    in_flight: set[asyncio.Future] = set()
    next_send = start
    while time.monotonic() < deadline and stats.sent < budget:
        now = time.monotonic()
        if now >= next_send:
            next_send += 1 / settings.rate
            bot = pick(bots, now) if len(in_flight) < settings.concurrency else None
            if bot is None:
                stats.outcomes["skipped:no_idle_bot"] += 1
            else:
                stats.sent += 1
                bot.last_sent = now
                job = asyncio.ensure_future(submit(bot, settings, stats))
                in_flight.add(job)
                job.add_done_callback(in_flight.discard)
        progress.update(task, completed=min(settings.duration, now - start), description=stats.line(settings.players))
        await asyncio.sleep(max(0.0, min(0.1, next_send - time.monotonic())))
    if in_flight:
        await asyncio.wait(in_flight, timeout=DRAIN_S)
    progress.update(task, completed=settings.duration, description=stats.line(settings.players))


def pick(bots: list[Bot], now: float) -> Bot | None:
    """A random bot that is logged in, idle, not holding for a Retry-After and not over its own pace."""
    for _ in range(8):
        bot = random.choice(bots)
        if bot.can_send(now):
            return bot
    idle = [bot for bot in bots if bot.can_send(now)]
    return random.choice(idle) if idle else None


async def top(settings: Settings) -> dict | None:
    try:
        return await ScoreboardClient(settings.url).leaderboard(settings.board, limit=10)
    except ClientError:
        return None


def report(settings: Settings, stats: Stats, board: dict | None, console: Console) -> None:
    table = Table("outcome", "count", title="submissions")
    for key, count in sorted(stats.outcomes.items(), key=lambda item: -item[1]):
        table.add_row(key, str(count))
    table.add_row("[bold]sent[/bold]", str(stats.sent))
    console.print(table)
    setup = Table("setup", "count", title=f"bots ({stats.joined}/{settings.players} joined)")
    for key, count in sorted(stats.setup.items()):
        setup.add_row(key, str(count))
    console.print(setup)
    lat = stats.latencies_ms
    console.print(f"latency ms: p50 {percentile(lat, 50):.1f} · p95 {percentile(lat, 95):.1f} · "
                  f"p99 {percentile(lat, 99):.1f} · max {max(lat, default=0):.1f}")
    if any(key.startswith("429:") for key in stats.setup):
        console.print("[yellow]logins/registrations were rate limited: for a big demo raise "
                      "auth.login_limit_per_address and auth.register_limit_per_address on the server[/yellow]")
    if board:
        leaders = Table("rank", "player", "score", title=f"{settings.board} top 10 ({board['total']} players)")
        for entry in board["entries"]:
            leaders.add_row(str(entry["rank"]), entry["username"], str(entry["score"]))
        console.print(leaders)


def main(settings: Settings, console: Console) -> int:
    """Run the demo; the exit status is 0 when at least one submission was accepted."""
    async def both() -> tuple[Stats, dict | None]:
        stats = await run(settings, console)
        return stats, await top(settings)

    stats, board = asyncio.run(both())
    report(settings, stats, board, console)
    return 0 if stats.outcomes["accepted"] else 1
