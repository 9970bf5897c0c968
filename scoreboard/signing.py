"""Request signatures (PROTOCOL "Submitting a score"): HMAC-SHA256 over the raw body, checked before parsing."""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets

from .errors import BadSignature

PREFIX = b"v1\nPOST\n/scores/update\n"
HEADER_RE = re.compile(r"v1=([0-9a-f]{64})")


def new_session_key() -> str:
    """32 random bytes, base64url without padding."""
    return encode_key(secrets.token_bytes(32))


def encode_key(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_key(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("session key is not base64url") from None


def sign(session_key: str, raw_body: bytes, path: str = "/scores/update") -> str:
    """The X-Signature header value for `raw_body`."""
    message = b"v1\nPOST\n" + path.encode() + b"\n" + raw_body
    digest = hmac.new(decode_key(session_key), message, hashlib.sha256).hexdigest()
    return f"v1={digest}"


def verify(session_key: str, raw_body: bytes, header: str | None) -> None:
    """Raise BadSignature unless `header` signs `raw_body`; the comparison takes constant time."""
    if not header:
        raise BadSignature("X-Signature header is missing")
    match = HEADER_RE.fullmatch(header.strip())
    if match is None:
        raise BadSignature("X-Signature must be v1=<64 lowercase hex digits>")
    expected = hmac.new(decode_key(session_key), PREFIX + raw_body, hashlib.sha256).hexdigest()
    if not hmac.compare_digest(expected, match.group(1)):
        raise BadSignature("signature does not match the body")
