"""Hostile and broken request bodies on the auth endpoints: always a JSON 4xx, never a 500, nothing written.

A user `alice` with one live session exists before each test, so a login or refresh that wrongly went
through would show up as a new session or a spent refresh token in the row counts.
"""

from __future__ import annotations

import http.client
import json

import pytest

from scoreboard.store.models import Session, SpentRefreshToken, User

from harness import Http, register_and_login

ENDPOINTS = ["/auth/register", "/auth/login", "/auth/refresh"]
CREDENTIAL_ENDPOINTS = ["/auth/register", "/auth/login"]
PASSWORD = "correct horse battery"


class Target:
    """A server with alice logged in, and a way to count every row a request could have written."""

    def __init__(self, server) -> None:
        self.server = server
        self.client = Http(server.url)
        self.session = register_and_login(self.client, "alice", PASSWORD)
        self.max_body = server.config.server.max_body_bytes

    def rows(self) -> dict[str, int]:
        def count() -> dict[str, int]:
            return {model.__name__: model.select().count() for model in (User, Session, SpentRefreshToken)}

        return self.server.call(self.server.app.store.read(count))

    def post_each(self, endpoints: list[str], body: bytes | dict[str, bytes]) -> dict[str, tuple[int, str | None]]:
        """POST `body` (or each endpoint's own body) to every endpoint; returns endpoint -> (status, error code)."""
        outcomes = {}
        for endpoint in endpoints:
            response = self.client.post(endpoint, body[endpoint] if isinstance(body, dict) else body)
            assert "json" in response.headers.get("content-type", ""), (endpoint, response.raw)
            outcomes[endpoint] = (response.status, response.code)
        return outcomes

    def post_chunked(self, path: str, chunks: list[bytes]) -> tuple[int, str | None]:
        """POST with Transfer-Encoding: chunked (no Content-Length); returns (status, error code)."""
        conn = http.client.HTTPConnection(self.client.host, self.client.port, timeout=30)
        try:
            conn.request("POST", path, body=iter(chunks), headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.getheader("X-Request-Id")
            return response.status, json.loads(response.read()).get("error", {}).get("code")
        finally:
            conn.close()


@pytest.fixture
def target(server) -> Target:
    return Target(server)


def refused_everywhere(endpoints: list[str], status: int = 400, code: str = "invalid_request") -> dict:
    return dict.fromkeys(endpoints, (status, code))


# ---- bodies every auth endpoint must refuse -----------------------------------------------------

UNPARSEABLE = {
    "invalid utf-8": b'{"username": "al\xff\xfeice", "password": "correct horse battery"}',
    "lone surrogate escape": b'{"username": "\\ud800", "password": "correct horse battery"}',
    "form encoding": b"username=alice&password=correct+horse+battery",
    "truncated json": b'{"username": "alice", "password": "correct',
    "empty body": b"",
    "json array": b'["alice", "correct horse battery"]',
    "json string": b'"alice"',
    "json number": b"42",
    "json null": b"null",
    "empty object": b"{}",
}


def test_a_body_that_is_not_a_usable_json_object_is_invalid_request(target):
    before = target.rows()

    outcomes = {case: target.post_each(ENDPOINTS, body) for case, body in UNPARSEABLE.items()}

    assert outcomes == dict.fromkeys(UNPARSEABLE, refused_everywhere(ENDPOINTS))
    assert target.rows() == before


BAD_CREDENTIALS = {
    "number as username": {"username": 12345, "password": PASSWORD},
    "list as password": {"username": "alice", "password": list(PASSWORD)},
    "object as username": {"username": {"name": "alice"}, "password": PASSWORD},
    "boolean as password": {"username": "alice", "password": True},
    "null username": {"username": None, "password": PASSWORD},
    "missing username": {"password": PASSWORD},
    "missing password": {"username": "alice"},
    "too-short password": {"username": "alice", "password": "short"},
    "too-long password": {"username": "alice", "password": "p" * 1025},
    "space in username": {"username": "al ice", "password": PASSWORD},
    "punctuation in username": {"username": "alice!", "password": PASSWORD},
    "non-ascii username": {"username": "alíce", "password": PASSWORD},
    "sql in username": {"username": "alice' OR '1'='1", "password": PASSWORD},
    "too-short username": {"username": "al", "password": PASSWORD},
    "too-long username": {"username": "a" * 33, "password": PASSWORD},
    "newline after username": {"username": "alice\n", "password": PASSWORD},
}


def test_credentials_of_the_wrong_type_or_shape_are_invalid_request(target):
    before = target.rows()

    outcomes = {case: target.post_each(CREDENTIAL_ENDPOINTS, json.dumps(body).encode())
                for case, body in BAD_CREDENTIALS.items()}

    assert outcomes == dict.fromkeys(BAD_CREDENTIALS, refused_everywhere(CREDENTIAL_ENDPOINTS))
    assert target.rows() == before


BAD_REFRESH = {
    "missing refresh_token": {"token": "x"},
    "number": {"refresh_token": 12345},
    "list": {"refresh_token": ["a.b"]},
    "object": {"refresh_token": {"token": "a.b"}},
    "null": {"refresh_token": None},
    "empty string": {"refresh_token": ""},
}


def test_a_refresh_token_of_the_wrong_type_is_invalid_request(target):
    before = target.rows()

    outcomes = {case: target.post_each(["/auth/refresh"], json.dumps(body).encode())
                for case, body in BAD_REFRESH.items()}

    assert outcomes == dict.fromkeys(BAD_REFRESH, refused_everywhere(["/auth/refresh"]))
    assert target.rows() == before


def test_a_malformed_refresh_token_string_is_unauthorized(target):
    tokens = ["no-dot-at-all", ".", "a.", ".b", "x" * 300 + ".y"]
    before = target.rows()

    outcomes = [target.post_each(["/auth/refresh"], json.dumps({"refresh_token": token}).encode())
                for token in tokens]

    assert outcomes == [refused_everywhere(["/auth/refresh"], 401, "unauthorized")] * len(tokens)
    assert target.rows() == before


# ---- body size ----------------------------------------------------------------------------------


def _padded(target: Target, endpoint: str, size: int) -> bytes:
    """A body that would succeed on `endpoint`, padded with an ignored field to exactly `size` bytes."""
    body = {"refresh_token": target.session["refresh_token"]} if endpoint == "/auth/refresh" else {
        "username": "bob" if endpoint == "/auth/register" else "alice", "password": PASSWORD}
    bare = json.dumps({**body, "pad": ""}).encode()
    raw = json.dumps({**body, "pad": "x" * (size - len(bare))}).encode()
    assert len(raw) == size
    return raw


def _chunks(raw: bytes, size: int = 1000) -> list[bytes]:
    return [raw[start:start + size] for start in range(0, len(raw), size)]


def test_a_body_of_exactly_max_body_bytes_is_accepted(target):
    response = target.client.post("/auth/register", _padded(target, "/auth/register", target.max_body))

    assert response.status == 201


def test_a_body_over_max_body_bytes_with_content_length_is_payload_too_large(target):
    before = target.rows()

    outcomes = target.post_each(ENDPOINTS, {endpoint: _padded(target, endpoint, target.max_body + 1)
                                            for endpoint in ENDPOINTS})

    assert outcomes == refused_everywhere(ENDPOINTS, 413, "payload_too_large")
    assert target.rows() == before


def test_a_chunked_body_over_max_body_bytes_is_payload_too_large(target):
    before = target.rows()

    outcomes = {endpoint: target.post_chunked(endpoint, _chunks(_padded(target, endpoint, target.max_body + 1)))
                for endpoint in ENDPOINTS}

    assert outcomes == refused_everywhere(ENDPOINTS, 413, "payload_too_large")
    assert target.rows() == before


def test_a_chunked_body_within_the_limit_is_accepted(target):
    raw = json.dumps({"username": "bob", "password": PASSWORD}).encode()

    outcome = target.post_chunked("/auth/register", _chunks(raw, 10))

    assert outcome == (201, None)
    assert target.rows()["User"] == 2


# ---- routing ------------------------------------------------------------------------------------


UNKNOWN_PATHS = [("GET", "/nope"), ("POST", "/auth"), ("GET", "/auth/login/extra"), ("DELETE", "/users/you"),
                 ("GET", "/%00"), ("POST", "/auth/register/")]
WRONG_METHODS = [("GET", "/auth/login"), ("GET", "/auth/register"), ("PUT", "/auth/refresh"),
                 ("DELETE", "/users/me"), ("POST", "/healthz"), ("PATCH", "/auth/logout")]


def _outcome(response) -> tuple[int, str | None, bool]:
    """(status, error code, whether the body's request_id matches the X-Request-Id header)."""
    error = (response.json or {}).get("error", {})
    return response.status, error.get("code"), error.get("request_id") == response.headers.get("x-request-id")


def test_an_unknown_path_is_a_json_not_found(client):
    outcomes = {f"{method} {path}": _outcome(client.request(method, path)) for method, path in UNKNOWN_PATHS}

    assert set(outcomes.values()) == {(404, "not_found", True)}, outcomes


def test_a_wrong_method_is_a_json_invalid_request_not_a_500(client):
    """PROTOCOL has no code for a wrong method; the server answers it as a malformed request."""
    outcomes = {f"{method} {path}": _outcome(client.request(method, path)) for method, path in WRONG_METHODS}

    assert set(outcomes.values()) <= {(400, "invalid_request", True), (405, "invalid_request", True)}, outcomes
