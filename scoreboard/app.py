"""The one place that reads config, opens backends and wires everything together."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import secrets
import signal
import sys
from typing import Any

import tornado.httpserver
import tornado.netutil
import tornado.web

from . import logs
from .boards import Boards
from .clock import Clock
from .config import Config, load
from .errors import ConfigError, ScoreboardError
from .handlers import base, http, scores, static, submit, ws
from .hub import REVOCATIONS_CHANNEL, Hub
from .metrics import Metrics
from .scores import Scores
from .store import migrations
from .store.db import Store, open_database
from .store.models import Setting
from .users import Principal, Users

log = logging.getLogger("scoreboard.app")
ACCESS_LOG = logging.getLogger("scoreboard.access")


class NotMigrated(Exception):
    """The database is behind the code; the message says which command brings it up to date."""


class App:
    def __init__(self, config: Config, clock: Clock | None = None, config_path: str | None = None) -> None:
        self.config = config
        self.clock = clock or Clock()
        self.config_path = config_path
        self.metrics = Metrics()
        self.redis: Any = None
        self.server: tornado.httpserver.HTTPServer | None = None
        self.closers: list[Any] = []

    # ---- lifecycle ------------------------------------------------------------------------------

    async def start(self, port: int | None = None, host: str | None = None) -> int:
        """Open every backend, then listen; returns the bound port (pass 0 for a free one)."""
        await self._open_store()
        self._open_backends()
        secret = self.config.auth.jwt_secret or await self.store.write(
            lambda: _ensure_setting("jwt_secret", secrets.token_urlsafe(48)))
        self.users = Users(self.config.auth, self.store, self.kv, self.clock, secret)
        await self._start_use_cases()
        self.server = tornado.httpserver.HTTPServer(
            submit.Dispatcher(self, self.web_app()), xheaders=self.config.server.xheaders,
            max_body_size=self.config.server.max_body_bytes * 64)
        sockets = tornado.netutil.bind_sockets(self.config.server.port if port is None else port,
                                               host or self.config.server.host)
        self.server.add_sockets(sockets)
        self.port = sockets[0].getsockname()[1]
        return self.port

    async def _open_store(self) -> None:
        db_config = self.config.database
        self.store = Store(open_database(db_config.url, db_config.timeout_s), db_config.read_threads,
                           db_config.group_commit_max)
        self.closers += [self.store.stop_process, self.store.close]
        await self.store.read(self._check_schema)
        self.metrics.watch_writer(self.store.stats)

    def _check_schema(self) -> None:
        db, mode = self.store.db, self.config.database.migrate_on_start
        if mode == "always" or (mode == "empty" and migrations.is_empty(db)):
            for migration in migrations.migrate(db):
                log.info("applied migration %04d_%s", migration.version, migration.name)
        waiting = migrations.pending(db)
        if waiting:
            config = f" --config {self.config_path}" if self.config_path else ""
            names = ", ".join(f"{m.version:04d}_{m.name}" for m in waiting)
            raise NotMigrated(f"the database needs migrations ({names}): run `scoreboard-admin{config} db migrate`")

    def _open_backends(self) -> None:
        history = self.config.broadcast.history_size
        if self.config.redis.url:
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff

            from .bus.redis import RedisBus
            from .kv.redis import RedisKV
            from .leaderboard.redis import RedisIndex
            from .redispipe import AutoPipelineRedis

            # One quick retry rides over a dropped connection; more would hold requests past a real outage.
            self.redis = AutoPipelineRedis.from_url(
                self.config.redis.url, socket_timeout=5, socket_connect_timeout=2, health_check_interval=10,
                retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 1))
            prefix = self.config.redis.prefix
            self.kv, self.index = RedisKV(self.redis, prefix), RedisIndex(self.redis, prefix)
            self.bus = RedisBus(self.redis, prefix, history, self.config.broadcast.history_ttl_s * 1000)
        else:
            from .bus.local import LocalBus
            from .kv.memory import MemoryKV
            from .leaderboard.memory import MemoryIndex

            self.kv, self.index = MemoryKV(), MemoryIndex()
            self.bus = LocalBus(history, self.config.broadcast.history_ttl_s * 1000)
        self.closers[:0] = [self.bus.close, self.index.close, self.kv.close]

    async def _start_use_cases(self) -> None:
        self.boards = Boards(self.config, self.store, self.index, self.clock)
        self.scores = Scores(self.config, self.store, self.kv, self.index, self.bus, self.users, self.clock,
                             self.boards.stale)
        self.hub = Hub(self.config, self.bus, self.kv, self.index, self.boards, self.users, self.clock, self.metrics)
        self.scores.accepted_messages.append(self.hub.accepted_messages)
        self.scores.accepted_listeners += [self.boards.on_accepted, self.hub.on_accepted]
        db_config = self.config.database
        if db_config.writer == "process" and ":memory:" not in db_config.url:
            await self.store.start_process(db_config.url, db_config.timeout_s, self.config.server.cpus)
        self.users.revoked_listeners.append(self.hub.announce_revoked)
        await self.bus.subscribe(REVOCATIONS_CHANNEL, self.hub.on_revoked)
        self.closers.insert(0, self.hub.close)  # before the bus: close WebSockets (1001), stop ticks
        self.closers.insert(0, self.scores.flush)  # before the store: the acknowledged results recorded
        if self.bus.shared:  # other processes' submissions; this one's reach Boards as accepted_listeners
            await self.boards.share(self.bus)
            self.closers.insert(1, self.boards.close)  # after the last acknowledgements, before the bus
        if self.config.cache.rebuild_on_start:
            await self.boards.rebuild_current()

    async def stop(self) -> None:
        if self.server is not None:
            self.server.stop()
            await self.server.close_all_connections()
        for close in self.closers:
            result = close()
            if asyncio.iscoroutine(result):
                await result

    # ---- routes ---------------------------------------------------------------------------------

    def routes(self) -> list[tuple]:
        return [
            (r"/auth/register", http.RegisterHandler),
            (r"/auth/login", http.LoginHandler),
            (r"/auth/refresh", http.RefreshHandler),
            (r"/auth/logout", http.LogoutHandler),
            (r"/users/me", http.MeHandler),
            (r"/scores/update", scores.SubmitHandler),  # other methods than POST (handlers/submit.py)
            (r"/leaderboards", scores.BoardsHandler),
            (r"/leaderboards/([a-z0-9_-]+)", scores.PageHandler),
            (r"/leaderboards/([a-z0-9_-]+)/around/([^/]+)", scores.AroundHandler),
            (r"/leaderboards/([a-z0-9_-]+)/users/([^/]+)", scores.StandingHandler),
            (r"/healthz", http.HealthHandler),
            (r"/readyz", http.ReadyHandler),
            (r"/metrics", http.MetricsHandler),
            (r"/ws", ws.WebSocketHandler),
            (r"/", static.IndexHandler),
            (r"/static/(.*)", static.StaticHandler, {"path": str(static.STATIC_DIR)}),
        ]

    def web_app(self) -> tornado.web.Application:
        # An optional third element holds extra handler kwargs (e.g. StaticFileHandler's path).
        handlers = [(pattern, cls, {"app": self, **(extra[0] if extra else {})})
                    for pattern, cls, *extra in self.routes()]
        return tornado.web.Application(
            handlers, default_handler_class=base.NotFoundHandler, default_handler_args={"app": self},
            log_function=self._log_request, compress_response=False,
            # tornado caps the timeout at the interval
            websocket_ping_interval=self.config.websocket.ping_interval_s,
            websocket_ping_timeout=min(self.config.websocket.ping_timeout_s, self.config.websocket.ping_interval_s))

    def _log_request(self, handler: tornado.web.RequestHandler) -> None:
        request = handler.request
        self.log_access(request.method or "", request.path, handler.get_status(), request.request_time(),
                        getattr(handler, "request_id", ""))

    @staticmethod
    def log_access(method: str, path: str, status: int, seconds: float, request_id: str) -> None:
        if ACCESS_LOG.isEnabledFor(logging.INFO):
            fields = {"method": method, "path": path.partition("?")[0], "status": status,
                      "ms": round(seconds * 1000, 2), "request_id": request_id}
            ACCESS_LOG.info("request", extra={"fields": fields})

    # ---- use cases that span modules ------------------------------------------------------------

    async def profile(self, principal: Principal) -> dict:
        profile = await self.users.profile(principal)
        profile["boards"] = await self.boards.standings_of(principal.user_id)
        return profile

    async def readiness(self) -> dict[str, str]:
        checks = {"database": await _probe(self.store.read(_select_one))}
        if self.redis is not None:
            checks["redis"] = await _probe(self.redis.ping())
        return checks


def _select_one() -> None:
    Setting._meta.database.execute_sql("SELECT 1").fetchall()


async def _probe(awaitable) -> str:
    try:
        await asyncio.wait_for(awaitable, timeout=2)
        return "ok"
    except (TimeoutError, ScoreboardError, OSError, Exception) as exc:  # any failure means not ready
        return f"down: {type(exc).__name__}"


def _ensure_setting(key: str, candidate: str) -> str:
    """Insert `candidate` unless another process got there first; return the stored value."""
    Setting.insert(key=key, value=candidate).on_conflict_ignore().execute()
    return Setting.get_by_id(key).value


# ---- command line -------------------------------------------------------------------------------

def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="scoreboard-server", description="Run the scoreboard server.")
    parser.add_argument("--config", help="path to a config.toml (default: built-in defaults)")
    parser.add_argument("--host", help="override server.host")
    parser.add_argument("--port", type=int, help="override server.port (0 picks a free port)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        config = load(args.config)
        pin_cpus(config.server.cpus)
        logs.setup(config.server.log_level)
        asyncio.run(_serve(config, args))
    except (ConfigError, NotMigrated) as exc:  # one line and status 2: something to fix before starting
        print(f"scoreboard-server: {exc}", file=sys.stderr)
        sys.exit(2)


def pin_cpus(cpus: set[int]) -> None:
    """Keep this process on `cpus`; called before any thread starts, so every thread inherits it."""
    if not cpus:
        return
    available = os.sched_getaffinity(0)
    if not cpus <= available:
        raise ConfigError("server.cpu_affinity", f"CPUs {sorted(cpus - available)} are not available to this "
                                                 f"process (it may use {sorted(available)})")
    os.sched_setaffinity(0, cpus)


async def _serve(config: Config, args: argparse.Namespace) -> None:
    app = App(config, config_path=args.config)
    port = await app.start(args.port, args.host)
    # What start-up built (modules, config, a rebuilt index) lives as long as the process: out of the
    # collector's way, a full collection no longer walks it (measured: longest GC pause 27-35 -> 8-14 ms).
    gc.freeze()
    log.info("listening", extra={"fields": {"host": args.host or config.server.host, "port": port,
                                            "database": config.database.url.split("://")[0],
                                            "redis": bool(config.redis.url)}})
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    await stopping.wait()
    log.info("stopping")
    await app.stop()


if __name__ == "__main__":
    main()
