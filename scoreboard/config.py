"""Settings: config.toml + SCOREBOARD_<SECTION>_<KEY> environment overrides -> frozen dataclasses.

No I/O beyond reading the file. Every bad value raises ConfigError naming its key; the server turns that
into one line on stderr and exit status 2. tests/test_config.py fails when a setting is not documented in
the shipped config.toml with its default.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ConfigError

NAME_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")
MAX_ABS = 2**53 - 1
CPU_LIST_RE = re.compile(r"[0-9]{1,4}(,[0-9]{1,4})*", re.ASCII)


@dataclass(frozen=True)
class ServerConfig:
    host: str = "127.0.0.1"
    port: int = 8000
    max_body_bytes: int = 16384
    public_reads: bool = True
    xheaders: bool = False
    log_level: str = "info"
    cpu_affinity: str = ""

    @property
    def cpus(self) -> set[int]:
        """The CPUs `cpu_affinity` names (empty: no pinning)."""
        return {int(part) for part in self.cpu_affinity.split(",")} if self.cpu_affinity else set()


@dataclass(frozen=True)
class DatabaseConfig:
    url: str = "sqlite:///scoreboard.db"
    migrate_on_start: str = "empty"
    read_threads: int = 2
    group_commit_max: int = 256
    timeout_s: float = 5.0
    writer: str = "process"


@dataclass(frozen=True)
class RedisConfig:
    url: str = ""
    prefix: str = "sb:"


@dataclass(frozen=True)
class AuthConfig:
    jwt_secret: str = ""
    jwt_algorithm: str = "HS256"
    issuer: str = "scoreboard"
    audience: str = "scoreboard-clients"
    access_ttl_s: int = 900
    refresh_ttl_s: int = 2_592_000
    leeway_s: int = 5
    open_registration: bool = True
    argon2_time_cost: int = 3
    argon2_memory_kib: int = 65_536
    argon2_parallelism: int = 1
    login_limit_per_username: str = "5/m"
    login_limit_per_address: str = "30/m"
    register_limit_per_address: str = "20/m"
    session_cache_ms: int = 1000


@dataclass(frozen=True)
class SigningConfig:
    window_s: int = 300


@dataclass(frozen=True)
class RateLimitConfig:
    per_user: str = "20/s"
    per_address: str = "200/s"


@dataclass(frozen=True)
class CacheConfig:
    page_ttl_ms: int = 1000
    rebuild_on_start: bool = True


@dataclass(frozen=True)
class BroadcastConfig:
    top_n: int = 10
    interval_ms: int = 100
    rank_notify_depth: int = 100
    history_size: int = 1000
    history_ttl_s: int = 86_400


@dataclass(frozen=True)
class WebSocketConfig:
    max_connections: int = 20_000
    max_subscriptions: int = 20
    max_messages_per_s: int = 20
    max_buffer_bytes: int = 262_144
    ping_interval_s: int = 20
    ping_timeout_s: int = 30
    auth_timeout_s: int = 5


@dataclass(frozen=True)
class BoardConfig:
    name: str
    operator: str = "incr"
    order: str = "desc"
    reset: str = "never"
    min_score: int = -MAX_ABS
    max_score: int = MAX_ABS


@dataclass(frozen=True)
class ActionRule:
    name: str
    min_points: int = 0
    max_points: int = 1000
    min_duration_ms: int = 0
    max_per_minute: int = 60


SECTIONS: dict[str, type] = {
    "server": ServerConfig,
    "database": DatabaseConfig,
    "redis": RedisConfig,
    "auth": AuthConfig,
    "signing": SigningConfig,
    "ratelimit": RateLimitConfig,
    "cache": CacheConfig,
    "broadcast": BroadcastConfig,
    "websocket": WebSocketConfig,
}


@dataclass(frozen=True)
class Config:
    server: ServerConfig = field(default_factory=ServerConfig)
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    redis: RedisConfig = field(default_factory=RedisConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    signing: SigningConfig = field(default_factory=SigningConfig)
    ratelimit: RateLimitConfig = field(default_factory=RateLimitConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    broadcast: BroadcastConfig = field(default_factory=BroadcastConfig)
    websocket: WebSocketConfig = field(default_factory=WebSocketConfig)
    boards: tuple[BoardConfig, ...] = (BoardConfig("global"),)
    actions: tuple[ActionRule, ...] = (ActionRule("level_complete"),)

    def board(self, name: str) -> BoardConfig | None:
        return self._boards_by_name.get(name)

    def action(self, name: str) -> ActionRule | None:
        return self._actions_by_name.get(name)

    # Looked up on every submission. Names are unique: they are the keys of [boards.*] and [actions.*].
    @functools.cached_property
    def _boards_by_name(self) -> dict[str, BoardConfig]:
        return {b.name: b for b in self.boards}

    @functools.cached_property
    def _actions_by_name(self) -> dict[str, ActionRule]:
        return {a.name: a for a in self.actions}

    def replace(self, **sections: Any) -> Config:
        """A copy with some settings changed: `replace(auth={"leeway_s": 0})`."""
        changes = {}
        for name, values in sections.items():
            current = getattr(self, name)
            changes[name] = dataclasses.replace(current, **values) if isinstance(values, dict) else values
        return dataclasses.replace(self, **changes)


def load(path: str | os.PathLike | None = None, env: Mapping[str, str] | None = None) -> Config:
    """Read `path` (optional) and apply SCOREBOARD_* overrides from `env` (default os.environ)."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            raw = tomllib.loads(Path(path).read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise ConfigError("--config", f"file not found: {path}") from None
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError("--config", f"not valid TOML: {exc}") from None
    return from_dict(raw, os.environ if env is None else env)


def from_dict(raw: Mapping[str, Any], env: Mapping[str, str] | None = None) -> Config:
    unknown = set(raw) - set(SECTIONS) - {"boards", "actions"}
    if unknown:
        raise ConfigError(sorted(unknown)[0], "unknown section")
    sections = {name: _section(name, cls, raw.get(name, {}), env or {}) for name, cls in SECTIONS.items()}
    boards = _named(raw.get("boards"), "boards", BoardConfig, _check_board) or Config.boards
    actions = _named(raw.get("actions"), "actions", ActionRule, _check_action) or Config.actions
    config = Config(**sections, boards=boards, actions=actions)
    _check(config)
    return config


def _section(name: str, cls: type, values: Any, env: Mapping[str, str]) -> Any:
    if not isinstance(values, dict):
        raise ConfigError(name, "must be a table")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    for key in values:
        if key not in fields:
            raise ConfigError(f"{name}.{key}", "unknown setting")
    kwargs = {key: _coerce(f"{name}.{key}", fields[key], value) for key, value in values.items()}
    for key, f in fields.items():
        env_value = env.get(f"SCOREBOARD_{name}_{key}".upper())
        if env_value is not None:
            kwargs[key] = _from_env(f"SCOREBOARD_{name}_{key}".upper(), f, env_value)
    return cls(**kwargs)


def _field_type(f: dataclasses.Field) -> type:
    return {"str": str, "int": int, "bool": bool, "float": float}[str(f.type).split(" ")[0]]


def _coerce(key: str, f: dataclasses.Field, value: Any) -> Any:
    kind = _field_type(f)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value) is not kind:
        raise ConfigError(key, f"must be {kind.__name__}, got {type(value).__name__} {value!r}")
    return value


def _from_env(key: str, f: dataclasses.Field, text: str) -> Any:
    kind = _field_type(f)
    try:
        if kind is bool:
            lowered = text.strip().lower()
            if lowered not in {"1", "0", "true", "false", "yes", "no", "on", "off"}:
                raise ValueError(text)
            return lowered in {"1", "true", "yes", "on"}
        return kind(text)
    except ValueError:
        raise ConfigError(key, f"must be {kind.__name__}, got {text!r}") from None


def _named(values: Any, section: str, cls: type, check) -> tuple:
    if values is None:
        return ()
    if not isinstance(values, dict) or not values:
        raise ConfigError(section, "must be a table of named tables")
    items = []
    for name, settings in values.items():
        if not NAME_RE.match(name):
            raise ConfigError(f"{section}.{name}", "names are 1-32 of [a-z0-9_-]")
        if not isinstance(settings, dict):
            raise ConfigError(f"{section}.{name}", "must be a table")
        fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "name"}
        for key, value in settings.items():
            if key not in fields:
                raise ConfigError(f"{section}.{name}.{key}", "unknown setting")
            _coerce(f"{section}.{name}.{key}", fields[key], value)
        item = cls(name=name, **settings)
        check(item)
        items.append(item)
    return tuple(items)


def _one_of(key: str, value: str, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ConfigError(key, f"must be one of {', '.join(allowed)}; got {value!r}")


def _check_board(board: BoardConfig) -> None:
    key = f"boards.{board.name}"
    _one_of(f"{key}.operator", board.operator, ("incr", "best", "set"))
    _one_of(f"{key}.order", board.order, ("desc", "asc"))
    _one_of(f"{key}.reset", board.reset, ("never", "daily", "weekly", "monthly"))
    for attr in ("min_score", "max_score"):
        if abs(getattr(board, attr)) > MAX_ABS:
            raise ConfigError(f"{key}.{attr}", "absolute value must be at most 2^53 - 1")
    if board.min_score > board.max_score:
        raise ConfigError(f"{key}.min_score", "must not exceed max_score")


def _check_action(rule: ActionRule) -> None:
    key = f"actions.{rule.name}"
    if rule.min_points > rule.max_points:
        raise ConfigError(f"{key}.min_points", "must not exceed max_points")
    for attr in ("min_points", "max_points"):
        if abs(getattr(rule, attr)) > MAX_ABS:
            raise ConfigError(f"{key}.{attr}", "absolute value must be at most 2^53 - 1")
    if rule.min_duration_ms < 0 or rule.max_per_minute < 1:
        raise ConfigError(key, "min_duration_ms must be >= 0 and max_per_minute >= 1")


def _check(config: Config) -> None:
    _one_of("database.migrate_on_start", config.database.migrate_on_start, ("never", "empty", "always"))
    _one_of("database.writer", config.database.writer, ("process", "thread"))
    if not config.database.url.startswith(("sqlite:///", "postgresql://", "postgres://")):
        raise ConfigError("database.url", "must start with sqlite:/// or postgresql://")
    if config.redis.url and not config.redis.url.startswith(("redis://", "rediss://", "unix://")):
        raise ConfigError("redis.url", "must be empty (embedded) or a redis:// URL")
    _one_of("auth.jwt_algorithm", config.auth.jwt_algorithm, ("HS256", "HS384", "HS512"))
    _one_of("server.log_level", config.server.log_level, ("debug", "info", "warning", "error"))
    if config.server.cpu_affinity and not CPU_LIST_RE.fullmatch(config.server.cpu_affinity):
        raise ConfigError("server.cpu_affinity", "must be empty or CPU numbers separated by commas, e.g. \"2\"")
    if config.auth.jwt_secret and len(config.auth.jwt_secret) < 32:
        raise ConfigError("auth.jwt_secret", "must be at least 32 characters (or empty to generate one)")
    # OWASP's floor for Argon2id: 19 MiB with t=2, or more memory or time.
    if config.auth.argon2_memory_kib < 19_456 or config.auth.argon2_time_cost < 2:
        raise ConfigError("auth.argon2_memory_kib", "Argon2id below OWASP minimum (19456 KiB, t=2)")
    _positive(config)
    _check_limits(config)


def _positive(config: Config) -> None:
    for section in ("server", "database", "auth", "signing", "cache", "broadcast", "websocket"):
        values = dataclasses.asdict(getattr(config, section))
        for key, value in values.items():
            if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
                raise ConfigError(f"{section}.{key}", "must not be negative")
    if not 0 < config.server.port < 65536 and config.server.port != 0:
        raise ConfigError("server.port", "must be 0-65535")
    if config.broadcast.top_n < 1 or config.broadcast.top_n > 100:
        raise ConfigError("broadcast.top_n", "must be 1-100")


RATE_RE = re.compile(r"^\s*[1-9][0-9]*\s*/\s*(s|m|h)\s*$")


def _check_limits(config: Config) -> None:
    for key, text in (
        ("ratelimit.per_user", config.ratelimit.per_user),
        ("ratelimit.per_address", config.ratelimit.per_address),
        ("auth.login_limit_per_username", config.auth.login_limit_per_username),
        ("auth.login_limit_per_address", config.auth.login_limit_per_address),
        ("auth.register_limit_per_address", config.auth.register_limit_per_address),
    ):
        if not RATE_RE.match(text):
            raise ConfigError(key, f"must look like '10/s', '600/m' or '1000/h'; got {text!r}")
