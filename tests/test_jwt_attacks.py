"""Forged and malformed access tokens: every one is refused with 401 unauthorized.

Each forgery starts from the claims of a real, live session, so the only thing wrong with it is the
one flaw under test; a control test shows that a faithful copy signed the right way is accepted.
"""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest

from harness import Http, register_and_login

REQUIRED_CLAIMS = ["sub", "sid", "role", "iss", "aud", "iat", "exp", "jti"]  # PROTOCOL "Auth"


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_json(value: dict) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


class Forger:
    """Makes tokens for a live session of `server`, with the server's own secret where needed."""

    def __init__(self, server) -> None:
        self.server = server
        self.client = Http(server.url)
        self.session = register_and_login(self.client, "alice")
        self.claims = jwt.decode(self.session["access_token"], options={"verify_signature": False})
        self.secret = server.app.users.tokens.secret
        self.algorithm = server.config.auth.jwt_algorithm

    def sign(self, algorithm: str | None = None, drop: tuple[str, ...] = (), **changes) -> str:
        claims = {key: value for key, value in {**self.claims, **changes}.items() if key not in drop}
        return jwt.encode(claims, self.secret, algorithm=algorithm or self.algorithm)

    def me(self, token: str, scheme: str = "Bearer"):
        return self.client.get("/users/me", headers={"Authorization": f"{scheme} {token}"})


@pytest.fixture
def forger(server) -> Forger:
    return Forger(server)


def assert_unauthorized(response) -> None:
    assert response.status == 401, response.raw
    assert response.code == "unauthorized"


def test_control_a_faithful_copy_signed_with_the_pinned_algorithm_is_accepted(forger):
    assert forger.me(forger.sign()).status == 200


@pytest.mark.parametrize("alg", ["none", "None", "NONE"])
def test_an_unsigned_alg_none_token_is_refused(forger, alg):
    token = f"{b64url_json({'alg': alg, 'typ': 'JWT'})}.{b64url_json(forger.claims)}."

    assert_unauthorized(forger.me(token))


def test_a_token_signed_with_another_hmac_algorithm_is_refused(forger):
    assert forger.algorithm == "HS256"

    assert_unauthorized(forger.me(forger.sign(algorithm="HS512")))


def test_a_token_signed_with_another_secret_is_refused(forger):
    token = jwt.encode(forger.claims, "another secret that is at least 32 bytes long", algorithm="HS256")

    assert_unauthorized(forger.me(token))


def test_a_wrong_audience_is_refused(forger):
    assert_unauthorized(forger.me(forger.sign(aud="some-other-service")))


def test_a_wrong_issuer_is_refused(forger):
    assert_unauthorized(forger.me(forger.sign(iss="evil-issuer")))


def test_a_token_expired_beyond_the_leeway_is_refused(forger):
    now = int(time.time())
    leeway = forger.server.config.auth.leeway_s

    assert_unauthorized(forger.me(forger.sign(iat=now - 3600, exp=now - leeway - 60)))


def test_a_tampered_payload_with_the_original_signature_is_refused(forger):
    other = register_and_login(forger.client, "mallory")
    header, _, signature = forger.session["access_token"].split(".")
    payload = b64url_json({**forger.claims, "sub": str(other["user"]["user_id"])})

    assert_unauthorized(forger.me(f"{header}.{payload}.{signature}"))


def test_a_role_escalated_to_admin_with_the_original_signature_is_refused(forger):
    header, _, signature = forger.session["access_token"].split(".")
    payload = b64url_json({**forger.claims, "role": "admin"})

    assert_unauthorized(forger.me(f"{header}.{payload}.{signature}"))


def test_a_token_missing_any_required_claim_is_refused(forger):
    statuses = {claim: forger.me(forger.sign(drop=(claim,))).code for claim in REQUIRED_CLAIMS}

    assert statuses == dict.fromkeys(REQUIRED_CLAIMS, "unauthorized")


def test_a_correctly_signed_token_for_an_unknown_session_is_refused(forger):
    assert_unauthorized(forger.me(forger.sign(sid="0" * 32)))


def test_a_correctly_signed_token_naming_another_user_of_the_session_is_refused(forger):
    other = register_and_login(forger.client, "mallory")

    assert_unauthorized(forger.me(forger.sign(sub=str(other["user"]["user_id"]))))


def test_a_correctly_signed_token_with_an_unknown_role_is_refused(forger):
    assert_unauthorized(forger.me(forger.sign(role="superuser")))


def test_a_non_numeric_subject_is_refused(forger):
    assert_unauthorized(forger.me(forger.sign(sub="alice")))


def test_garbage_tokens_are_refused(forger):
    garbage = ["garbage", "a.b.c", "...", "eyJhbGciOiJIUzI1NiJ9", "Bearer", "\u00e9t\u00e9", "x" * 5000]

    responses = [forger.me(token) for token in garbage]

    assert {(response.status, response.code) for response in responses} == {(401, "unauthorized")}


def test_the_basic_scheme_is_refused_even_around_a_valid_token(forger):
    assert_unauthorized(forger.me(forger.session["access_token"], scheme="Basic"))


def test_basic_credentials_are_refused(forger):
    credentials = base64.b64encode(b"alice:correct horse battery").decode()

    assert_unauthorized(forger.me(credentials, scheme="Basic"))


def test_a_bearer_header_without_a_token_is_refused(forger):
    response = forger.client.get("/users/me", headers={"Authorization": "Bearer "})

    assert_unauthorized(response)
