"""Pure auth primitives: Argon2id password hashes, JWT access tokens, refresh tokens. No storage here."""

from __future__ import annotations

import hashlib
import re
import secrets
import uuid
from dataclasses import dataclass

import argon2
import jwt

from .config import AuthConfig
from .errors import InvalidRequest, Unauthorized

USERNAME_RE = re.compile(r"[A-Za-z0-9_.-]{3,32}")
MIN_PASSWORD = 8
MAX_PASSWORD = 1024  # Argon2 hashes any length, but a megabyte password is only a way to burn CPU
ROLES = ("player", "admin")
REQUIRED_CLAIMS = ["sub", "sid", "role", "iss", "aud", "iat", "exp", "jti"]


@dataclass(frozen=True)
class Claims:
    user_id: int
    session_id: str
    role: str
    expires_at: int
    token_id: str


class Passwords:
    """Argon2id with parameters from config (checked against the OWASP floor by config)."""

    def __init__(self, config: AuthConfig) -> None:
        self.hasher = argon2.PasswordHasher(
            time_cost=config.argon2_time_cost,
            memory_cost=config.argon2_memory_kib,
            parallelism=config.argon2_parallelism,
            type=argon2.Type.ID,
        )
        # Verifying against this keeps a login for an unknown user as slow as for a known one.
        self.dummy_hash = self.hasher.hash(secrets.token_hex(16))

    def hash(self, password: str) -> str:
        return self.hasher.hash(password)

    def verify(self, stored_hash: str | None, password: str) -> bool:
        try:
            return self.hasher.verify(stored_hash or self.dummy_hash, password) and stored_hash is not None
        except (argon2.exceptions.VerificationError, argon2.exceptions.InvalidHashError):
            return False


def check_credentials_shape(body: dict) -> tuple[str, str]:
    username, password = body.get("username"), body.get("password")
    if not isinstance(username, str) or not USERNAME_RE.fullmatch(username):
        raise InvalidRequest("username must be 3-32 characters of A-Z a-z 0-9 _ . -", field="username")
    if not isinstance(password, str) or not MIN_PASSWORD <= len(password) <= MAX_PASSWORD:
        raise InvalidRequest(f"password must be {MIN_PASSWORD}-{MAX_PASSWORD} characters", field="password")
    return username, password


class Tokens:
    """JWT access tokens. The algorithm is pinned by config and never read from the token."""

    def __init__(self, config: AuthConfig, secret: str) -> None:
        self.config = config
        self.secret = secret

    def issue(self, user_id: int, session_id: str, role: str, now_s: int) -> str:
        claims = {
            "sub": str(user_id),
            "sid": session_id,
            "role": role,
            "iss": self.config.issuer,
            "aud": self.config.audience,
            "iat": now_s,
            "exp": now_s + self.config.access_ttl_s,
            "jti": uuid.uuid4().hex,
        }
        return jwt.encode(claims, self.secret, algorithm=self.config.jwt_algorithm)

    def verify(self, token: str, now_s: int) -> Claims:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[self.config.jwt_algorithm],
                audience=self.config.audience,
                issuer=self.config.issuer,
                leeway=self.config.leeway_s,
                options={"require": REQUIRED_CLAIMS, "verify_iat": False, "verify_exp": False},
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid token: {exc}") from None
        # exp is checked against the injected clock so expiry is testable without sleeping.
        if not isinstance(claims["exp"], int) or claims["exp"] + self.config.leeway_s < now_s:
            raise Unauthorized("token expired")
        return _claims(claims)


def _claims(claims: dict) -> Claims:
    try:
        user_id = int(claims["sub"])
    except (TypeError, ValueError):
        raise Unauthorized("invalid token: bad sub") from None
    if claims["role"] not in ROLES or not isinstance(claims["sid"], str):
        raise Unauthorized("invalid token: bad role or sid")
    return Claims(user_id, claims["sid"], claims["role"], claims["exp"], str(claims["jti"]))


def bearer(header: str | None) -> str:
    if not header:
        raise Unauthorized("Authorization: Bearer <token> is required")
    scheme, _, token = header.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise Unauthorized("Authorization must be 'Bearer <token>'")
    return token.strip()


def new_refresh_token(session_id: str) -> str:
    return f"{session_id}.{secrets.token_urlsafe(32)}"


def refresh_session_id(token: str) -> str:
    session_id, dot, rest = token.partition(".")
    if not dot or not session_id or not rest or len(token) > 200:
        raise Unauthorized("malformed refresh token")
    return session_id


def token_hash(token: str) -> str:
    """Refresh tokens are stored only as hashes; they are random, so SHA-256 is enough."""
    return hashlib.sha256(token.encode()).hexdigest()


def new_session_id() -> str:
    return uuid.uuid4().hex
