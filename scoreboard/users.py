"""Accounts and sessions: register, login, refresh (rotating), logout, and the per-request session check.

The database holds every session; the KV holds a short-lived copy of what each request needs (user,
role, status, session key) and revocation markers. With Redis every process sees a logout at once; with
the memory KV the copy lives `auth.session_cache_ms`, so processes sharing one database agree within that.
"""

from __future__ import annotations

import asyncio
import random
from typing import NamedTuple

import orjson
import peewee as pw

from . import auth, signing
from .clock import Clock
from .config import AuthConfig
from .errors import Forbidden, InvalidRequest, RateLimited, Suspended, Unauthorized
from .kv import KV
from .ratelimit import Limit, check
from .store.db import Statement, Store
from .store.models import Session, SpentRefreshToken, User

VERIFIED_TOKENS_MAX = 10_000  # about 4 MB of tokens; past it the memory starts over


class Principal(NamedTuple):
    """Who is calling, resolved from a valid access token and a live session."""

    user_id: int
    session_id: str
    role: str
    status: str
    session_key: str
    token_expires_s: int = 0  # the access token's `exp` (Unix seconds); 0 when not from a token

    @property
    def is_admin(self) -> bool:
        return self.role == "admin"


class ClientInfo(NamedTuple):
    address: str = ""
    user_agent: str = ""
    request_id: str = ""


class Users:
    def __init__(self, config: AuthConfig, store: Store, kv: KV, clock: Clock, jwt_secret: str) -> None:
        self.config = config
        self.store = store
        self.kv = kv
        self.clock = clock
        self.passwords = auth.Passwords(config)
        self.tokens = auth.Tokens(config, jwt_secret)
        # token -> its claims, for tokens that passed full verification (see _verify).
        self.verified: dict[str, auth.Claims] = {}
        # Coroutines called with a session id once it is revoked (the hub closes its live connections).
        self.revoked_listeners: list = []
        self.limits = {
            "user": Limit.parse(config.login_limit_per_username),
            "addr": Limit.parse(config.login_limit_per_address),
            "register": Limit.parse(config.register_limit_per_address),
        }

    # ---- accounts -------------------------------------------------------------------------------

    async def register(self, body: dict, client: ClientInfo, open_registration: bool, role: str = "player"):
        if not open_registration:
            raise Forbidden("registration is closed")
        username, password = auth.check_credentials_shape(body)
        await check(self.kv, f"reg:a:{client.address}", self.limits["register"], self.clock.now_ms())
        password_hash = await _cpu(self.passwords.hash, password)
        return await self.create_user(username, password_hash, role)

    async def create_user(self, username: str, password_hash: str, role: str = "player") -> dict:
        now = self.clock.now_ms()

        def insert() -> User:
            if User.select().where(User.username_key == username.lower()).exists():
                raise InvalidRequest("username is taken", field="username", reason="username_taken")
            return User.create(username=username, username_key=username.lower(), password_hash=password_hash,
                               role=role, created_at=now)

        try:
            user = await self.store.write(insert)
        except pw.IntegrityError:
            raise InvalidRequest("username is taken", field="username", reason="username_taken") from None
        return {"user_id": user.id, "username": user.username}

    async def login(self, body: dict, client: ClientInfo) -> dict:
        username, password = auth.check_credentials_shape(body)
        keys = (f"login:u:{username.lower()}", f"login:a:{client.address}")
        await self._refuse_if_locked(keys)
        user = await self.store.read(_find_user, username.lower())
        ok = await _cpu(self.passwords.verify, user.password_hash if user else None, password)
        if not ok:
            await self._count_failure(keys)
            raise Unauthorized("wrong username or password")
        if user.status == "banned":
            raise Unauthorized("this account is banned")
        return await self._open_session(user, client)

    async def _refuse_if_locked(self, keys: tuple[str, str]) -> None:
        now = self.clock.now_ms()
        for key in keys:
            until = await self.kv.get(f"{key}:lock", now)
            if until is not None and int(until) > now:
                raise RateLimited((int(until) - now + 999) // 1000, "too many failed logins; try later")

    async def _count_failure(self, keys: tuple[str, str]) -> None:
        now = self.clock.now_ms()
        for key, limit in zip(keys, (self.limits["user"], self.limits["addr"]), strict=True):
            decision = await self.kv.rate_limit(key, limit.rate, limit.period_ms, limit.burst, now)
            if not decision.allowed or decision.remaining == 0:
                wait = max(decision.retry_after_ms, limit.period_ms // max(1, limit.rate))
                await self.kv.set(f"{key}:lock", str(now + wait).encode(), now, ttl_ms=wait)

    # ---- sessions -------------------------------------------------------------------------------

    async def _open_session(self, user: User, client: ClientInfo) -> dict:
        now = self.clock.now_ms()
        session_id = auth.new_session_id()
        refresh = auth.new_refresh_token(session_id)
        session_key = signing.new_session_key()

        def insert() -> None:
            Session.create(id=session_id, user=user.id, session_key=session_key, refresh_hash=auth.token_hash(refresh),
                           created_at=now, expires_at=now + self.config.refresh_ttl_s * 1000,
                           address=client.address[:64], user_agent=client.user_agent[:256])

        await self.store.write(insert)
        return self._grant(user.id, user.username, user.role, session_id, session_key, refresh)

    def _grant(self, user_id: int, username: str, role: str, session_id: str, session_key: str,
               refresh: str) -> dict:
        access = self.tokens.issue(user_id, session_id, role, self.clock.now_ms() // 1000)
        return {
            "access_token": access,
            "token_type": "Bearer",
            "expires_in": self.config.access_ttl_s,
            "refresh_token": refresh,
            "session_id": session_id,
            "session_key": session_key,
            "user": {"user_id": user_id, "username": username, "role": role},
        }

    async def refresh(self, body: dict) -> dict:
        token = body.get("refresh_token")
        if not isinstance(token, str) or not token:
            raise InvalidRequest("missing field: refresh_token", field="refresh_token")
        session_id = auth.refresh_session_id(token)
        now = self.clock.now_ms()
        new_token = auth.new_refresh_token(session_id)
        outcome = await self.store.write(lambda: _rotate(session_id, auth.token_hash(token),
                                                         auth.token_hash(new_token), now))
        if outcome == "reused":
            await self._forget_session(session_id)
            raise Unauthorized("refresh token was already used: the session is revoked")
        if isinstance(outcome, str):
            raise Unauthorized(outcome)
        session, user = outcome
        return self._grant(user.id, user.username, user.role, session_id, session.session_key, new_token)

    async def logout(self, principal: Principal) -> None:
        await self.revoke_session(principal.session_id, "logout")

    async def revoke_session(self, session_id: str, reason: str) -> None:
        now = self.clock.now_ms()

        def revoke() -> None:
            Session.update(revoked_at=now, revoked_reason=reason).where(
                (Session.id == session_id) & Session.revoked_at.is_null()).execute()

        await self.store.write(revoke)
        await self._forget_session(session_id)

    async def _forget_session(self, session_id: str) -> None:
        # The marker outlives every access token of the session, so no process can use a cached copy.
        now = self.clock.now_ms()
        ttl = (self.config.access_ttl_s + self.config.leeway_s) * 1000 + self.config.session_cache_ms
        await self.kv.set(_session_key(session_id), b'{"revoked":true}', now, ttl_ms=ttl)
        for listener in self.revoked_listeners:
            await listener(session_id)

    # ---- per request ----------------------------------------------------------------------------

    async def authenticate(self, authorization: str | None, allow_suspended: bool = False) -> Principal:
        return await self.principal(auth.bearer(authorization), allow_suspended)

    async def principal(self, token: str, allow_suspended: bool = False) -> Principal:
        now = self.clock.now_ms()
        claims = self._verify(token, now // 1000)
        info = await self._session_info(claims.session_id, now)
        if info.get("revoked") or info.get("u") != claims.user_id or info.get("x", 0) < now:
            raise Unauthorized("session is revoked or expired")
        if info["s"] == "banned":
            raise Unauthorized("this account is banned")
        if info["s"] == "suspended" and not allow_suspended:
            raise Suspended("this account is suspended")
        return Principal(claims.user_id, claims.session_id, info["r"], info["s"], info["k"], claims.expires_at)

    def _verify(self, token: str, now_s: int) -> auth.Claims:
        """Tokens.verify, without decoding the same token again on every request of a session.

        Everything verify checks but the expiry depends only on the token's bytes and the secret, so a
        token that passed once passes again while it has not expired; the expiry is checked on every call,
        and an expired or unknown token goes through the full verification (and its error)."""
        claims = self.verified.get(token)
        if claims is not None and claims.expires_at + self.config.leeway_s >= now_s:
            return claims
        claims = self.tokens.verify(token, now_s)
        if len(self.verified) >= VERIFIED_TOKENS_MAX:
            self.verified.clear()
        self.verified[token] = claims
        return claims

    async def _session_info(self, session_id: str, now: int) -> dict:
        cached = await self.kv.get(_session_key(session_id), now)
        if cached is not None:
            return orjson.loads(cached)
        info = await self.store.read(_load_session_info, session_id)
        if info is None:
            return {"revoked": True}
        # 80-100% of the setting, never more: sessions cached together (a game's clients start together)
        # would otherwise all be read again in the same instant, every time.
        ttl_ms = self.config.session_cache_ms - random.randrange(self.config.session_cache_ms // 5 + 1)
        await self.kv.set(_session_key(session_id), orjson.dumps(info), now, ttl_ms=max(1, ttl_ms))
        return info

    async def profile(self, principal: Principal) -> dict:
        user = await self.store.read(lambda: User.get_by_id(principal.user_id))
        return {"user_id": user.id, "username": user.username, "role": user.role, "status": user.status}


def _session_key(session_id: str) -> str:
    return f"sess:{session_id}"


def _find_user(username_key: str) -> User | None:
    return User.get_or_none(User.username_key == username_key)


def _load_session(session_id: str) -> tuple[Session, User] | None:
    row = Session.select(Session, User).join(User).where(Session.id == session_id).first()
    return (row, row.user) if row else None


# Read again each `session_cache_ms` for every active session: a prepared statement, not a model query.
_SESSION_INFO = Statement(lambda session_id: Session.select(
    User.id, User.role, User.status, Session.session_key, Session.expires_at, Session.revoked_at).join(User).where(
    Session.id == session_id), ("probe-session-id",))


def _load_session_info(session_id: str) -> dict | None:
    row = _SESSION_INFO.cursor(session_id).fetchone()
    if row is None:
        return None
    user_id, role, status, session_key, expires_at, revoked_at = row
    return {"u": user_id, "r": role, "s": status, "k": session_key, "x": expires_at, "revoked": revoked_at is not None}


def _rotate(session_id: str, presented: str, new_hash: str, now: int):
    """In the writer: rotate the refresh token, or revoke the session when a spent one comes back."""
    row = _load_session(session_id)
    if row is None:
        return "unknown refresh token"
    session, user = row
    if session.revoked_at is not None or session.expires_at < now:
        return "session is revoked or expired"
    if user.status == "banned":
        return "this account is banned"
    if presented != session.refresh_hash:
        if SpentRefreshToken.get_or_none(SpentRefreshToken.token_hash == presented) is None:
            return "unknown refresh token"
        session.revoked_at, session.revoked_reason = now, "refresh_reuse"
        session.save()
        return "reused"
    SpentRefreshToken.create(token_hash=presented, session=session_id, spent_at=now)
    session.refresh_hash = new_hash
    session.save()
    return session, user


async def _cpu(fn, *args):
    """Argon2 takes tens of milliseconds of CPU: never on the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


